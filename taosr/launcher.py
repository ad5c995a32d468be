"""Run a LightningCLI command (``fit``, ``validate``, ``test``, ``predict``) in this process.

The ``taosr`` command and the quick-start pipeline both call :func:`run_lightning`; it returns the
exit status and turns a bad key, value or config file into one line (exit 2).
"""
from __future__ import annotations

import argparse
import re
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _fill_run_paths(cfg) -> None:
    """Point the logger's save_dir and checkpoint dirpath at ``trainer.default_root_dir`` unless a
    config sets them (OmegaConf resolves ``${trainer.default_root_dir}`` per file, before
    command-line overrides, so interpolating it in YAML would ignore ``--trainer.default_root_dir``)."""
    trainer = cfg.get("trainer")
    root = trainer.get("default_root_dir") if trainer is not None else None
    if not root:
        return
    loggers = trainer.get("logger")
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(lg, "init_args", None) if lg is not None and not isinstance(lg, bool) else None
        if args is not None and "save_dir" in args and args.get("save_dir") in (None, "runs", "."):
            args["save_dir"] = root
    for cb in trainer.get("callbacks") or []:
        args = getattr(cb, "init_args", None)
        if args is not None and "dirpath" in args and args.get("dirpath") is None:
            args["dirpath"] = f"{root}/checkpoints"


def lightning_main(argv: list[str]) -> None:
    from lightning.pytorch.cli import LightningCLI

    class TaosrCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            _fill_run_paths(self.config[self.subcommand] if self.subcommand else self.config)

    from taosr.data.datamodule import RelevanceDataModule
    from taosr.methods.base import RelevanceModule

    sys.argv = ["taosr", *argv]  # LightningCLI reads sys.argv (passing args= too triggers a warning)
    try:
        TaosrCLI(
            RelevanceModule,
            RelevanceDataModule,
            subclass_mode_model=True,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": False, "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )
    finally:
        _finish_wandb_run()


def _finish_wandb_run() -> None:
    """Close this command's W&B run: Lightning's WandbLogger reuses an active run, so without this
    every later stage of an in-process pipeline (quickstart, tests) would log into the first one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def condense_config_error(message: str) -> str:
    """One line from jsonargparse's multi-line report: the key it names and the most specific cause."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(message).splitlines() if ln.strip()]
    if not lines:
        return "invalid configuration"
    head = lines[0].rstrip(":")
    causes = [ln for ln in lines[1:] if re.search(r"not accepted|unrecognized|does not exist|not a valid|unable to|"
                                                  r"expected|invalid|no such|not found|must be", ln, re.I)
              and "NoneType" not in ln]
    cause = causes[0] if causes else (lines[1] if len(lines) > 1 else "")
    text = f"{head}: {cause}" if cause and cause != head else head
    return f"{text} (taosr fit --help lists every option)"


def run_lightning(argv: list[str], verbose: bool = False) -> int:
    """``argv`` starts with the subcommand; 0 on success, 2 (one line on stderr) on a config error."""
    try:
        lightning_main(argv)
    except argparse.ArgumentError as err:  # jsonargparse: bad key, value or config file
        if verbose:
            raise
        print(f"taosr: error: {condense_config_error(str(err))}", file=sys.stderr)
        return 2
    return 0
