"""Progress as plain lines for output that is not a terminal (a log file, ``nohup``, a batch job,
``taosr compare``'s worker logs).

Lightning's default bar redraws in place; written to a file it shows nothing until the command ends,
so a SmolLM2 fit on a CPU (an hour) looked hung. :class:`LineProgress` prints one line at most every
``every_s`` seconds instead: the step (of the budget), seconds per step, the time left, and the
loss / reward of the last step; for validation, test and predict loops that run longer than that,
their batch; after each validation, its main metrics. The launcher puts it in place of the bar when
stdout is not a terminal and no progress bar is configured (``trainer.enable_progress_bar: false``
turns both off); ``TAOSR_PROGRESS_SECONDS`` sets the interval. Only global rank 0 prints.
"""
from __future__ import annotations

import math
import os
import sys
import time

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from taosr.configfiles import as_list
from taosr.errors import ConfigError

# shown after the timing when logged (the methods' own names: W&B and the CSV logs use them too)
LINE_METRICS = ("train/loss", "train/reward", "train/rewards/correct/mean", "train/rewards/format/mean")
VALIDATION_METRICS = ("val/macro_f1", "val/accuracy", "val/format_error_rate", "val/grm/verdict_accuracy",
                      "val/grm/auroc")


def duration(seconds: float) -> str:
    """``53m40s``, ``2h05m``, ``12s``: whole seconds, the two largest units."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def number(v: float) -> str:
    return "nan" if v != v else f"{v:.4g}"


def progress_line(what: str, unit: str, done: int, total: float | None, elapsed: float,
                  counted: int, metrics: dict[str, float] | None = None) -> str:
    """One line: ``what unit done/total (pct), rate s/unit, ETA; metrics``. ``counted`` is how many
    units ``elapsed`` seconds covered (a resumed fit starts counting where it resumed); the rate and
    the time left come from them. ``total`` None or infinite: no share and no time left."""
    known = total is not None and math.isfinite(total) and total > 0
    head = f"{what} {unit} {done}/{int(total)} ({100.0 * done / total:.0f}%)" if known else f"{what} {unit} {done}"
    parts = [head]
    if counted > 0:
        rate = elapsed / counted
        parts.append(f"{rate:.3g} s/{unit}")
        if known:
            parts.append(f"{duration(rate * max(0, total - done))} left")
    line = ", ".join(parts)
    shown = [f"{k} {number(v)}" for k, v in (metrics or {}).items()]
    return line + ("; " + ", ".join(shown) if shown else "")


def env_interval(default: float = 30.0) -> float:
    """``TAOSR_PROGRESS_SECONDS`` (a number >= 0; 0 prints every step), else ``default``."""
    raw = os.environ.get("TAOSR_PROGRESS_SECONDS")
    if raw is None or raw.strip() == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise ConfigError(f"TAOSR_PROGRESS_SECONDS: must be a number of seconds >= 0, got {raw!r}")
    return v


class LineProgress(ProgressBar):
    """Plain progress lines (see the module). ``every_s``: the least seconds between two lines of
    one loop (None: ``TAOSR_PROGRESS_SECONDS``, else 30)."""

    def __init__(self, every_s: float | None = None, stream=None) -> None:
        super().__init__()
        self.every_s = env_interval() if every_s is None else float(every_s)
        if not self.every_s >= 0:
            raise ConfigError(f"LineProgress: every_s must be >= 0, got {every_s!r}")
        self._stream = stream
        self._enabled = True
        self._loop: dict[str, dict[str, float]] = {}

    # Lightning's ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _say(self, line: str) -> None:
        if self._enabled:
            print(f"taosr: {line}", file=self._stream or sys.stdout, flush=True)

    def _start(self, key: str, first: int) -> None:
        now = time.perf_counter()
        self._loop[key] = {"t0": now, "said": now, "first": first}

    def _due(self, key: str) -> bool:
        st = self._loop.get(key)
        return st is not None and time.perf_counter() - st["said"] >= self.every_s

    def _report(self, key: str, what: str, unit: str, done: int, total, metrics=None) -> None:
        st = self._loop[key]
        now = time.perf_counter()
        self._say(progress_line(what, unit, done, total, now - st["t0"], done - st["first"], metrics))
        st["said"] = now

    def _train_total(self, trainer) -> float | None:
        """Lightning's estimate (the fewer of ``max_steps`` and the epochs' steps), else ``max_steps``."""
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - no estimate (an iterable without a length)
            return float(trainer.max_steps) if trainer.max_steps is not None and trainer.max_steps > 0 else None

    def _shown(self, trainer, keys) -> dict[str, float]:
        """The logged values of ``keys``; with several dataloaders Lightning suffixes each
        (``val/macro_f1/dataloader_idx_1``): those are shown under their full names."""
        got = {}
        for k in keys:
            for name, v in trainer.callback_metrics.items():
                if (name == k or name.startswith(k + "/dataloader_idx_")) and getattr(v, "numel", lambda: 1)() == 1:
                    got[name] = float(v)
        return got

    def on_train_start(self, trainer, pl_module) -> None:
        self._start("train", trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due("train"):
            self._report("train", "fit", "step", trainer.global_step, self._train_total(trainer),
                         self._shown(trainer, LINE_METRICS))

    def on_train_end(self, trainer, pl_module) -> None:
        st = self._loop.pop("train", None)
        if st is not None:
            n = trainer.global_step - st["first"]
            self._say(f"fit ended at step {trainer.global_step}: {n} steps in "
                      f"{duration(time.perf_counter() - st['t0'])}")

    def _eval_start(self, key: str) -> None:
        self._start(key, 0)
        self._loop[key]["dataloader"] = 0

    def _eval_batch(self, key: str, what: str, batch_idx: int, totals, dataloader_idx: int) -> None:
        st = self._loop.get(key)
        if st is None:
            return
        if dataloader_idx != st["dataloader"]:  # batch_idx restarts with each dataloader: so does the rate
            st.update(t0=time.perf_counter(), dataloader=dataloader_idx)
        if self._due(key):
            total = totals[dataloader_idx] if dataloader_idx < len(totals) else None
            self._report(key, what + (f" (dataloader {dataloader_idx})" if dataloader_idx else ""), "batch",
                         batch_idx + 1, total)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._eval_start("validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch("validate", "validation", batch_idx, trainer.num_val_batches, dataloader_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._loop.pop("validate", None) is None:
            return
        shown = self._shown(trainer, VALIDATION_METRICS)
        if shown:
            self._say(f"validation at step {trainer.global_step}: "
                      + ", ".join(f"{k} {number(v)}" for k, v in shown.items()))

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch("test", "test", batch_idx, trainer.num_test_batches, dataloader_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        self._loop.pop("test", None)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start("predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch("predict", "predict", batch_idx, trainer.num_predict_batches, dataloader_idx)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._loop.pop("predict", None)


def wants_lines(trainer_config: dict, stream=None) -> bool:
    """Whether the launcher adds :class:`LineProgress`: the bar is not turned off, no progress bar
    is configured, and ``stream`` (stdout) is not a terminal."""
    if trainer_config.get("enable_progress_bar") is False:
        return False
    if any(isinstance(cb, ProgressBar) for cb in as_list(trainer_config.get("callbacks"))):
        return False
    stream = stream or sys.stdout
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: lines are the safe choice
        return True
