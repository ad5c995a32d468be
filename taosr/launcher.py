"""Run a LightningCLI command (``fit``, ``validate``, ``test``, ``predict``) in this process.

The ``taosr`` command and the quick-start pipeline both call :func:`run_lightning`; it returns the
exit status and turns a bad key, value, config file or checkpoint into one line (exit 2):

- config files are read strictly first and layered ones (``base:``) expanded
  (:mod:`taosr.configfiles`): a YAML error or a key set twice names file and line;
- ``--ckpt_path`` must be a readable Lightning checkpoint of the configured method;
- a setting the run never reads is refused where the user set it, not where taosr's own ``configs/``
  did (:mod:`taosr.setting_checks`; who set which key is computed once, :func:`_run_keys`);
- callbacks that need a logger are dropped with a warning when ``trainer.logger`` is false;
- a W&B logger becomes a CSVLogger in the same folder, with a warning, where ``wandb`` is not installed,
  and with a note under ``WANDB_MODE=disabled`` (where W&B would keep no history);
- the resolved config is written atomically as ``<run>/config.yaml`` (``config-<command>.yaml`` for
  validate/test/predict); where a previous run's file exists it is replaced only when the command
  succeeds, and an input config is never overwritten;
- Ctrl-C ends with a one-line note naming the checkpoint a resume starts from and its step (exit 130); SIGTERM
  (a scheduler's preemption, ``kill``) likewise, exit 143 (Lightning ends it as a SystemExit without
  a code, which would otherwise read as success).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import warnings

from taosr.configfiles import as_list, config_paths, expand_config_args, user_mark, user_set_keys
from taosr.errors import ConfigError, TaosrError, find_cause

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# callbacks that raise without a logger (LearningRateMonitor, DeviceStatsMonitor): skipped with a warning
NEEDS_LOGGER = ("LearningRateMonitor", "DeviceStatsMonitor")
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


def _fill_run_paths(cfg) -> None:
    """Point the logger's save_dir and checkpoint dirpath at ``trainer.default_root_dir`` unless a
    config sets them (OmegaConf resolves ``${trainer.default_root_dir}`` per file, before
    command-line overrides, so interpolating it in YAML would ignore ``--trainer.default_root_dir``)."""
    trainer = cfg.get("trainer")
    root = trainer.get("default_root_dir") if trainer is not None else None
    if not root:
        return
    loggers = trainer.get("logger")
    for lg in as_list(loggers):
        args = getattr(lg, "init_args", None) if lg is not None and not isinstance(lg, bool) else None
        if args is not None and "save_dir" in args and args.get("save_dir") is None:  # unset; a given one is kept
            args["save_dir"] = root
    for cb in as_list(trainer.get("callbacks")):
        args = getattr(cb, "init_args", None)
        if args is not None and "dirpath" in args and args.get("dirpath") is None:
            args["dirpath"] = f"{root}/checkpoints"


def last_checkpoint(cfg, command: str = "fit") -> str | None:
    """``--ckpt_path last``: the ``last.ckpt`` of the run's checkpoint folder (the configured
    ``dirpath``, else ``<trainer.default_root_dir>/checkpoints``), or None (with a note) when the run
    has none yet, so one command both starts and resumes a preemptible job."""
    trainer = cfg.get("trainer")
    folder = None
    for cb in as_list(trainer.get("callbacks") if trainer is not None else None):
        args = getattr(cb, "init_args", None)
        if args is not None and "dirpath" in args and args.get("dirpath"):
            folder = args.get("dirpath")
    root = trainer.get("default_root_dir") if trainer is not None else None
    folder = folder or os.path.join(root or ".", "checkpoints")
    path = os.path.join(folder, "last.ckpt")
    if os.path.isfile(path):
        print(f"taosr: --ckpt_path last: resuming from {path}", file=sys.stderr)
        return path
    what = "starting from the beginning" if command == "fit" else "using the configured model"
    print(f"taosr: --ckpt_path last: no {path} yet: {what}", file=sys.stderr)
    return None


WANDB_LOGGERS = ("taosr.loggers.AutoWandbLogger", "lightning.pytorch.loggers.WandbLogger",
                 "lightning.pytorch.loggers.wandb.WandbLogger", "WandbLogger", "AutoWandbLogger")
CSV_LOGGERS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger", "CSVLogger")


def _wandb_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def _csv_logger_instead_of_wandb(cfg, installed: bool | None = None, mode: str | None = None) -> None:
    """A W&B logger in the config becomes a CSVLogger in the same folder
    (``<save_dir>/<name>/version_N/metrics.csv``) where W&B would keep nothing: the ``wandb`` package
    is missing (a bare GPU image; a one-line warning instead of failing the run at its first line), or
    W&B disabled (``mode``, default the environment's ``WANDB_MODE``, or ``disabled`` where
    ``WANDB_DISABLED`` is true; a one-line note), where wandb writes
    no file and the run's history (``taosr compare``'s training signals, the notebooks) would be lost."""
    trainer = cfg.get("trainer")
    loggers = trainer.get("logger") if trainer is not None else None
    items = as_list(loggers)
    if not any(getattr(lg, "class_path", None) in WANDB_LOGGERS for lg in items):
        return
    if installed is None:
        installed = _wandb_installed()
    if mode is None:  # wandb reads WANDB_DISABLED=true as mode disabled too
        mode = "disabled" if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes") \
            else os.environ.get("WANDB_MODE")
    if installed and mode != "disabled":
        return
    from jsonargparse import Namespace

    def save_dir(lg) -> str:
        args = lg.get("init_args") or {}
        return os.path.realpath(args.get("save_dir") or trainer.get("default_root_dir") or "runs")

    wandb_dirs = {save_dir(lg) for lg in items if getattr(lg, "class_path", None) in WANDB_LOGGERS}
    if any(getattr(lg, "class_path", None) in CSV_LOGGERS and save_dir(lg) in wandb_dirs
           and (lg.get("init_args") or {}).get("name", "lightning_logs") for lg in items):
        # a CSVLogger listed beside W&B writes where the fallback would (the history is read there):
        # a second one would log each row twice
        trainer["logger"] = [lg for lg in items if getattr(lg, "class_path", None) not in WANDB_LOGGERS]
        why = "warning: wandb is not installed" if not installed else \
            "W&B is disabled (WANDB_MODE=disabled or WANDB_DISABLED)"
        print(f"taosr: {why}: logging to the config's CSVLogger only", file=sys.stderr)
        return
    for lg in items:
        if getattr(lg, "class_path", None) in WANDB_LOGGERS:
            args = lg.get("init_args") or {}
            folder = args.get("save_dir") or trainer.get("default_root_dir") or "runs"
            lg.class_path = "lightning.pytorch.loggers.CSVLogger"
            lg.init_args = Namespace(save_dir=folder, name=args.get("name") or "csv")
            if not installed:
                print(f"taosr: warning: wandb is not installed: logging to CSV under {folder} "
                      f"(pip install wandb for W&B)", file=sys.stderr)
            else:
                print(f"taosr: W&B is disabled (WANDB_MODE=disabled or WANDB_DISABLED): logging to CSV under "
                      f"{folder} (W&B keeps nothing when disabled; WANDB_MODE=offline keeps a local run to sync "
                      f"later)", file=sys.stderr)


def _continue_wandb_run(cfg) -> None:
    """A fit resumed from a checkpoint of its own run folder logs on into the W&B run the earlier legs
    logged to (the id :func:`_record_wandb_run` kept), not into a second run of the same name. An
    ``id`` or ``version`` the config gives wins; a fit from the start, or from another run's
    checkpoint, gets a new run."""
    from taosr.loggers import RUN_ID_FILE, stored_run_id

    trainer = cfg.get("trainer")
    root = trainer.get("default_root_dir") if trainer is not None else None
    ckpt = cfg.get("ckpt_path")
    if not root or not ckpt or not os.path.realpath(ckpt).startswith(os.path.realpath(root) + os.sep):
        return
    run_id = stored_run_id(root)
    if run_id is None:
        return
    loggers = trainer.get("logger")
    for lg in as_list(loggers):
        if getattr(lg, "class_path", None) in WANDB_LOGGERS:
            args = lg.get("init_args")
            if args is None or args.get("id") or args.get("version"):
                return
            args["id"] = run_id
            if os.environ.get("LOCAL_RANK", "0") == "0":  # once, not from every rank Lightning's DDP launcher starts
                print(f"taosr: W&B: the resumed fit logs on into run {run_id} ({os.path.join(root, RUN_ID_FILE)})",
                      file=sys.stderr)
            return


def _record_wandb_run(trainer) -> None:
    """Keep the id of a fit's W&B run in its run folder, for :func:`_continue_wandb_run`."""
    from lightning.pytorch.loggers import WandbLogger

    from taosr.loggers import store_run_id

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if loggers and trainer.is_global_zero:
        run_id = getattr(loggers[0].experiment, "id", None)
        if isinstance(run_id, str) and run_id:
            store_run_id(trainer.default_root_dir, run_id, getattr(loggers[0], "_project", None))


def load_checkpoint_meta(path: str) -> dict:
    """Read a Lightning checkpoint for the checks before a run; one-line ConfigError if it is not one."""
    import torch

    if not os.path.exists(path):
        raise ConfigError(f"--ckpt_path {path}: file not found")
    if os.path.isdir(path):
        raise ConfigError(f"--ckpt_path {path}: is a directory, not a checkpoint file")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, text file, pickle of another kind
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--ckpt_path {path}: not a readable Lightning checkpoint (truncated or corrupt?): "
                          f"{cause[:160]}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict/global_step)")
    return ckpt


def check_checkpoint_method(path: str, ckpt: dict, class_path: str | None) -> None:
    """A checkpoint of another method would silently run zero steps of this one: refuse it."""
    hp = ckpt.get("hyper_parameters") or {}
    saved = hp.get("_class_path")
    if saved and class_path and saved != class_path:
        raise ConfigError(f"--ckpt_path {path}: checkpoint of {saved.rsplit('.', 1)[-1]} ({saved}) but the config trains "
                          f"{class_path.rsplit('.', 1)[-1]} ({class_path}); start from that run's export instead "
                          "(--model.init_args.model.name_or_path <run>/export)")


def _flat_settings(node, prefix: str = "model") -> dict[str, object]:
    """A parsed config section as dotted keys (``model.init_args.lr``) and leaf values."""
    if hasattr(node, "as_dict"):
        node = node.as_dict()
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for k, v in node.items():
        out.update(_flat_settings(v, f"{prefix}.{k}"))
    return out


def note_replaced_settings(path: str, before: dict, after: dict) -> None:
    """Lightning lets a checkpoint's hyperparameters replace the configured model's, command line
    included: say which ones (a `taosr test --ckpt_path` with other evaluation settings ran with the
    checkpoint's, silently)."""
    changed = [k for k in after if k in before and before[k] != after[k]]
    if not changed:
        return
    shown = ", ".join(f"{k} {before[k]!r} -> {after[k]!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    print(f"taosr: note: --ckpt_path {path}: the checkpoint's settings replace the configured {shown}{more} "
          "(to evaluate with other settings, start from the run's export: --model.init_args.model.name_or_path "
          "<run>/export)", file=sys.stderr)


def _make_cli_classes():
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class RunConfig(SaveConfigCallback):
        """Writes the resolved config atomically; keeps a finished run's file until this one succeeds."""

        inputs: tuple[str, ...] = ()
        as_given = None  # the config before the run's derived paths and the CSV stand-in were filled in
        user_keys: frozenset[str] = frozenset()  # listed in the saved file: a re-run of it means what this run meant

        def __init__(self, *args, **kwargs):
            kwargs["save_to_log_dir"] = False
            super().__init__(*args, **kwargs)
            self._pending: tuple[str, str] | None = None

        def save_config(self, trainer, pl_module, stage: str) -> None:
            fn = trainer.state.fn.value if trainer.state.fn is not None else stage
            name = "config.yaml" if fn == "fit" else f"config-{fn}.yaml"
            log_dir = trainer.default_root_dir  # <run>/config.yaml beside <run>/export, whatever the logger
            final = os.path.join(log_dir, name)
            if os.path.realpath(final) in self.inputs:
                warnings.warn(f"taosr: not writing the resolved config to {final}: it is an input config of this command",
                              stacklevel=1)
                return
            os.makedirs(log_dir, exist_ok=True)
            tmp = os.path.join(log_dir, f".{name}.tmp{os.getpid()}")
            # as given: a re-run of the file with another --trainer.default_root_dir must not write its checkpoints
            # and logs into this run's folders (the filled-in dirpath / save_dir would point there)
            config = self.as_given if self.as_given is not None else self.config
            self.parser.save(config, tmp, skip_none=False, overwrite=True, multifile=False)
            with open(tmp, encoding="utf-8") as fh:
                text = fh.read()
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(user_mark(self.user_keys) + text)
            # a fresh folder gets it once the work starts (not when setup fails); a previous run's file
            # is replaced only when this command succeeds
            self._pending = (tmp, final, os.path.exists(final))
            _log_settings_to_wandb(trainer, self.config)
            if fn == "fit":
                _record_wandb_run(trainer)

        def _commit(self, trainer, finished: bool) -> None:
            if self._pending and trainer.is_global_zero and (finished or not self._pending[2]):
                os.replace(self._pending[0], self._pending[1])
                self._pending = None

        def _on_start(self, trainer, pl_module) -> None:
            self._commit(trainer, finished=False)

        on_train_start = on_validation_start = on_test_start = on_predict_start = _on_start

        def teardown(self, trainer, pl_module, stage: str) -> None:  # called only when the command finished
            self._commit(trainer, finished=True)

        def on_exception(self, trainer, pl_module, exception) -> None:
            if self._pending:
                try:
                    os.remove(self._pending[0])
                except OSError:
                    pass
                self._pending = None

    class TaosrCLI(LightningCLI):
        user_keys: frozenset[str] = frozenset()  # the dotted keys the user set (configfiles.user_set_keys)
        shared_keys: frozenset[str] = frozenset()  # those of them a multi-run command gives every run (shared_arguments)
        build_only: bool = False  # check_command: build the data, model and trainer, run nothing

        def _run_subcommand(self, subcommand: str) -> None:
            if not self.build_only:
                super()._run_subcommand(subcommand)

        def _parse_ckpt_path(self) -> None:
            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            self._ckpt_as_given = path
            if path == "last":  # the run folder's last.ckpt when there is one, else a fresh start
                path = self.config[sub]["ckpt_path"] = last_checkpoint(self.config[sub], sub)
            if path in ("hpc", "registry") or (path or "").startswith("registry:"):
                return super()._parse_ckpt_path()  # Lightning's own lookups
            if path:
                ckpt = load_checkpoint_meta(path)
                model = self.config[sub].get("model")
                check_checkpoint_method(path, ckpt, getattr(model, "class_path", None))
                del ckpt
            before = _flat_settings(self.config[sub].get("model")) if path else {}
            super()._parse_ckpt_path()
            if path:
                note_replaced_settings(path, before, _flat_settings(self.config[sub].get("model")))

        def _set_seed(self) -> None:
            seed = self._get(self.config, "seed_everything")
            if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= 2**32 - 1:
                raise ConfigError(f"seed_everything: must be in [0, 2**32 - 1] (or true / false), got {seed}")
            if self.build_only:  # a check must not seed the process that runs it (a sweep draws its next values there)
                return
            super()._set_seed()

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            from taosr.setting_checks import check_unread_settings

            check_unread_settings(self.subcommand or "", cfg, self.user_keys, self.shared_keys)
            RunConfig.as_given = cfg.clone()
            if "ckpt_path" in RunConfig.as_given:
                # a saved config re-run elsewhere must not restore this run's checkpoint: `last` (the re-run's
                # own folder) is kept, a path is not
                RunConfig.as_given["ckpt_path"] = "last" if getattr(self, "_ckpt_as_given", None) == "last" else None
            _fill_run_paths(cfg)
            _csv_logger_instead_of_wandb(cfg)
            if self.subcommand == "fit" and not self.build_only:
                _continue_wandb_run(cfg)
            if self.build_only:  # a logger makes its folder (and W&B its settings) when built: not for a check
                cfg["trainer"]["logger"] = False

        def _instantiate_trainer(self, config: dict, callbacks: list):
            from taosr.callbacks.progress import LineProgress, wants_lines

            if wants_lines({**config, "callbacks": [*as_list(config.get("callbacks")), *callbacks]}):
                callbacks = [*callbacks, LineProgress()]  # a log file sees lines, not a bar drawn at the end
            return super()._instantiate_trainer(config, callbacks)

        def _drop_callbacks_needing_a_logger(self) -> None:
            if self.trainer.loggers:
                return
            for cb in list(self.trainer.callbacks):
                if type(cb).__name__ in NEEDS_LOGGER:
                    self.trainer.callbacks.remove(cb)
                    print(f"taosr: warning: trainer.logger is off: skipping {type(cb).__name__}", file=sys.stderr)

        def before_fit(self) -> None:
            self._drop_callbacks_needing_a_logger()
            self._add_rank_callbacks(fit=True)

        def _add_rank_callbacks(self, fit: bool = False) -> None:
            from taosr.callbacks.ranks import CtrlCStopsEveryRank, EndRanksOnFailure

            for kind in (EndRanksOnFailure, CtrlCStopsEveryRank) if fit else (EndRanksOnFailure,):
                if not any(isinstance(cb, kind) for cb in self.trainer.callbacks):
                    self.trainer.callbacks.append(kind())  # one rank's failure ends them all; Ctrl-C stops them together

        def before_validate(self) -> None:
            self._drop_callbacks_needing_a_logger()
            self._add_rank_callbacks()

        before_test = before_predict = before_validate

    return TaosrCLI, RunConfig


def _log_settings_to_wandb(trainer, config) -> None:
    """The run's settings beside the model's hyperparameters in its W&B config: the trainer, the
    data (the curriculum, diverse sampling ... a sweep varies), the seed and the method. W&B held
    the model's init arguments only, so runs that differed in data settings or budget looked alike."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    cfg = config.as_dict()
    settings = {k: cfg[k] for k in ("seed_everything", "trainer", "data", "ckpt_path") if k in cfg}
    model = cfg.get("model")
    if isinstance(model, dict) and model.get("class_path"):
        settings["method"] = model["class_path"]
    for lg in loggers:
        lg.log_hyperparams(settings)


SHARED_ARGS_ENV = "TAOSR_SHARED_ARGS"


@contextlib.contextmanager
def _environment(name: str, value: str):
    """``os.environ[name] = value`` within it (worker processes inherit it), restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def shared_arguments(args):
    """Within it, ``args`` are the user's arguments to every run of a multi-run command (``taosr sweep``'s
    extra arguments, ``taosr compare``'s ``set:`` and extra ones, ``taosr quickstart -- ARGS``): a setting
    among them that one of the runs does not read is a warning there, not a refusal
    (:mod:`taosr.setting_checks`; a sweep over examiner modes gives all of them one GRM). Held in the
    environment, so worker processes (``--jobs``, a sweep's runs) see it too."""
    return _environment(SHARED_ARGS_ENV, json.dumps([str(a) for a in args]))


def resume_hint(text: str):
    """Within it, an interrupted run ends its note with ``text`` (how the command that runs it continues)."""
    return _environment(RESUME_HINT_ENV, text)


def shared_keys() -> frozenset[str]:
    """The dotted keys of the :func:`shared_arguments` in force (none outside one)."""
    raw = os.environ.get(SHARED_ARGS_ENV)
    try:
        args = json.loads(raw) if raw else []
    except ValueError:
        args = []
    return user_set_keys(args) if isinstance(args, list) and args else frozenset()


RUN_KEYS_ENV = "TAOSR_RUN_KEYS"


def _run_keys(argv: list[str], expanded: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The keys the user set and those of them shared by a multi-run command, computed once per command
    from the arguments as given (after the strict read of each file). They travel in the environment to
    the ranks Lightning's DDP launcher starts, which get the expanded arguments (a layered config as YAML
    text, where every key would read as the user's)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(expanded).encode()).hexdigest()
    try:
        saved = json.loads(os.environ.get(RUN_KEYS_ENV) or "{}")
    except ValueError:
        saved = {}
    if isinstance(saved, dict) and saved.get("argv") == digest:
        return frozenset(saved.get("user") or ()), frozenset(saved.get("shared") or ())
    user, shared = user_set_keys(argv), shared_keys()
    os.environ[RUN_KEYS_ENV] = json.dumps({"argv": digest, "user": sorted(user), "shared": sorted(shared)})
    return user, shared


def _program() -> str:
    """The path of the running ``taosr`` script (a DDP rank is started as ``python <it> fit ...``)."""
    here = sys.argv[0] if sys.argv else ""
    if os.path.basename(here).startswith("taosr") and os.path.isfile(here):
        return here
    return shutil.which("taosr") or "taosr"


LIGHTNING_NOISE = "💡 Tip: For seamless cloud logging"  # an advertisement Lightning logs at every fit and test


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Keep two lines out of every run's log that say nothing about the run: Lightning's tip to
    install its cloud logger, and torch 2.13's FutureWarning about the ``LeafSpec`` that Lightning's
    own data loader code builds (Lightning's to change; harmless). Idempotent."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningNoise) for f in log.filters):
        log.addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def lightning_main(argv: list[str], build_only: bool = False) -> None:
    """Run one LightningCLI command (``argv`` starts with the subcommand). ``build_only``: parse it,
    run taosr's setting checks and build the data module, the module (its constructor's checks; the
    weights load at setup) and the trainer (Lightning's checks of its settings), then stop."""
    inputs = tuple(os.path.realpath(p) for p in config_paths(argv))  # before layered files become YAML text
    expanded = expand_config_args(argv)
    keys_before = os.environ.get(RUN_KEYS_ENV)
    user, shared = _run_keys(argv, expanded)
    argv = expanded
    TaosrCLI, RunConfig = _make_cli_classes()
    RunConfig.inputs = inputs
    TaosrCLI.user_keys, TaosrCLI.shared_keys = user, shared
    TaosrCLI.build_only = build_only
    RunConfig.user_keys = user - shared  # a re-run of the saved config is one run: the tool's shared keys are not its

    # every method imported, so --model DPOModule (and --model.help SRPOModule) resolve by their short names
    from taosr.methods import dpo, grm, grpo, sft, srpo  # noqa: F401
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.methods.base import RelevanceModule

    quiet_lightning()
    # LightningCLI reads sys.argv (passing args= too triggers a warning). Lightning's DDP launcher
    # restarts `python <argv[0]> ...` for the other ranks, so the console script's path is kept.
    sys.argv = [_program(), *argv]
    try:
        TaosrCLI(
            RelevanceModule,
            RelevanceDataModule,
            subclass_mode_model=True,
            # no abbreviations: `--trainer.max_step 2` was taken as max_steps (and a re-run spelled right then
            # read as other settings by taosr compare)
            parser_kwargs={"parser_mode": "omegaconf", "default_env": False, "exit_on_error": False, "allow_abbrev": False,
                           **{sub: {"allow_abbrev": False} for sub in LIGHTNING_COMMANDS}},
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            # the modules' configure_optimizers decide (model.init_args.lr / scheduler): LightningCLI's own
            # --optimizer made an empty parameter list, and its --lr_scheduler was silently ignored
            auto_configure_optimizers=False,
        )
    finally:
        _finish_wandb_run()
        if keys_before is None:  # the next command of this process computes its own
            os.environ.pop(RUN_KEYS_ENV, None)
        else:
            os.environ[RUN_KEYS_ENV] = keys_before


def _finish_wandb_run() -> None:
    """Close this command's W&B run: Lightning's WandbLogger reuses an active run, so without this
    every later stage of an in-process pipeline (quickstart, tests) would log into the first one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _option_for_value(argv: list[str], value: str) -> str | None:
    """The command-line option whose value is ``value`` (the last one wins, as in the parser)."""
    found = None
    for i, a in enumerate(argv):
        if a.startswith("--") and "=" in a and a.split("=", 1)[1] == value:
            found = a.split("=", 1)[0]
        elif a.startswith("--") and i + 1 < len(argv) and argv[i + 1] == value:
            found = a
    return found


def _nested_key_error(lines: list[str], argv: list[str]) -> str | None:
    """The full dotted key and innermost cause of a report about a nested option (jsonargparse names
    only the top group: ``Parser key "model": Expected a <class 'float'>``), or None."""
    keys = [m.group(1) for ln in lines if (m := re.match(r'Parser key "([^"]+)"', ln))]
    bad = next((m.group(1) for ln in lines if (m := re.search(r"Option '([^']+)' is not accepted", ln))), None)
    nested = next((m for ln in reversed(lines) if (m := re.search(r"NestedArg\(key='([^']+)', val='(.*)'\)", ln))), None)
    if len(keys) < 2 and bad is None and nested is None:
        return None
    causes = [ln for ln in lines if re.search(r"not accepted|Expected a <class '(?!NoneType)", ln)]
    cause = causes[0] if causes else lines[-1]
    cls = next((m.group(1) for ln in lines if (m := re.search(r"given class_path '[\w.]*?(\w+Module)'", ln))), None)
    helps = f"taosr fit --model.help {cls} lists its options" if cls else "taosr fit --help lists every option"
    if nested is not None:  # from the command line: name the option as it was typed
        sub, val = nested.group(1), nested.group(2)
        for i, a in enumerate(argv):
            name, _, inline = a.partition("=")
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
            if name.startswith("--") and name.endswith("." + sub) and value == val:
                return f"{name}: {cause.split('. Got value')[0]}, got {val!r} ({helps})"
    path = [keys[0], "init_args", *keys[1:]] if keys and keys[0] == "model" else keys
    if bad is not None and (not path or path[-1] != bad):
        path.append(bad)
    return f"{'.'.join(path)}: {cause} (a nested key of a --config file or a JSON value; {helps})"


def _union_error(lines: list[str], argv: list[str]) -> str | None:
    """A value no type of a union option takes (``seed_everything: bool | int``): jsonargparse reports
    the first type only (``Expected a <class 'bool'>`` for ``--seed_everything 0.5``); name them all."""
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    subtypes = next((ln for ln in lines if ln.startswith("Subtypes:")), None)
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), None)
    if key is None or subtypes is None or given is None or not any("Union subtypes" in ln for ln in lines):
        return None
    kinds = [k for k in re.findall(r"<class '([\w.]+)'>", subtypes) if k != "NoneType"]
    what = " or ".join(k.rsplit(".", 1)[-1] for k in kinds) or "another type"
    option = _option_for_value(argv, given)
    where = f"option {option}; " if option else ""
    return f'Parser key "{key.group(1)}": expected {what}, got {given!r} ({where}taosr fit --help lists every option)'


def condense_config_error(message: str, argv: list[str] | None = None) -> str:
    """One line from jsonargparse's multi-line report: the key it names and the most specific cause."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "invalid configuration"
    interp = next((ln for ln in lines if "Interpolation key" in ln), None)
    if interp is not None:
        return f"{interp[interp.index('Interpolation key'):].split(': full_key')[0]}: {INTERPOLATION_SCOPE}"
    nested = _nested_key_error(lines, argv or [])
    if nested is not None:
        return nested
    union = _union_error(lines, argv or [])
    if union is not None:
        return union
    head = lines[0].rstrip(":")
    causes = [ln for ln in lines[1:] if re.search(r"not accepted|unrecognized|does not exist|not a valid|unable to|"
                                                  r"expected|invalid|no such|not found|must be", ln, re.I)
              and "NoneType" not in ln]
    cause = causes[0] if causes else (lines[1] if len(lines) > 1 else "")
    got = re.search(r"Got value: (.+)$", cause or head)
    option = _option_for_value(argv or [], got.group(1).strip()) if got else None
    if option:  # name the option itself ("--model.init_args.lr"), not its top-level group ("model")
        kind = re.search(r"Expected a <class '(\w+)'>", cause or head)
        what = f"expected {kind.group(1)}" if kind else (cause or head)
        key = option.lstrip("-")
        return f'Parser key "{key}": {what}, got {got.group(1).strip()!r} (option {option}; taosr fit --help lists every option)'
    text = f"{head}: {cause}" if cause and cause != head else head
    return f"{text} (taosr fit --help lists every option)"


RESUME_HINT_ENV = "TAOSR_RESUME_HINT"  # how to continue, said by a command that runs this one (compare, sweep)


def _interrupted_note(argv: list[str]) -> str:
    by = os.environ.get(RESUME_HINT_ENV)
    if argv and argv[0] != "fit":  # a test / validate / predict keeps no checkpoint: it is run again
        return f"interrupted; {by or 'run the same command again'}"
    root = None
    for i, a in enumerate(argv):
        if a == "--trainer.default_root_dir" and i + 1 < len(argv):
            root = argv[i + 1]
    hint = ""
    if root:  # what a resume will start from: the step reached, or (a multi-process run stopped by one
        # rank's error, taosr.callbacks.ranks) the last periodic save, or nothing yet
        path = os.path.join(root, "checkpoints", "last.ckpt")
        try:
            hint = f" (checkpoint: {path}, step {load_checkpoint_meta(path)['global_step']})"
        except ConfigError:
            hint = f" (no readable {path}: a resume starts from the beginning)"
    return f"interrupted{hint}; {by or 'resume with the same command plus --ckpt_path <run>/checkpoints/last.ckpt'}"


def _taosr_cause(err: BaseException) -> TaosrError | None:
    """The TaosrError behind an exception (jsonargparse re-raises what a module's or callback's
    constructor raised as a ValueError whose cause chain holds it), or None."""
    return find_cause(err, lambda e: isinstance(e, TaosrError))


INTERPOLATION_SCOPE = ("${...} resolves within one config file (its base: files included) and ${oc.env:NAME}; a key "
                       "from another --config file or the command line is not visible there")


def _interpolation_cause(err: BaseException) -> str | None:
    """The first line of an OmegaConf interpolation error behind ``err`` (a ``${...}`` naming a key
    that file does not hold), else None."""
    found = find_cause(err, lambda e: type(e).__module__.startswith("omegaconf") and "Interpolation" in type(e).__name__)
    return str(found).strip().splitlines()[0] if found is not None else None


def parse_error(argv: list[str], build: bool = True) -> str | None:
    """Check a command (``fit ...``) without running it: None when it would start, else its one-line
    error (what ``taosr compare`` and ``taosr sweep`` check before their first run). The command is
    parsed, taosr's setting checks run, and (``build``) the data module, the module and the trainer
    are built (:func:`lightning_main` ``build_only``): a value their constructors refuse
    (``data.batch_size -4``, an examiner weight outside its mode, a missing GRM export, a trainer
    setting Lightning refuses) is found here, not hours into an overnight comparison. What needs the
    weights or the data (setup) is not checked. ``build=False`` parses only (``--print_config``): for
    a dry run, whose inputs may not exist yet."""
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_lightning(argv, build_only=True) if build else run_lightning([*argv, "--print_config"])
    if not rc and not build:  # --print_config stops before the run's own check of settings it would not read
        import yaml

        from taosr.setting_checks import check_unread_settings

        try:
            cfg = yaml.safe_load(out.getvalue())
            check_unread_settings(argv[0] if argv else "", cfg if isinstance(cfg, dict) else {},
                                  user_set_keys(argv), shared_keys(), warn=lambda note: None)
        except (ConfigError, yaml.YAMLError) as e:
            return str(e).splitlines()[0] if isinstance(e, ConfigError) else None
    if not rc:
        return None
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return lines[-1].removeprefix("taosr: error: ") if lines else f"exit {rc}"


# Lightning refuses these with manual optimization (GRPO, SRPO): the taosr options that do the job
MANUAL_OPTIMIZATION_HINTS = {
    "Automatic gradient clipping is not supported": " (GRPO/SRPO clip by norm in their update: "
                                                    "model.init_args.max_grad_norm)",
    "Automatic gradient accumulation is not supported": " (GRPO/SRPO: data.batch_size prompts make one step; "
                                                        "model.init_args.micro_batch_size bounds the completions "
                                                        "in one backward pass)",
}


def run_lightning(argv: list[str], verbose: bool = False, build_only: bool = False) -> int:
    """``argv`` starts with the subcommand; 0 on success, 2 (one line on stderr) on a config error,
    130 when interrupted (Ctrl-C; the checkpoint of the step reached is written first).
    ``build_only``: see :func:`lightning_main`."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        lightning_main(argv, build_only=build_only)
    except argparse.ArgumentError as err:  # jsonargparse: bad key, value or config file
        if verbose:
            raise
        print(f"taosr: error: {condense_config_error(str(err), argv)}", file=sys.stderr)
        return 2
    except TaosrError as err:
        if verbose:
            raise
        print(f"taosr: error: {err}", file=sys.stderr)
        return 2
    except MisconfigurationException as err:  # Lightning's own check of a setting (one line)
        if verbose:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid trainer setting"
        hint = next((h for needle, h in MANUAL_OPTIMIZATION_HINTS.items() if needle in first), "")
        print(f"taosr: error: {first}{hint}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a checkpoint whose weights do not fit the configured model
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), None)
        if first is None or verbose:
            raise
        print(f"taosr: error: --ckpt_path: the checkpoint's model does not match the configured one ({first[:200]}); "
              "use the model and data settings it was trained with", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:  # jsonargparse wraps errors raised while it builds the classes
        cause = _taosr_cause(err)
        interp = _interpolation_cause(err)
        if interp is not None and not verbose:
            print(f"taosr: error: {interp}: {INTERPOLATION_SCOPE}", file=sys.stderr)
            return 2
        if cause is None or verbose:
            raise
        print(f"taosr: error: {cause}", file=sys.stderr)
        return 2
    except SIGTERMException:  # a SystemExit with no code: it must not read as success
        from taosr.callbacks.ranks import stopped_by_ctrl_c

        if stopped_by_ctrl_c():  # Ctrl-C in a multi-process fit: every rank stopped together (saved)
            print(f"taosr: {_interrupted_note(argv)}", file=sys.stderr)
            return INTERRUPTED
        print(f"taosr: terminated (SIGTERM); {_interrupted_note(argv)}", file=sys.stderr)
        return TERMINATED
    except SystemExit as err:  # Lightning exits 1 after a graceful Ctrl-C shutdown
        if err.code in (0, None):
            return 0
        if err.code == 1:
            print(f"taosr: {_interrupted_note(argv)}", file=sys.stderr)
            return INTERRUPTED
        raise
    return 0
