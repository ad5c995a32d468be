"""Settings that do nothing in the run they are given to, refused where the user set them.

taosr's own configs set some options for every method (``configs/_base/rl.yaml``: ``scheduler:
constant``; ``configs/srpo.yaml``: ``grm_path``; ``configs/experiment/smoke.yaml``:
``eval_generation``), so refusing the value would refuse every run. The launcher computes once which
dotted keys the user set (:func:`taosr.configfiles.user_set_keys`: the command line, YAML text, a
config file that is not one of taosr's own ``configs/``) and hands them to :func:`check_unread_settings`,
which refuses in one line, before anything is built, a key the user set to something other than its
default where the run never reads it:

- ``model.init_args.min_lr_ratio`` with ``scheduler: constant`` (the floor of the cosine and linear
  schedules only);
- SRPO's ``keep_step_only_groups: true`` without dynamic sampling, or with the ``outcome`` step estimator
  (the rule it changes is dynamic sampling's, and ``outcome`` has no step term);
- SRPO's ``grm_path`` and ``grm_batch_size`` in an examiner mode that never loads a GRM (``verifier``);
- GRPO/SRPO's ``rollout_is``, ``rollout_is_max`` and ``rollout_is_min`` with an on-policy rollout
  engine (``hf``: it samples from the trainer's own model and reports no sampler log-probs, so there
  is no mismatch to correct);
- the GRM's ``table_rows`` (never read), and its ``eval_scores`` and ``eval_generation`` in ``validate`` /
  ``test`` (GRM evaluation scores step verdicts and
  generates nothing; ``taosr predict`` does generate with it). At ``fit`` it is a warning: the
  checkpoint keeps it for a later ``predict``.

A setting that ``taosr sweep``, ``taosr compare`` (its ``set:`` and extra arguments) or ``taosr quickstart
-- ARGS`` gives every one of its runs is a warning where one run does not read it
(:func:`taosr.launcher.shared_arguments`): the runs differ on purpose (a sweep over examiner modes, one
GRM for all).

Each check runs at ``fit`` only unless said otherwise (in an evaluation these options are unread
whatever their value).
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Callable

from taosr.errors import ConfigError

KEY = "model.init_args"


def _class(class_path: str | None):
    if not class_path or "." not in class_path:
        return None
    mod, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), name, None)
    except Exception:  # noqa: BLE001 - the parser reports a bad class_path itself
        return None


def _is(cls, module: str, name: str) -> bool:
    if not isinstance(cls, type):
        return False
    try:
        return issubclass(cls, getattr(importlib.import_module(module), name))
    except ImportError:
        return False


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def _given(user: frozenset[str] | set[str], key: str) -> bool:
    """The user set ``key``, or a key above it as a whole (``--model.init_args.eval_generation null``)."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in user for n in range(1, len(parts) + 1))


def _user_fields(user, key: str, value: dict | None, default: dict) -> list[str]:
    """The fields under ``key`` the user set to something other than their default."""
    value = value or {}
    return [f for f in default if _given(user, f"{key}.{f}") and value.get(f, default[f]) != default[f]]


def _rollout_engine(cfg: dict) -> str:
    """The ``engine`` of the config's RolloutCallback (its default, ``hf``, when unset or absent)."""
    trainer = _plain(cfg.get("trainer")) or {}
    for cb in (trainer.get("callbacks") if isinstance(trainer, dict) else None) or []:
        cb = _plain(cb)
        path = cb.get("class_path") if isinstance(cb, dict) else getattr(cb, "class_path", None)
        if str(path or "").rsplit(".", 1)[-1] == "RolloutCallback":
            args = _plain(cb.get("init_args") if isinstance(cb, dict) else getattr(cb, "init_args", None)) or {}
            return str(args.get("engine") or "hf")
    return "hf"


def check_unread_settings(command: str, cfg, user: frozenset[str] | set[str],
                          shared: frozenset[str] | set[str] = frozenset(),
                          warn: Callable[[str], None] | None = None) -> None:
    """Refuse (:class:`ConfigError`, one line) a setting of ``cfg`` (the command's parsed config: a
    mapping or jsonargparse Namespace) that the user set (``user``: dotted keys, see
    :func:`taosr.configfiles.user_set_keys`) and the run never reads. Where the user gave it to every run
    of a sweep, comparison or quick start (``shared``: :func:`taosr.launcher.shared_arguments`) it is a
    warning instead (a sweep over examiner modes with one GRM for all), as the GRM's ``eval_generation`` is
    at ``fit``; ``warn`` gets those lines (default: stderr)."""
    warn = warn or (lambda m: print(m, file=sys.stderr))
    own = frozenset(user) - frozenset(shared)
    cfg = _plain(cfg) or {}
    model = _plain(cfg.get("model")) or {}
    init = (_plain(model.get("init_args")) or {}) if isinstance(model, dict) else {}
    cls = _class(model.get("class_path") if isinstance(model, dict) else None)
    if cls is None:
        return
    srpo = _is(cls, "taosr.methods.srpo", "SRPOModule")
    fit = command == "fit"

    def unread(key: str, message: str, refuse: bool = True) -> None:
        if refuse and _given(own, key):
            raise ConfigError(message)
        shared_only = "" if _given(own, key) else " (given to every run: a warning, not a refusal)"
        warn(f"taosr: warning: {message}{shared_only}")

    ratio = init.get("min_lr_ratio", 0.1)
    key = f"{KEY}.min_lr_ratio"
    if fit and _given(user, key) and init.get("scheduler") == "constant" and ratio != 0.1:
        unread(key, f"{key}: {ratio} is the floor of the cosine and linear schedules, and {KEY}.scheduler is "
                    "constant (remove it, or set the scheduler: cosine or linear)")

    key = f"{KEY}.keep_step_only_groups"
    if fit and srpo and init.get("keep_step_only_groups") is True and _given(user, key):
        step = (_plain(init.get("step_advantage")) or {}).get("name", "outcome_plus_step")
        if not init.get("dynamic_sampling", True):
            unread(key, f"{key}: changes which groups dynamic sampling drops, and {KEY}.dynamic_sampling is false, "
                        "so no group is dropped (remove it, or turn dynamic_sampling on)")
        elif step == "outcome":
            unread(key, f"{key}: keeps groups for their step term, and step_advantage 'outcome' has none (GRPO's "
                        "rule applies; remove it, or choose outcome_plus_step or process_sum)")

    if fit and _is(cls, "taosr.methods.grpo", "GRPOModule"):
        from taosr.rl.engines import ENGINES

        engine = _rollout_engine(cfg)
        for name, default in (("rollout_is", "sequence_mask"), ("rollout_is_max", 3.0), ("rollout_is_min", None)):
            key = f"{KEY}.{name}"
            if (_given(user, key) and init.get(name, default) != default and engine in ENGINES
                    and ENGINES.get(engine).on_policy):
                unread(key, f"{key}: corrects the mismatch of an engine that samples apart from the trainer (vllm), "
                            f"and the rollout engine is {engine!r}, which samples from the trainer's own model "
                            "(remove it, or set the RolloutCallback's engine: vllm)")

    if fit and srpo:
        from taosr.rl.examiner import EXAMINER_MODES

        mode = (_plain(init.get("examiner")) or {}).get("mode", "verifier_then_grm")
        found = EXAMINER_MODES.get(mode) if mode in EXAMINER_MODES else None
        if found is not None and not found.uses_grm:
            users = ", ".join(n for n in EXAMINER_MODES.names() if EXAMINER_MODES.get(n).uses_grm)
            grm_path, key = init.get("grm_path"), f"{KEY}.grm_path"
            if grm_path and _given(user, key):
                unread(key, f"{key}: examiner.mode {mode!r} never loads a GRM, so {grm_path!r} is unused (remove it "
                            f"or give null, or choose a mode that uses it: {users})")
            key = f"{KEY}.grm_batch_size"
            if _given(user, key):
                unread(key, f"{key}: examiner.mode {mode!r} never loads a GRM, so its scoring batch size is unused "
                            f"(remove it, or choose a mode that uses a GRM: {users})")

    if _is(cls, "taosr.methods.grm", "GRMModule") and command in ("fit", "validate", "test"):
        from taosr.eval.generation import GenerationSpec

        key = f"{KEY}.eval_generation"
        fields = _user_fields(user, key, _plain(init.get("eval_generation")), dataclasses.asdict(GenerationSpec()))
        if fields:
            mine = [f for f in fields if _given(own, f"{key}.{f}")] or fields
            what = f"{key}.{mine[0]}" + (f" (and {len(mine) - 1} more)" if len(mine) > 1 else "")
            if fit:
                unread(f"{key}.{mine[0]}", f"{what}: {cls.__name__}'s validation scores step verdicts and generates "
                                           "nothing, so this fit does not read it (the checkpoint keeps it for a "
                                           "taosr predict)", refuse=False)
            else:
                unread(f"{key}.{mine[0]}", f"{what}: {cls.__name__}'s {command} scores step verdicts and generates "
                                           "nothing (only taosr predict reads eval_generation); remove it")
        # eval_scores (tier scores of each generation): read by taosr predict only, like eval_generation
        key = f"{KEY}.eval_scores"
        if _given(user, key) and init.get("eval_scores", True) is not True:
            if fit:
                unread(key, f"{key}: {cls.__name__}'s validation scores step verdicts and generates nothing, so this "
                            "fit does not read it (the checkpoint keeps it for a taosr predict)", refuse=False)
            else:
                unread(key, f"{key}: {cls.__name__}'s {command} scores step verdicts and generates nothing (only "
                            "taosr predict reads eval_scores); remove it")

    key = f"{KEY}.table_rows"  # in every command, predict's too
    if _is(cls, "taosr.methods.grm", "GRMModule") and _given(user, key) and init.get("table_rows", 32) != 32:
        unread(key, f"{key}: {cls.__name__} logs no table of generations (its evaluation scores step verdicts); "
                    "remove it")
