"""Loggers: W&B by default, offline automatically when no credentials are configured.

``AutoWandbLogger`` never prompts and never blocks: without ``WANDB_API_KEY`` (or a netrc entry
for the W&B host) it runs offline and writes under ``save_dir/wandb`` (sync later with
``wandb sync``). ``save_dir`` unset (None, the default) is the run folder: the launcher fills in
``trainer.default_root_dir`` (:func:`taosr.launcher._fill_run_paths`), so each run logs into its own
folder; ``runs`` where there is none (the logger built outside a command). A ``save_dir`` the user
gives, ``runs`` and ``.`` included, is used as given. Any Lightning logger (CSVLogger, TensorBoardLogger) can be chosen instead in
the config's ``trainer.logger``. ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE`` and ``TAOSR_RUN_NAME``
in the environment set the run's group, job type and name.

A fit writes its W&B run id to ``<run>/wandb-run.json`` (:func:`store_run_id`); a fit that resumes
from a checkpoint in the same run folder logs on into that run (:func:`stored_run_id`, Lightning's
``resume="allow"``) instead of starting a second one of the same name. Offline, each leg writes its
own ``offline-run-*`` folder under the same id, and ``wandb sync`` uploads the legs of one id into
one run, in order of their start.
"""
from __future__ import annotations

import json
import netrc
import os

from lightning.pytorch.loggers import WandbLogger

RUN_NAME_ENV = "TAOSR_RUN_NAME"  # the W&B run name, over the config's (set by `taosr compare` per command)
RUN_ID_FILE = "wandb-run.json"  # in the run folder: the W&B run a resumed fit logs on into


def stored_run_id(run_dir: str) -> str | None:
    """The W&B run id a fit in ``run_dir`` logged to, or None (no file, or one that is not ours)."""
    try:
        with open(os.path.join(run_dir, RUN_ID_FILE), encoding="utf-8") as fh:
            run_id = json.load(fh).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def store_run_id(run_dir: str, run_id: str, project: str | None) -> None:
    """Record the W&B run of the fit in ``run_dir`` (written to a temporary name and renamed)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_ID_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"id": run_id, "project": project}, fh)
    os.replace(tmp, path)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    def __init__(self, project: str = "taosr", name: str | None = None, save_dir: str | None = None,
                 offline: bool | None = None, group: str | None = None, tags: list[str] | None = None,
                 **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled") or not wandb_credentials_present()
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        if offline:
            os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE") if os.environ.get("WANDB_MODE") in ("offline", "disabled") else "offline"
        save_dir = save_dir or "runs"
        os.makedirs(save_dir, exist_ok=True)
        # the environment's group, job type and run name, read now and passed on: wandb reads its
        # environment once per process, and `taosr compare` runs every fit and evaluation of a
        # comparison in one process unless --jobs (each with its own WANDB_JOB_TYPE, TAOSR_RUN_NAME)
        group = group or os.environ.get("WANDB_RUN_GROUP") or None
        if not kwargs.get("job_type") and os.environ.get("WANDB_JOB_TYPE"):
            kwargs["job_type"] = os.environ["WANDB_JOB_TYPE"]
        name = os.environ.get(RUN_NAME_ENV) or name
        super().__init__(project=project, name=name, save_dir=save_dir, offline=offline, group=group,
                         tags=tags, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None on; wandb warns at every run
            self._wandb_init.pop("anonymous", None)    # that the setting has no effect
