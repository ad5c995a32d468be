"""``taosr compare SPEC.yaml``: methods x seeds from one shared start, scored on one held-out set,
reported as mean ± standard error per method and as differences paired by seed.

A spec names the shared start (a policy export, and the samples file and GRM export the RL
configs read), the arms (a config, or a list of configs stacked in order, plus overrides each), the
seeds, the evaluation set and the pairs to report::

    name: srpo_vs_grpo
    start: {model: runs/quickstart/dpo/export, samples: runs/quickstart/sft/samples-train.jsonl,
            grm: runs/quickstart/grm/export}
    seeds: [0, 1, 2]
    seed_keys: [data.seed]                       # optional: keys set to the seed too (else seed_everything only)
    set: {trainer.max_steps: 60}                 # every arm
    arms:
      grpo: {config: configs/grpo.yaml}
      srpo: {config: configs/srpo.yaml, set: {model.init_args.grm_path: "${start.grm}"}}
    eval: {heldout: 2000}                        # or {test: data/my-test.jsonl}
    # eval.also: {unpriced: data/unpriced.jsonl}   # optional: more sets every run is scored on too
    pairs: [[srpo, grpo], [grpo, start]]         # "start" = the start export, scored once
    # baselines: {sft: runs/quickstart/sft/export} # optional: more exports scored once, for pairs like [grpo, sft]

Every arm of every seed is ``taosr fit --config <arm config> --seed_everything <seed>`` (and
``--<key> <seed>`` for each of ``seed_keys``: a deterministic SFT draws nothing from
``seed_everything``, so its seeds vary only with ``data.seed``) from the start (so all arms have
the same rollout budget), then ``taosr test`` on the evaluation set and on each set of
``eval.also`` (its figures are the report's ``set:<name>`` rows, paired like the rest), each run
prompted in the ``data.target`` it was trained with (:func:`run_target`). The start
and each of ``baselines`` that a pair names are scored once; an arm's paired difference against
one is taken seed by seed against that one score. Runs live
under ``--out/<arm>/seed<S>``; a run scored on every set is skipped and a fit whose export exists is
only evaluated (on the sets it lacks), so an interrupted comparison continues where it stopped. Each
fit logs to W&B in the group ``name`` (job type = arm); the report reads each fit's training
signals (rewards, critical steps, GRM/verifier disagreement) back from its log. ``--jobs N`` runs N runs at once in worker
processes with their own cores (and GPU), see :mod:`taosr.jobs`. The report (``summary.md``, ``.csv``,
``pairs.csv``, ``flips.csv``: the examples behind each pair's difference, ``signals.csv``, ``summary.png``)
covers overall, long-tail and per-query-type figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field

from taosr.cliargs import passed_on
from taosr.configfiles import locate, not_found
from taosr.errors import ConfigError, Interrupted
from taosr.eval.stats import mean_se, paired_difference, pm, seed_order
from taosr.run_record import first_difference as _first_difference
from taosr.run_record import fingerprint as _fingerprint
from taosr.run_record import record_place
from taosr.run_record import relocated as _relocated
from taosr.run_record import named_model

METRICS = ("macro_f1", "step_accuracy", "good_f1", "accuracy", "format_error_rate")
PAIR_METRICS = ("macro_f1", "step_accuracy")
# ranking metrics of runs scored with P(tier) (model.init_args.eval_scores, on by default): NDCG@10 where
# a test set's queries have items, the grade RMSE where its pairs carry grades; reported (and paired)
# only where a run has them
SCORE_METRICS = ("ndcg@10", "rmse_grade")


def report_metrics(results: dict, base: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` and the :data:`SCORE_METRICS` any run of ``results`` has (in any slice)."""
    keys = {k for per in results.values() for m in per.values() for k in m}
    return base + tuple(s for s in SCORE_METRICS if any(k == s or k.endswith("/" + s) for k in keys))
# training signals read back from each fit's log (taosr.history), mean over its logged steps:
# outcome reward and accuracy, the share of groups with no reward spread (no gradient), entropy,
# and SRPO's step signal: critical steps per batch, the share of steps only the GRM judged, the
# share the verifier covers, how often the GRM disagrees with the verifier where both judge, and the
# rollouts' step accuracy (the share of verifier-covered steps that are right)
SIGNALS = ("train/reward", "train/rewards/correct/mean", "train/frac_reward_zero_std", "train/entropy",
           "train/steps/critical_count", "train/steps/grm_share", "train/steps/verifier_coverage",
           "train/steps/disagreement", "train/steps/verifier_accuracy")
# and whether the fit moved its policy on its own prompts: the rollouts' accuracy over the last third
# of the logged steps minus over the first third (taosr.history.change_over)
TRENDS = {"train/rewards/correct/rise": "train/rewards/correct/mean"}
ALL_SIGNALS = SIGNALS + tuple(TRENDS)
START = "start"
SPEC_KEYS = {"name", "start", "baselines", "seeds", "seed_keys", "set", "arms", "eval", "pairs"}
ARM_KEYS = {"config", "set"}
EVAL_KEYS = {"heldout", "heldout_seed", "test", "config", "set", "also"}
ALSO_PREFIX = "set:"  # the report's slice of an eval.also set: set:<name> (its metrics: sets/<name>/<metric>)
START_KEYS = {"model", "samples", "grm"}


@dataclass
class Arm:
    name: str
    configs: list[str]  # `config:`, one file or a list stacked in order (--config each; later files win)
    overrides: list[str]


@dataclass
class CompareSpec:
    name: str
    start: dict[str, str]
    seeds: list[int]
    arms: list[Arm]
    pairs: list[tuple[str, str]]
    overrides: list[str] = field(default_factory=list)
    seed_keys: list[str] = field(default_factory=list)  # config keys set to the run's seed too (data.seed)
    eval_config: str = "configs/sft.yaml"
    eval_overrides: list[str] = field(default_factory=list)
    heldout: int = 2000
    heldout_seed: int = 1
    test: str | None = None
    also: dict[str, str] = field(default_factory=dict)  # eval.also: more evaluation sets, by name
    wandb_group: str | None = None  # the W&B group of its runs (wandb_group(): the name, and --out when not the default)
    baselines: dict[str, str] = field(default_factory=dict)  # more exports scored once (an earlier stage: SFT)

    @property
    def needs_start_eval(self) -> bool:
        return any(START in p for p in self.pairs)

    def scored_once(self, name: str) -> str:
        """The model a run scored once (no seed) evaluates: the start's or a baseline's."""
        return self.start["model"] if name == START else self.baselines[name]


def _flag_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _overrides(d, where: str) -> list[str]:
    if d is None:
        return []
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {type(d).__name__}")
    out: list[str] = []
    for k, v in d.items():
        out += [f"--{k}", _flag_value(v)]
    return out


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: unknown key; expected one of {', '.join(sorted(allowed))}")


def _names_to_paths(d) -> bool:
    """``d`` maps names (letters, digits, - and _: folder names of the report) to non-empty paths."""
    return isinstance(d, dict) and all(isinstance(k, str) and k.replace("_", "").replace("-", "").isalnum()
                                       and isinstance(v, str) and v for k, v in d.items())


def load_spec(path: str, seeds: list[int] | None = None, only_arms: list[str] | None = None) -> CompareSpec:
    """Read and validate a comparison spec (OmegaConf: ``${start.grm}`` interpolation works);
    ``only_arms`` keeps those arms (and the pairs between them and the start)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = locate(path)
    if not os.path.isfile(path):
        raise ConfigError(not_found(path, "comparison spec"))
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1}: YAML syntax error: {err.problem}") from None
    except (OmegaConfBaseException, ValueError) as err:  # bad interpolations
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{path}: {msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a comparison spec is a mapping with 'arms', 'seeds' and 'start'")
    _check_keys(raw, SPEC_KEYS, path)
    for key in ("arms", "start"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is missing")
    start = raw["start"]
    if isinstance(start, str):
        start = {"model": start}
    if not isinstance(start, dict) or "model" not in start:
        raise ConfigError(f"{path}: start.model is missing (the export every arm starts from)")
    _check_keys(start, START_KEYS, f"{path}: start")
    arms = []
    if not isinstance(raw["arms"], dict):
        raise ConfigError(f"{path}: arms must map arm names to {{config, set}}")
    for name, a in raw["arms"].items():
        if name == START:
            raise ConfigError(f"{path}: arms.{START}: the name is reserved for the shared start")
        a = a or {}
        if not isinstance(a, dict) or "config" not in a:
            raise ConfigError(f"{path}: arms.{name}.config is missing")
        _check_keys(a, ARM_KEYS, f"{path}: arms.{name}")
        configs = a["config"] if isinstance(a["config"], list) else [a["config"]]
        if not configs or not all(isinstance(c, str) and c.strip() for c in configs):
            raise ConfigError(f"{path}: arms.{name}.config must be a config file or a list of them (stacked in order, "
                              f"later files win), got {a['config']!r}")
        arms.append(Arm(str(name), [locate(c) for c in configs], _overrides(a.get("set"), f"{path}: arms.{name}.set")))
    if only_arms:
        unknown = sorted(set(only_arms) - {a.name for a in arms})
        if unknown:
            raise ConfigError(f"--arms: {', '.join(unknown)} not in {path} (arms: {', '.join(a.name for a in arms)})")
        arms = [a for a in arms if a.name in only_arms]
    given = raw.get("seeds", [0]) if not seeds else seeds
    if not isinstance(given, list) or not given:  # `seeds: 3` was a traceback, `seeds: []` ran seed 0 alone
        raise ConfigError(f"{path}: seeds must be a non-empty list of integers (e.g. seeds: [0, 1, 2]), got {given!r}")
    seeds = list(given)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be distinct integers, got {seeds}")
    baselines = raw.get("baselines") or {}
    if not _names_to_paths(baselines):
        raise ConfigError(f"{path}: baselines must map names (letters, digits, - and _) to exports scored once, "
                          f"e.g. {{sft: runs/quickstart/sft/export}}; got {baselines!r}")
    for name in baselines:
        if name == START or name in raw["arms"]:
            raise ConfigError(f"{path}: baselines.{name}: the name is taken by "
                              + ("the shared start" if name == START else f"arms.{name}"))
    once = {START, *baselines}  # scored once: the second of a pair only
    names = {a.name for a in arms} | once
    pairs = []
    declared = set(raw["arms"]) | once
    for p in raw.get("pairs") or []:
        if only_arms and isinstance(p, (list, tuple)) and set(p) <= declared and not set(p) <= names:
            continue  # a pair with an arm left out by --arms
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not set(p) <= names or p[0] == p[1] or p[0] in once:
            raise ConfigError(f"{path}: pairs: {p!r} is not [arm, other arm, {START!r} or a baseline] with arms "
                              f"{sorted(names - once)}" + (f" and baselines {sorted(baselines)}" if baselines else ""))
        pairs.append((str(p[0]), str(p[1])))
    ev = raw.get("eval") or {}
    _check_keys(ev, EVAL_KEYS, f"{path}: eval")
    for key in ("heldout", "heldout_seed"):
        if key in ev and (not isinstance(ev[key], int) or isinstance(ev[key], bool)):
            raise ConfigError(f"{path}: eval.{key} must be an integer, got {ev[key]!r}")
    seed_keys = raw.get("seed_keys") or []
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) and k and not k.startswith("-") for k in seed_keys):
        raise ConfigError(f"{path}: seed_keys must be a list of config keys that take each run's seed too "
                          f"(e.g. seed_keys: [data.seed]), got {seed_keys!r}")
    also = ev.get("also") or {}
    if not _names_to_paths(also):
        raise ConfigError(f"{path}: eval.also must map set names (letters, digits, - and _) to data files, "
                          f"e.g. {{unpriced: data/unpriced.jsonl}}; got {also!r}")
    heldout = int(ev.get("heldout", 2000))
    if ev.get("test") is None and heldout < 1:
        raise ConfigError(f"{path}: eval.heldout must be at least 1, got {heldout}")
    return CompareSpec(
        name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]), start=dict(start), seeds=seeds,
        arms=arms, pairs=pairs, overrides=_overrides(raw.get("set"), f"{path}: set"), seed_keys=list(seed_keys),
        eval_config=locate(str(ev.get("config", "configs/sft.yaml"))), eval_overrides=_overrides(ev.get("set"), f"{path}: eval.set"),
        heldout=heldout, heldout_seed=int(ev.get("heldout_seed", 1)), test=ev.get("test"), also=dict(also),
        baselines=dict(baselines))


# ---------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    arm: str
    seed: int | None          # None: the start, scored once
    root: str

    @property
    def export(self) -> str:
        return os.path.join(self.root, "export")

    @property
    def eval_root(self) -> str:
        return os.path.join(self.root, "heldout")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.eval_root, "eval", "test-metrics.json")

    @property
    def predictions_path(self) -> str:
        return os.path.join(self.eval_root, "eval", "test-predictions.jsonl")

    @property
    def fitted(self) -> bool:
        return os.path.isfile(os.path.join(self.export, "config.json"))

    @property
    def done(self) -> bool:
        return os.path.isfile(self.metrics_path)

    def also_root(self, name: str) -> str:
        """Where the run is scored on the ``eval.also`` set ``name``."""
        return os.path.join(self.root, f"also-{name}")

    def also_metrics(self, name: str) -> str:
        return os.path.join(self.also_root(name), "eval", "test-metrics.json")

    def also_pending(self, spec: "CompareSpec") -> list[str]:
        """The ``eval.also`` sets this run has not been scored on yet (a set added to a finished
        comparison is scored on its next run, nothing fitted again)."""
        return [n for n in spec.also if not os.path.isfile(self.also_metrics(n))]


def plan_runs(spec: CompareSpec, out: str) -> list[Run]:
    runs = [Run(START, None, os.path.join(out, START))] if spec.needs_start_eval else []
    runs += [Run(name, None, os.path.join(out, name)) for name in spec.baselines if any(name in p for p in spec.pairs)]
    runs += [Run(a.name, s, os.path.join(out, a.name, f"seed{s}")) for s in spec.seeds for a in spec.arms]
    return runs


def fit_args(spec: CompareSpec, arm: Arm, run: Run, extra: list[str]) -> list[str]:
    args = ["fit", *(a for c in arm.configs for a in ("--config", c)), "--trainer.default_root_dir", run.root,
            "--seed_everything", str(run.seed),
            *(a for key in spec.seed_keys for a in (f"--{key}", str(run.seed))),
            "--model.init_args.model.name_or_path", spec.start["model"]]
    if spec.start.get("samples"):
        args += ["--data.samples_path", spec.start["samples"]]
    ckpt = os.path.join(run.root, "checkpoints", "last.ckpt")
    if os.path.isfile(ckpt):  # an interrupted fit continues from its checkpoint
        args += ["--ckpt_path", ckpt]
    return args + spec.overrides + arm.overrides + list(extra)


def eval_args(spec: CompareSpec, run: Run, test_file: str, model: str, also: str | None = None,
              target: str | None = None) -> list[str]:
    """``taosr test`` of ``model`` on ``test_file`` (with ``also``: on that ``eval.also`` set); with
    ``target`` (the ``data.target`` the model was trained with) prompted so where the evaluation
    config prompts otherwise, unless ``eval.set`` names a target itself (then every run gets that)."""
    root = run.eval_root if also is None else run.also_root(also)
    args = ["test", "--config", spec.eval_config, "--trainer.default_root_dir", root,
            "--model.init_args.model.name_or_path", model, "--data.test", test_file, *spec.eval_overrides]
    explicit = configured_target([], spec.eval_overrides) is not None
    if target is not None and not explicit and target != (configured_target([spec.eval_config], []) or DEFAULT_TARGET):
        args += ["--data.target", target]
    return args


DEFAULT_TARGET = "reasoning"  # data.target where no config sets it


def configured_target(configs: list[str], args: list[str]) -> str | None:
    """The ``data.target`` that ``--config`` of each of ``configs`` (later files win) and then
    ``args`` (``--data.target X``, ``--data.target=X`` or another ``--config FILE``, in order) set;
    None where none sets it."""
    from taosr.configfiles import option_pairs, resolved_config

    def of_file(path: str, target: str | None) -> str | None:
        t = ((resolved_config(path) or {}).get("data") or {}).get("target")
        return t if t is not None else target

    target = None
    for c in configs:
        target = of_file(c, target)
    for name, value in option_pairs(args):
        if value is not None and name in ("--data.target", "--config"):
            target = value if name == "--data.target" else of_file(locate(value), target)
    return target


def run_target(spec: CompareSpec, arm: Arm | None, model: str, extra: list[str]) -> str | None:
    """The ``data.target`` a run's model answers in: an arm's as its fit sets it, a model scored
    once (the start, a baseline) as its export recorded it."""
    if arm is not None:
        return configured_target(arm.configs, [*spec.overrides, *arm.overrides, *extra]) or DEFAULT_TARGET
    from taosr.models.factory import export_meta

    return export_meta(model).get("target") or DEFAULT_TARGET


def also_files(spec: CompareSpec) -> dict[str, str]:
    """The ``eval.also`` sets' files, each checked to exist and read (one line naming the set)."""
    for name, path in spec.also.items():
        if not os.path.isfile(path):
            raise ConfigError(f"eval.also.{name}: {path} not found")
        check_eval_file(spec, f"eval.also.{name}", path)
    return dict(spec.also)


def check_eval_file(spec: CompareSpec, what: str, path: str) -> None:
    """Read an evaluation file before the first fit, so a bad row stops the comparison now rather than
    failing every run's evaluation after its fit (one line naming the file and row). Files read with
    a ``data.reader`` (of the eval config or ``eval.set``) are left to the evaluation itself."""
    from taosr.configfiles import resolved_config

    if any(a.startswith("--data.reader") for a in spec.eval_overrides) or \
            ((resolved_config(spec.eval_config).get("data") or {}).get("reader") is not None):
        return
    from taosr.data.readers import load_examples
    from taosr.errors import DataError

    try:
        load_examples(path)
    except DataError as e:
        raise ConfigError(f"{what}: {str(e).splitlines()[0]}") from None


def evaluation_path(spec: CompareSpec, out: str) -> str:
    """Where :func:`evaluation_file` reads or writes the evaluation set (nothing is written here)."""
    return spec.test or os.path.join(out, "data", f"heldout-{spec.heldout}-s{spec.heldout_seed}.jsonl")


def evaluation_file(spec: CompareSpec, out: str) -> str:
    """The shared evaluation set: the spec's file, or ``heldout`` synthetic examples whose queries
    occur in no split of the default data (written once under ``out/data``)."""
    if spec.test:
        if not os.path.isfile(spec.test):
            raise ConfigError(f"eval.test: {spec.test} not found")
        check_eval_file(spec, "eval.test", spec.test)
        return spec.test
    path = evaluation_path(spec, out)
    if not os.path.isfile(path):
        from taosr.data.synth import heldout
        from taosr.schema import write_jsonl

        tmp = path + ".tmp"
        write_jsonl(tmp, heldout(spec.heldout, seed=spec.heldout_seed))
        os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ checks before the first run
def check_commands(spec: CompareSpec, out: str, test_file: str, extra: list[str], build: bool = True) -> None:
    """Check every arm's fit command and the evaluation command (:func:`taosr.launcher.parse_error`:
    parsed and, with ``build``, their data module, module and trainer built; nothing is run) so that
    a bad key or value in an arm's ``set:``, the spec's ``set:`` or the extra arguments stops the
    comparison before its first run, naming the arm (an overnight comparison would otherwise fail
    hours in, at that arm's first fit). A dry run only parses (its start may not exist yet)."""
    from taosr.launcher import parse_error

    seed = spec.seeds[0]
    checks = [(f"arms.{a.name}", _fingerprint(fit_args(spec, a, Run(a.name, seed, os.path.join(out, a.name, f"seed{seed}")),
                                                        extra)))
              for a in spec.arms]
    checks.append(("eval", eval_args(spec, Run(START, None, os.path.join(out, START)), test_file, spec.start["model"])))
    for what, args in checks:
        why = parse_error(args, build=build)
        if why is not None:
            raise ConfigError(f"compare {spec.name}: {what}: {why}")


RUN_FILE = "compare-run.json"  # in each run's folder: the commands it was fitted and scored with


def check_settings(spec: CompareSpec, run: Run, fit: list[str] | None, evaluation: list[str],
                   also: dict[str, list[str]] | None = None) -> None:
    """A run fitted (or scored) before with other settings is not silently reused: its folder's
    :data:`RUN_FILE` must name the same fit (and, once scored, evaluation) commands, and the same
    command for each ``eval.also`` set it was scored on."""
    stored = read_settings(run)
    if stored is None:
        return
    started = run.fitted or os.path.isfile(os.path.join(run.root, "checkpoints", "last.ckpt"))
    if fit is not None and started and stored.get("fit") and stored["fit"] != _fingerprint(fit):
        raise ConfigError(f"compare {spec.name}: {run.root} was fitted with other settings ("
                          f"{_first_difference(stored['fit'], _fingerprint(fit))}); use another --out, or delete "
                          "that folder to fit it again")
    if run.done and stored.get("eval") and stored["eval"] != _fingerprint(evaluation):
        raise ConfigError(f"compare {spec.name}: {run.eval_root} was scored with other settings ("
                          f"{_first_difference(stored['eval'], _fingerprint(evaluation))}); use another --out, or "
                          "delete that folder to score the run again")
    for name, args in (also or {}).items():
        was = (stored.get("also") or {}).get(name)
        if was and os.path.isfile(run.also_metrics(name)) and was != _fingerprint(args):
            raise ConfigError(f"compare {spec.name}: {run.also_root(name)} was scored with other settings ("
                              f"{_first_difference(was, _fingerprint(args))}); use another --out, or delete that "
                              "folder to score the run again")


def record_settings(run: Run, fit: list[str] | None, evaluation: list[str],
                    also: dict[str, list[str]] | None = None) -> None:
    """Write the run's :data:`RUN_FILE`; the eval.also sets scored before and no longer in the spec
    keep their commands, so a set added back from another file is refused, not reported as scored."""
    from taosr.schema import write_json

    kept = (read_settings(run) or {}).get("also") or {}
    write_json(os.path.join(run.root, RUN_FILE),
               {"place": record_place(run.root), "fit": _fingerprint(fit) if fit is not None else None,
                "eval": _fingerprint(evaluation), "also": {**kept, **{k: _fingerprint(v) for k, v in (also or {}).items()}}})


def read_settings(run: Run) -> dict | None:
    """The run's :data:`RUN_FILE` (None when it has none), its commands as they read from where the
    folder is now: a record keeps where it was written (``place``), and when the checkout holding it
    moved (copied to another path or machine, run from its root again) the paths under it move along
    (:func:`taosr.run_record.relocated`), so the runs are not refused as other settings."""
    path = os.path.join(run.root, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            stored = json.load(fh)
        fps = [stored.get("fit"), stored.get("eval"), *(stored.get("also") or {}).values()]
        if not all(fp is None or isinstance(fp, list) and all(isinstance(v, str) for v in fp) for fp in fps):
            raise TypeError("a command is not a list of strings")
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"compare: {path} cannot be read ({type(e).__name__}: {e}); delete that run folder "
                          "to run it again") from None
    place = stored.get("place")

    def here(fp):
        return _relocated(fp, place, run.root) if fp is not None else None

    return {**stored, "fit": here(stored.get("fit")), "eval": here(stored.get("eval")),
            "also": {k: here(v) for k, v in (stored.get("also") or {}).items()}}


def _tag(spec: CompareSpec, i: int, n: int, run: Run) -> str:
    return f"[{spec.name} {i}/{n}] {run.arm}" + ("" if run.seed is None else f" seed {run.seed}")


def wandb_group(name: str, out: str) -> str:
    """A comparison's W&B group: its name, and its ``--out`` folder when that is not the default one
    (a comparison re-run with another budget into another folder was the same group, its runs named
    alike)."""
    default = os.path.join("runs", "compare", name)
    return name if os.path.normpath(out) == os.path.normpath(default) else f"{name}@{os.path.basename(os.path.normpath(out))}"


def _verb(args: list[str]) -> str:
    """A command's name in its W&B run name: ``fit``, ``test``, or ``test-<set>`` on an eval.also set."""
    root = args[args.index("--trainer.default_root_dir") + 1] if "--trainer.default_root_dir" in args else ""
    base = os.path.basename(os.path.normpath(root))
    return f"{args[0]}-{base[5:]}" if args[0] == "test" and base.startswith("also-") else args[0]


def _wandb_env(spec: CompareSpec, run: Run, verb: str) -> dict[str, str]:
    """W&B group (the comparison), job type (the arm) and run name (arm, seed and command) of one command."""
    from taosr.loggers import RUN_NAME_ENV

    from taosr.launcher import RESUME_HINT_ENV

    name = run.arm + ("" if run.seed is None else f"-seed{run.seed}") + ("" if verb == "fit" else f"-{verb}")
    return {"WANDB_RUN_GROUP": spec.wandb_group or spec.name, "WANDB_JOB_TYPE": run.arm, RUN_NAME_ENV: name,
            # an interrupted run's own note: the comparison resumes it, not `--ckpt_path` by hand
            RESUME_HINT_ENV: "re-run the taosr compare command to continue (it resumes this run)"}


def prune_checkpoints(runs: list[Run]) -> int:
    """Remove the Lightning checkpoints of finished runs (fitted and scored: the report reads their
    export's evaluation and their logs): three quarters of a tiny run's bytes, and 0.6 GB a SmolLM2
    run (base weights included). Returns the bytes freed."""
    freed = 0
    for run in runs:
        folder = os.path.join(run.root, "checkpoints")
        if run.seed is None or not (run.done and run.fitted) or not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.endswith(".ckpt") and os.path.isfile(path):
                freed += os.path.getsize(path)
                os.remove(path)
    return freed


def run_compare(spec: CompareSpec, out: str, extra: list[str] | None = None, dry_run: bool = False,
                jobs: int = 1, failures: list[str] | None = None, keep_checkpoints: bool = False) -> dict:
    """Fit and score every run not done yet; return {arm: {seed: metrics}} (start under seed None).
    ``jobs`` > 1 runs that many runs at once in worker processes (:mod:`taosr.jobs`). A failed run
    raises at once (ConfigError), unless ``failures`` is a list: then its message is added there and
    every other run still runs (an overnight compare is not left idle by its first failure). The
    checkpoints of finished runs are removed unless ``keep_checkpoints``."""
    from taosr.launcher import shared_arguments

    # the spec's set: and the extra arguments reach every arm: one an arm does not read is a warning there
    with shared_arguments([*spec.overrides, *(extra or [])]):
        return _run_compare(spec, out, list(extra or []), dry_run, jobs, failures, keep_checkpoints)


def _run_compare(spec: CompareSpec, out: str, extra: list[str], dry_run: bool, jobs: int, failures: list[str] | None,
                 keep_checkpoints: bool) -> dict:
    missing = [f"start.{k}: {v}" for k, v in spec.start.items() if v and not os.path.exists(v)
               and not (k == "model" and named_model(v))]
    missing += [f"baselines.{k}: {v}" for k, v in spec.baselines.items() if not os.path.exists(v) and not named_model(v)]
    if missing and not dry_run:
        raise ConfigError(f"{missing[0]} not found (run `taosr quickstart` first, or point the spec at your exports)")
    test_file = evaluation_file(spec, out) if not dry_run else evaluation_path(spec, out)
    more = also_files(spec) if not dry_run else dict(spec.also)
    check_commands(spec, out, test_file, extra, build=not dry_run)
    arms = {a.name: a for a in spec.arms}
    runs = plan_runs(spec, out)
    todo = []
    for i, run in enumerate(runs, 1):
        tag = _tag(spec, i, len(runs), run)
        fit = fit_args(spec, arms[run.arm], run, extra) if run.seed is not None else None
        model = spec.scored_once(run.arm) if run.seed is None else run.export
        target = run_target(spec, arms[run.arm] if run.seed is not None else None, model, extra)
        evaluation = eval_args(spec, run, test_file, model, target=target)
        also = {name: eval_args(spec, run, path, model, also=name, target=target) for name, path in more.items()}
        check_settings(spec, run, fit, evaluation, also)
        pending = run.also_pending(spec)
        if run.done and not pending:
            print(f"{tag}: done, skipped", flush=True)
            continue
        steps = ([fit] if fit is not None and not run.fitted else []) + ([] if run.done else [evaluation]) \
            + [also[name] for name in pending]  # what is still to run
        if dry_run:
            for args in steps:
                print(f"{tag}: taosr " + " ".join(args), flush=True)
            continue
        record_settings(run, fit, evaluation, also)
        todo.append((tag, run, steps))
    if not keep_checkpoints and not dry_run:
        prune_checkpoints(runs)  # runs finished before (a compare stopped by --fail-fast or Ctrl-C)
    if jobs > 1 and len(todo) > 1:
        _run_parallel(spec, todo, jobs, failures)
    else:
        for tag, run, steps in todo:
            try:
                _run_here(spec, tag, run, steps)
            except Interrupted:
                raise
            except Exception as err:  # noqa: BLE001 - a refused value, out of memory ...: the other runs go on
                if failures is None:
                    raise
                msg = str(err) if isinstance(err, ConfigError) else \
                    f"compare: {run.arm} seed {run.seed}: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
                failures.append(msg)
                print(f"{tag}: {msg}", flush=True)
    if not keep_checkpoints and not dry_run:
        freed = prune_checkpoints(runs)
        if freed:
            print(f"[{spec.name}] removed the checkpoints of finished runs ({freed / 2**20:.0f} MiB; "
                  "--keep-checkpoints keeps them)", flush=True)
    return collect(runs, spec.also)


def _run_here(spec: CompareSpec, tag: str, run: Run, steps: list[list[str]]) -> None:
    """The commands of one run in this process, one after the other."""
    from taosr.launcher import INTERRUPTED, TERMINATED, run_lightning

    for args in steps:
        print(f"{tag}: taosr " + " ".join(args), flush=True)
        t0 = time.perf_counter()
        env = _wandb_env(spec, run, _verb(args))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            rc = run_lightning(args)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        if rc in (INTERRUPTED, TERMINATED):
            raise Interrupted(f"compare: {run.arm} seed {run.seed}: `taosr {args[0]}` interrupted; finished runs are "
                              "kept: re-run the same command to continue", rc)
        if rc:
            raise ConfigError(f"compare: {run.arm} seed {run.seed}: `taosr {args[0]}` failed (exit {rc}); "
                              f"fix it and re-run: finished runs are kept")
        print(f"{tag}: {args[0]} took {time.perf_counter() - t0:.0f}s", flush=True)


def _run_parallel(spec: CompareSpec, todo: list, jobs: int, failures: list[str] | None = None) -> None:
    """The runs in ``jobs`` worker processes, each with its share of the cores (and a GPU where there
    are any); each run's output goes to ``<run>/compare.log``."""
    from taosr.jobs import Task, make_slots, run_parallel

    slots = make_slots(min(jobs, len(todo)))
    print(f"[{spec.name}] {len(todo)} runs in {len(slots)} workers: "
          + "; ".join(s.describe() for s in slots), flush=True)
    runs = {}
    tasks = []
    for tag, run, steps in todo:
        # seed by seed: a comparison stopped early leaves whole seeds (the start's evaluation with the first)
        rank = 0 if run.seed is None else spec.seeds.index(run.seed)
        t = Task(tag, steps, os.path.join(run.root, "compare.log"), group=run.arm, rank=rank)
        runs[id(t)] = run
        tasks.append(t)
    failed = run_parallel(tasks, slots, env=lambda t, k: _wandb_env(spec, runs[id(t)], _verb(t.commands[k])),
                          say=lambda line: print(line, flush=True), keep_going=failures is not None)
    msgs = []
    for t in failed:
        run, (k, rc) = runs[id(t)], t.failed
        msgs.append(f"compare: {run.arm} seed {run.seed}: `taosr {t.commands[k][0]}` failed (exit {rc}), see {t.log}")
    if msgs and failures is None:
        more = f" ({len(msgs) - 1} more failed)" if len(msgs) > 1 else ""
        raise ConfigError(f"{msgs[0]}{more}; fix it and re-run: finished runs are kept")
    if failures is not None:
        failures.extend(msgs)


def collect(runs: list[Run], also: dict[str, str] | None = None) -> dict:
    """{arm: {seed: the evaluation's metrics + the fit's mean training signals (SIGNALS)}}, with the
    metrics of the ``also`` sets (the spec's eval.also; a set dropped from it is not reported) as
    ``sets/<name>/<metric>``."""
    from taosr.history import change_over, mean_of, run_history

    results: dict[str, dict] = {}
    for run in runs:
        if run.done:
            with open(run.metrics_path) as fh:
                m = json.load(fh)
            for name in also or {}:
                if os.path.isfile(run.also_metrics(name)):
                    with open(run.also_metrics(name)) as fh:
                        m.update({f"sets/{name}/{k}": v for k, v in json.load(fh).items()})
            hist = run_history(run.root) if run.seed is not None else None
            if hist:
                m.update({k: mean_of(hist, k) for k in SIGNALS})
                m.update({k: change_over(hist, of) for k, of in TRENDS.items()})
            results.setdefault(run.arm, {})[run.seed] = m
    return results


# ---------------------------------------------------------------------------------------- report
def slices(results: dict) -> list[str]:
    keys = {k for per in results.values() for m in per.values() for k in m}
    types = sorted({k.split("/")[1] for k in keys if k.startswith("by_type/")})
    sets = sorted({ALSO_PREFIX + k.split("/")[1] for k in keys if k.startswith("sets/")})
    return ["overall", "long_tail"] + sets + types


def _key(sl: str, metric: str) -> str:
    if sl.startswith(ALSO_PREFIX):  # an eval.also set: its overall figures
        return f"sets/{sl[len(ALSO_PREFIX):]}/{metric}"
    return metric if sl == "overall" else (f"long_tail/{metric}" if sl == "long_tail" else f"by_type/{sl}/{metric}")


def _value(m: dict, key: str) -> float:
    v = m.get(key)
    return float("nan") if v is None else float(v)


def arm_rows(results: dict) -> list[dict]:
    """One row per (arm, slice): mean and standard error over seeds of every metric."""
    rows, metrics = [], report_metrics(results, METRICS)
    for arm, per in results.items():
        for sl in slices(results):
            if not any(_key(sl, "n") in m for m in per.values()):
                continue
            row = {"arm": arm, "slice": sl, "seeds": len(per),
                   "n": int(max(_value(m, _key(sl, "n")) for m in per.values() if _key(sl, "n") in m))}
            for metric in metrics:
                s = mean_se(_value(m, _key(sl, metric)) for m in per.values())
                # seeds with a value (NaN -- no step annotations, no tier -- is left out of the mean)
                row[metric], row[f"{metric}_se"], row[f"{metric}_seeds"] = s.mean, s.se, s.n
            rows.append(row)
    return rows


def signal_rows(results: dict) -> list[dict]:
    """One row per arm with a training history: mean and standard error over seeds of each signal."""
    rows = []
    for arm, per in results.items():
        if not any(k in m for m in per.values() for k in ALL_SIGNALS):
            continue
        row = {"arm": arm, "seeds": sum(1 for m in per.values() if any(k in m for k in ALL_SIGNALS))}
        for k in ALL_SIGNALS:
            s = mean_se(_value(m, k) for m in per.values())
            row[k], row[f"{k}_se"] = s.mean, s.se
        if not all(math.isnan(row[k]) for k in ALL_SIGNALS):  # an SFT arm's log: no RL signal, no row of dashes
            rows.append(row)
    return rows


def pair_rows(results: dict, pairs: list[tuple[str, str]]) -> list[dict]:
    """One row per (pair, slice, metric): the difference a - b paired by seed."""
    rows, metrics = [], report_metrics(results, PAIR_METRICS)
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        for sl in slices(results):
            for metric in metrics:
                k = _key(sl, metric)
                va = {s: _value(m, k) for s, m in results[a].items()}
                vb = _value(results[b][None], k) if None in results[b] else {s: _value(m, k) for s, m in results[b].items()}
                p = paired_difference(va, vb)
                if p.diff.n == 0:
                    continue
                rows.append({"pair": f"{a} - {b}", "slice": sl, "metric": metric, "mean": p.diff.mean,
                             "se": p.diff.se, "z": p.z, "wins": p.wins, "ties": p.ties, "seeds": p.diff.n,
                             "per_seed": " ".join(f"{d:+.3f}" for d in p.diffs)})
    return rows


def flip_rows(runs: list[Run], pairs: list[tuple[str, str]]) -> list[dict]:
    """One row per (pair, slice) of overall and long tail: how many examples, per seed, arm a got
    right and b wrong and the reverse (their difference is what a paired macro F1 difference rests
    on), mean ± s.e. over the seeds both have prediction records for (:mod:`taosr.eval.flips`)."""
    from taosr.eval.flips import flip_counts, read_predictions

    paths: dict[str, dict] = {}
    for run in runs:
        if run.done and os.path.isfile(run.predictions_path):
            paths.setdefault(run.arm, {})[run.seed] = run.predictions_path
    read: dict[str, dict] = {}  # each file parsed once: the start's and an arm's records serve several pairs

    def records(path: str) -> dict:
        if path not in read:
            read[path] = read_predictions(path)
        return read[path]

    rows = []
    for a, b in pairs:
        once = None in paths.get(b, {})
        seeds = sorted((s for s in paths.get(a, {}) if once or s in paths.get(b, {})), key=seed_order)
        if not seeds:
            continue
        counts = []
        for s in seeds:
            try:
                counts.append(flip_counts(records(paths[a][s]), records(paths[b][None if once else s])))
            except ConfigError as err:  # a bad record file: that seed is left out of this pair, said, not fatal
                print(f"taosr: warning: flips of {a} seed {s} against {b}: {err}", file=sys.stderr)
        seeds_read = len(counts)
        for sl in ("overall", "long_tail"):
            per = [c.get(sl) for c in counts]
            if not per or any(c is None for c in per):
                continue
            row = {"pair": f"{a} - {b}", "slice": sl, "seeds": seeds_read, "n": sum(per[0].values())}
            for key, f in (("a_only", lambda c: c["a only"]), ("b_only", lambda c: c["b only"]),
                           ("net", lambda c: c["a only"] - c["b only"]), ("both_wrong", lambda c: c["both wrong"])):
                m = mean_se(f(c) for c in per)
                row[key], row[f"{key}_se"] = m.mean, m.se
            rows.append(row)
    return rows


def flips_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["## Examples behind each difference (per seed: a right and b wrong, the reverse; mean ± s.e. over seeds)",
             "", "| pair | slice | seeds | n | a right, b wrong | b right, a wrong | net | both wrong |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['slice']} | {r['seeds']} | {r['n']} | "
                     + " | ".join(pm(r[k], r[f"{k}_se"], 1) for k in ("a_only", "b_only", "net", "both_wrong")) + " |")
    return "\n".join(lines)


def signals_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    names = [k.removeprefix("train/") for k in ALL_SIGNALS]
    lines = ["## Training signals (each fit's mean over its logged steps; `rewards/correct/rise`: its rollouts' "
             "accuracy over the last third of those steps minus the first third; mean ± s.e. over seeds)", "",
             "| arm | seeds | " + " | ".join(names) + " |", "|---" * (len(ALL_SIGNALS) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seeds']} | " + " | ".join(pm(r[k], r[f"{k}_se"]) for k in ALL_SIGNALS) + " |")
    return "\n".join(lines)


def markdown(arms: list[dict], pairs: list[dict], title: str, all_slices: bool = True) -> str:
    keep = lambda sl: all_slices or sl in ("overall", "long_tail") or sl.startswith(ALSO_PREFIX)  # noqa: E731
    metrics = METRICS + tuple(m for m in SCORE_METRICS if arms and m in arms[0])
    lines = [f"## {title}: mean ± standard error over seeds", "",
             "| arm | slice | seeds | n | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 4) + "|"]
    for r in arms:
        if keep(r["slice"]):
            lines.append(f"| {r['arm']} | {r['slice']} | {r['seeds']} | {r['n']} | "
                         + " | ".join(_cell(r, m) for m in metrics) + " |")
    if pairs:
        lines += ["", "## Paired differences (a − b over the same seeds)", "",
                  "| pair | slice | metric | mean ± s.e. | mean / s.e. | a > b | per seed |", "|---" * 7 + "|"]
        for r in pairs:
            if keep(r["slice"]):
                z = "—" if math.isnan(r["z"]) else f"{r['z']:+.1f}"
                lines.append(f"| {r['pair']} | {r['slice']} | {r['metric']} | {pm(r['mean'], r['se'])} | {z} | "
                             f"{r['wins']}/{r['seeds']}{_ties(r)} | {r['per_seed']} |")
    return "\n".join(lines)


def _cell(row: dict, metric: str) -> str:
    """``mean ± se``, naming how many seeds it is over when fewer than the row's (the others have none)."""
    n = row.get(f"{metric}_seeds", row["seeds"])
    return pm(row[metric], row[f"{metric}_se"]) + (f" ({n} of {row['seeds']} seeds)" if 0 < n < row["seeds"] else "")


def _ties(row: dict) -> str:
    """`` (1 tie)``: seeds where both arms scored the same, counted in neither direction."""
    n = row.get("ties") or 0
    return f" ({n} tie{'s' if n > 1 else ''})" if n else ""


def seed_gap_note(results: dict) -> str:
    """A note when the arms were scored on different seeds (a failed or unfinished run): each arm's
    mean is over its own seeds, a paired difference over the seeds both have."""
    seeds = {arm: sorted((s for s in per if s is not None), key=seed_order) for arm, per in results.items()}
    seeds = {a: s for a, s in seeds.items() if s}
    if len({tuple(s) for s in seeds.values()}) <= 1:
        return ""
    listed = "; ".join(f"{a} {' '.join(map(str, s))}" for a, s in seeds.items())
    return (f"Note: the arms cover different seeds ({listed}): each arm's mean is over its own seeds, "
            "a paired difference over the seeds both arms have.")


def same_seeds_note(results: dict) -> str:
    """A note naming the arms whose seeds all scored the same (two or more seeds, the same macro F1 in
    every slice): their standard errors of 0 say the fit draws nothing from ``seed_everything``
    (a deterministic SFT of a dropout-free export), not that the arm is precise."""
    same = []
    for arm, per in results.items():
        runs = [m for s, m in per.items() if s is not None]
        keys = sorted({k for m in runs for k in m if k.endswith("macro_f1")})
        if len(runs) > 1 and keys and all(len({repr(m.get(k)) for m in runs}) == 1 for k in keys):
            same.append(arm)
    if not same:
        return ""
    return (f"Note: every seed of {', '.join(same)} scored the same: those fits draw nothing from --seed_everything "
            "(e.g. SFT of a dropout-free export), so their ± 0 is no precision; vary the data order with "
            "seed_keys: [data.seed] in the spec.")


STALE_S = 600  # a running command writes a progress line at least every few minutes (taosr.callbacks.progress)
_RATE = re.compile(r"([0-9.]+) s/(?:step|batch)")
_PROGRESS = re.compile(r"taosr: ((?:fit step|test batch) \d+/\d+[^;\r\n]*)")


def _last_progress(log: str) -> tuple[str | None, str | None]:
    """The last progress line (:mod:`taosr.callbacks.progress`) in the tail of a run's log, without
    its metrics, and how the command ended after it (:data:`taosr.jobs.ENDED`): ``"stopped"``
    (interrupted, terminated: a fit saved its checkpoint), ``"failed"`` or None (still running, or a
    later command started after it: a resume loading its model)."""
    from taosr.jobs import ENDED

    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log) - (1 << 16)))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None, None
    found = list(_PROGRESS.finditer(tail))
    if not found:
        return None, None
    after = tail[found[-1].end():]
    end = ENDED.search(after)
    if end is None or "\n$ taosr " in after:  # running, or another command (a resume) started since
        return found[-1].group(1).strip(), None
    return found[-1].group(1).strip(), "stopped" if end.group(1) or end.group(2) == "stopped" else "failed"


def where_runs_stand(runs: list[Run], name: str, now: float | None = None) -> list[str]:
    """For ``--report-only`` on a comparison still running or stopped part-way: how many runs are
    finished and, for each started one that is not, the last progress its log shows and how long
    ago the log was written; a log silent for longer than its rate explains is of a stopped run."""
    from taosr.callbacks.progress import duration, env_interval

    now = time.time() if now is None else now
    left = [r for r in runs if not r.done]
    if not left:
        return [f"[{name}] all {len(runs)} runs finished"]
    lines, fresh = [], 0
    for r in left:
        log = os.path.join(r.root, "compare.log")
        ckpt = os.path.join(r.root, "checkpoints", "last.ckpt")
        last, ended = _last_progress(log)
        if r.fitted:
            state = "fitted; " + (last if last and last.startswith("test") else "evaluation not started")
        elif os.path.isfile(log) or os.path.isfile(ckpt):
            state = last or ("checkpoint saved" if os.path.isfile(ckpt) else "started")
        else:
            fresh += 1
            continue
        if os.path.isfile(log):
            age = max(0.0, now - os.path.getmtime(log))
            rate = _RATE.search(state)
            if last and last in state and (ended or age > max(STALE_S, 3 * float(rate.group(1) if rate else 0),
                                                               3 * env_interval())):
                # it said it stopped, or no progress line for longer than its rate explains: no rate or time left
                state = state.replace(last, f"{'failed' if ended == 'failed' else 'stopped'} at " + last.split(",")[0])
            state += f" (log written {duration(age)} ago)"
        lines.append(f"  {r.arm}" + ("" if r.seed is None else f" seed {r.seed}") + f": {state}")
    head = (f"[{name}] {len(runs) - len(left)} of {len(runs)} runs finished (the report covers them); "
            f"{len(lines)} started, {fresh} not started" + (":" if lines else ""))
    return [head, *lines]


def write_report(out: str, results: dict, pairs: list[tuple[str, str]], title: str,
                 flips: list[dict] | None = None) -> str:
    """summary.md, summary.csv, pairs.csv, signals.csv, flips.csv (``flips``: :func:`flip_rows`) and
    summary.png under ``out``; prints the overall and long-tail tables."""
    arms, prs, sig = arm_rows(results), pair_rows(results, pairs), signal_rows(results)
    flips = flips or []
    os.makedirs(out, exist_ok=True)
    notes = [n for n in (seed_gap_note(results), same_seeds_note(results)) if n]
    gap = "\n\n".join(notes)
    md = (markdown(arms, prs, title) + ("\n\n" + flips_markdown(flips) if flips else "")
          + ("\n\n" + signals_markdown(sig) if sig else "") + (f"\n\n{gap}" if gap else ""))
    for n in notes:
        print(f"taosr: warning: {n}", file=sys.stderr)
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(md + "\n")
    for name, rows in (("summary.csv", arms), ("pairs.csv", prs), ("signals.csv", sig), ("flips.csv", flips)):
        with open(os.path.join(out, name), "w", newline="") as fh:
            if rows:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    plot(arms, prs, os.path.join(out, "summary.png"), title)
    print("\n" + markdown(arms, prs, title, all_slices=False) + ("\n\n" + flips_markdown(flips) if flips else "")
          + ("\n\n" + signals_markdown(sig) if sig else "")
          + f"\n\nfull tables: {out}/summary.md (.csv, pairs.csv, flips.csv, signals.csv, .png)")
    return md


def plot(arms: list[dict], pairs: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["arm"] for r in arms))
    sls = ["overall", "long_tail"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(names))
    for i, a in enumerate(names):
        rs = [next((r for r in arms if r["arm"] == a and r["slice"] == sl), None) for sl in sls]
        axes[0].bar([x + i * width for x in range(len(sls))], [r["macro_f1"] if r else 0 for r in rs], width,
                    yerr=[0 if not r or math.isnan(r["macro_f1_se"]) else r["macro_f1_se"] for r in rs],
                    capsize=3, label=a)
    axes[0].set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(sls))], sls)
    lo = min((r["macro_f1"] for r in arms if r["slice"] in sls and not math.isnan(r["macro_f1"])), default=0)
    axes[0].set_ylim(max(0.0, lo - 0.1), 1.0)
    axes[0].set_title(f"{title}: macro F1 (mean ± s.e.)")
    axes[0].legend(fontsize=8)
    pr = [r for r in pairs if r["metric"] == "macro_f1" and r["slice"] in sls]
    labels = [f"{r['pair']}\n{r['slice']}" for r in pr]
    axes[1].bar(range(len(pr)), [r["mean"] for r in pr],
                yerr=[0 if math.isnan(r["se"]) else r["se"] for r in pr], capsize=3, color="tab:gray")
    axes[1].axhline(0, color="black", lw=0.8)
    axes[1].set_xticks(range(len(pr)), labels, fontsize=7)
    axes[1].set_title("paired difference in macro F1 (mean ± s.e.)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_wandb(out: str, spec: CompareSpec) -> None:
    """The summary tables as one W&B run in the comparison's group (offline without credentials)."""
    import wandb

    from taosr.loggers import wandb_credentials_present

    mode = "online" if wandb_credentials_present() and os.environ.get("WANDB_MODE") not in ("offline", "disabled") \
        else ("disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline")
    group = spec.wandb_group or spec.name
    run = wandb.init(project="taosr", group=group, job_type="summary", name=f"{group}-summary",
                     dir=out, mode=mode, reinit="finish_previous")
    for name in ("summary", "pairs", "flips", "signals"):
        path = os.path.join(out, f"{name}.csv")
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path) as fh:
                rows = list(csv.reader(fh))
            run.log({f"compare/{name}": wandb.Table(columns=rows[0], data=rows[1:])})
    run.log({"compare/chart": wandb.Image(os.path.join(out, "summary.png"))})
    run.finish()


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taosr compare", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="comparison YAML (see comparisons/)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the spec's seeds")
    p.add_argument("--arms", nargs="+", default=None, help="run and report only these arms of the spec")
    p.add_argument("--out", default=None, help="default runs/compare/<name>")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, in worker processes with a share of the CPU cores (and a GPU each where "
                        "there are GPUs); default 1: one after the other in this process")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the runs finished so far (runs nothing; e.g. while another "
                        "`taosr compare` of the same spec is running)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the summary run to W&B")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's checkpoints/*.ckpt (default: removed once its export is scored)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first failed run (default: every other run still runs, the report covers the "
                        "finished ones and the failures are listed at the end, exit 2)")
    a, extra = p.parse_known_args(argv)
    extra = passed_on(extra)
    if a.jobs < 1:
        raise ConfigError(f"--jobs {a.jobs}: must be at least 1")
    spec = load_spec(a.spec, a.seeds, a.arms)
    out = a.out or os.path.join("runs", "compare", spec.name)
    spec.wandb_group = wandb_group(spec.name, out)
    t0 = time.perf_counter()
    if a.report_only:
        runs = plan_runs(spec, out)
        print("\n".join(where_runs_stand(runs, spec.name)), flush=True)
        results = collect(runs, spec.also)
        if not results:
            raise ConfigError(f"--report-only: no finished runs under {out}")
        write_report(out, results, spec.pairs, spec.name, flip_rows(runs, spec.pairs))
        return 0
    failures: list[str] | None = None if a.fail_fast else []
    results = run_compare(spec, out, extra, a.dry_run, a.jobs, failures, a.keep_checkpoints)
    if a.dry_run:
        return 0
    if not results:  # every run failed
        more = f" ({len(failures) - 1} more failed)" if failures and len(failures) > 1 else ""
        raise ConfigError(f"{failures[0]}{more}" if failures else f"compare: no finished runs under {out}")
    write_report(out, results, spec.pairs, spec.name, flip_rows(plan_runs(spec, out), spec.pairs))
    if not a.no_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            print("taosr: warning: wandb is not installed: no W&B summary run (the tables are in "
                  f"{out})", file=sys.stderr)
        else:
            log_to_wandb(out, spec)
    print(f"compare finished in {time.perf_counter() - t0:.0f}s")
    if failures:
        for f in failures:
            print(f"failed: {f}", file=sys.stderr)
        raise ConfigError(f"{len(failures)} runs failed (first: {failures[0]}); the report covers the finished runs; "
                          "fix them and re-run the same command: finished runs are kept")
    return 0
