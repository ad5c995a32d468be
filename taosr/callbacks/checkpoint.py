"""ModelCheckpoint for resumable runs.

- ``last.ckpt`` is also written when training ends, so `taosr test --ckpt_path
  <run>/checkpoints/last.ckpt` works whatever the step interval was;
- on an exception or Ctrl-C during fit (``save_on_exception``, on by default) ``last.ckpt`` is
  written at the step reached, so nothing since the last periodic save is lost; resuming from it
  with ``--ckpt_path`` continues at the same step, optimizer state and data position (with
  ``accumulate_grad_batches > 1``, an interrupt inside a window of accumulated batches rewinds to
  the window's first batch: the gradients of the batches before it are not in the checkpoint). A
  multi-process run (DDP) saves on an exception only on SIGTERM or a first Ctrl-C, which stop every
  rank together after the step they are in: the save needs every rank (:mod:`taosr.callbacks.ranks`);
- the random number generators' states (torch CPU/CUDA, numpy, random) are saved and restored
  (single process): rollouts, sampling and dropout continue as the uninterrupted run would. The
  on-exception checkpoint keeps the states of the start of the interrupted step, whose update it
  does not contain (or, interrupted between steps, e.g. in a validation, those right after the
  last finished step). Between a saved step and the next one the uninterrupted run may make
  draws the resumed run does not: a validation that Lightning runs after the step (its
  DataLoader iterator draws a base seed from the global torch generator; a resume does not
  repeat it) and, when the resume starts a new epoch, that epoch's training iterator (the resumed
  run's is made before the restore; a curriculum can end an epoch early, which Lightning only
  learns at the next fetch). The checkpoint counts the first (``rng_draws_after``), the restore
  sees the second (the first step it restores at is its epoch's first), and makes them, so the
  resume is bit-identical there too; a validation that samples (``eval_generation.do_sample``)
  draws more than that and is not replayed;
- every checkpoint is written under a temporary name and renamed: a crash while saving never leaves
  a truncated ``last.ckpt`` in place of the previous one. It is written straight beside its target
  (:class:`DirectCheckpointIO`: Lightning's atomic save held the whole checkpoint in memory and
  wrote it through a temporary file in ``$TMPDIR``, so a small /tmp failed the first save); a
  full disk removes the partial file and ends the run with one line, the previous ``last.ckpt`` kept;
- under manual optimisation (GRPO, SRPO) a periodic checkpoint holds the weights *after* the step's
  update, which is what a resume needs (it continues with the next rollout batch); Lightning's
  warning that it could hold the pre-update weights instead is silenced.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
import warnings
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from taosr.callbacks.ranks import raised_alone
from taosr.errors import TaosrError, find_cause


def _ignore_sigint():
    """SIGINT ignored; the handler it had (None off the main thread, where it cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    return signal.SIG_DFL if previous is None else previous  # None: a handler not set from Python


class DiskFull(TaosrError):
    """A checkpoint that did not fit on its disk (the partial file is removed, the previous one kept)."""


def _disk_full(err: BaseException | None) -> bool:
    """An ENOSPC OSError, itself or behind ``err`` (torch's zip writer reports it as a RuntimeError
    "unexpected pos" whose context is the OSError)."""
    return find_cause(err, lambda e: isinstance(e, OSError) and e.errno == errno.ENOSPC) is not None


class DirectCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temporary file beside the target, fsync, rename. Lightning's
    atomic save serialises the whole checkpoint into memory first and writes it through a temporary
    file in ``$TMPDIR`` (fsspec's transaction) before moving it: twice the checkpoint's size in
    memory and in /tmp. Remote paths (``s3://`` ...) keep Lightning's way."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = str(path)
        if storage_options is not None or "://" in path:
            return super().save_checkpoint(checkpoint, path, storage_options)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.part{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            try:
                os.remove(tmp)
            except OSError:
                pass
            if _disk_full(err):
                free = shutil.disk_usage(folder).free
                raise DiskFull(f"checkpoint {path}: no space left on its disk ({free / 2**20:.0f} MiB free after "
                               "removing the partial file); the previous checkpoint is kept: free space and resume "
                               "with --ckpt_path") from None
            raise


def _collect_rng_states() -> dict[str, Any]:
    """Generator states as tensors, ints and lists only, so ``torch.load(weights_only=True)`` reads them."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        set_cuda_rng_states(states["cuda"])


def set_cuda_rng_states(states: list) -> None:
    """Restore saved per-GPU generator states onto the GPUs this process sees: a resume may see
    fewer (``taosr compare --jobs`` gives each worker one), where ``set_rng_state_all`` fails."""
    for i, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, i)


def _validation_follows(trainer) -> bool:
    """Whether Lightning validates right after the training step that just ended, by its own rule
    (``_should_check_val_fx``, checked before its validation runs), on a validation set with batches
    (an empty one makes no DataLoader iterator). False where the rule cannot be read."""
    try:
        loop = trainer.fit_loop.epoch_loop
        if getattr(loop, "_skip_next_val", False) or not loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return False
        return sum(int(n) for n in (trainer.num_val_batches or [])) > 0
    except (AttributeError, TypeError, AssertionError):
        return False


def _as_saved_after_last_step(checkpoint: dict[str, Any], kept: int | None = None) -> None:
    """An exception inside a step leaves Lightning's batch counters part-way (the batch is
    ``ready``/``started`` but not ``processed``), a state Lightning's restore does not expect: it rolls
    back the epoch's counters but not the totals (``total.ready``, whence ``total_batch_idx``: a
    ``val_check_interval`` validation one batch early) and adds one to ``_batches_that_stepped``
    (logged steps one late). Written instead as a checkpoint of the last finished step's
    ``on_train_batch_end`` (processed, not completed), which Lightning restores exactly; the RNG
    state is the interrupted step's start, and its data position ``current.processed``, as before.

    ``kept``: the epoch's batches to keep (default: all finished ones). With gradient accumulation
    an interrupt inside a window rewinds to the window's first batch (``kept``, a window boundary):
    the gradients of its finished batches are not in the checkpoint, so those batches are redone."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop or "epoch_loop.batch_progress" not in loop:
        return
    bp = loop["epoch_loop.batch_progress"]
    back = 0 if kept is None else max(0, bp["current"]["processed"] - kept)
    for part in ("total", "current"):
        done = bp[part]["processed"] - back
        bp[part].update(ready=done, started=done, processed=done, completed=done - 1)
    bp["is_last_batch"] = False
    # the totals of the optimizer steps are untouched: no step was taken inside the window
    state = loop.get("epoch_loop.state_dict", {})
    if "_batches_that_stepped" in state:
        state["_batches_that_stepped"] -= 1  # Lightning's restore adds one for the (stepping) batch kept last


def _as_saved_inside_the_epoch(checkpoint: dict[str, Any], data_left: bool = True, kept: int | None = None) -> None:
    """A fit stopped inside an epoch (``max_steps``, ``max_time``, ``trainer.should_stop``) ends that
    epoch in Lightning's loop: its epoch-end hooks run and the epoch counts as done, so a resume with
    a larger ``max_steps`` would start the next epoch and never see the rest of this one (with
    ``max_epochs: 1``, SFT's default, it would train nothing). Written instead as the checkpoint of
    the last step's ``on_train_batch_end``, which resumes inside the epoch (``_resume_skip``).

    ``data_left``: the epoch's loader was not exhausted (an epoch a curriculum shortened ends on the
    loader's StopIteration with ``is_last_batch`` still False: that is an end). ``kept``: as in
    :func:`_as_saved_after_last_step`, for a stop inside a window of accumulated batches."""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop or "epoch_progress" not in loop or "epoch_loop.batch_progress" not in loop:
        return
    bp, ep = loop["epoch_loop.batch_progress"], loop["epoch_progress"]
    if not data_left or bp["is_last_batch"] or bp["current"]["processed"] == 0 \
            or ep["current"]["processed"] < ep["current"]["started"]:
        return  # the epoch ran to its end, or none of it ran, or it is still open (Lightning's own form)
    for part in ("total", "current"):
        ep[part]["processed"] = ep[part]["completed"] = ep[part]["started"] - 1
    checkpoint["epoch"] = ep["current"]["completed"]
    _as_saved_after_last_step(checkpoint, kept)


class _BatchStart(pl.Callback):
    """Runs :class:`Checkpoint`'s batch-start work (RNG restore and snapshot) before every other callback's."""

    def __init__(self, checkpoint: "Checkpoint"):
        self.checkpoint = checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.checkpoint._batch_start(trainer, batch_idx)


class Checkpoint(ModelCheckpoint):
    def __init__(self, *args, save_on_exception: bool = True, enable_version_counter: bool = False, **kwargs):
        # no version counter: a re-run into the same folder replaces last.ckpt instead of adding a full-size
        # last-v1.ckpt, last-v2.ckpt ... beside it (the resume command names last.ckpt)
        super().__init__(*args, save_on_exception=save_on_exception, enable_version_counter=enable_version_counter,
                         **kwargs)
        self._rng_at_step_start: dict | None = None
        self._rng_after_step: dict | None = None
        self._in_step = False
        self._mid_window = False         # the last finished batch accumulated its gradients without stepping
        self._window_done: int | None = None  # the epoch's batches finished before the open step's first one
        self._window_step: int | None = None  # the global step when that window opened
        self._val_draws = 0              # validation iterators made between the last step and the next
        self._saving_on_exception = False
        self._pending: tuple[dict, bool, int] | None = None  # loaded (rng states, after a step, draws)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = DirectCheckpointIO()
        # Lightning runs checkpoint callbacks last (_reorder_callbacks), so our on_train_batch_start
        # would come after the RolloutCallback's, which samples with the global generator: the
        # restore would follow the resumed run's first rollout and the step-start snapshot would
        # hold the state after the rollout. A plain callback placed first does this work instead
        # (a new list: Lightning is iterating the current one).
        if not any(isinstance(c, _BatchStart) and c.checkpoint is self for c in trainer.callbacks):
            trainer.callbacks = [_BatchStart(self), *trainer.callbacks]

    def _batch_start(self, trainer, batch_idx: int) -> None:
        if self._pending is not None:
            # restored here, not on load: this epoch's DataLoader iterator, made before the restore,
            # drew its base seed from the global generator; the uninterrupted run made that draw only
            # if this epoch began after the saved step (this is its first batch), and then it comes
            # after the saved state: replayed below with the validations' draws
            rng, after_step, draws = self._pending
            _set_rng_states(rng)
            for _ in range(draws + int(after_step and batch_idx == 0)):  # a DataLoader iterator's base-seed
                torch.empty((), dtype=torch.int64).random_()                # draw, as torch makes it
            self._pending = None
        self._in_step = True
        if self.save_on_exception and trainer.world_size == 1:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1  # the epoch's batches before this one
            if done % trainer.accumulate_grad_batches == 0 or self._window_done is None:
                # the first batch of an optimizer step (of a window of accumulated batches): an interrupt
                # before the step is taken restarts here
                self._rng_at_step_start, self._window_done = _collect_rng_states(), done
                self._window_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step = False
        # with gradient accumulation, a batch that did not step leaves its window open
        self._mid_window = (trainer.world_size == 1 and trainer.accumulate_grad_batches > 1
                            and trainer.fit_loop.epoch_loop._should_accumulate())
        self._val_draws = int(_validation_follows(trainer))
        if trainer.world_size == 1:
            self._rng_after_step = _collect_rng_states()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._pending is not None:  # saved after a resume's restore, before its first batch applied the
            rng, after, draws = self._pending  # loaded states: keep them (the process's own are not the run's)
            state.update(rng_states=rng, rng_after_step=after, rng_draws_after=draws)
            return state
        after = not (self._saving_on_exception and self._redo)
        if after:  # after a step (periodic, final, or an interrupt between steps): the state it left
            rng, draws = self._rng_after_step or _collect_rng_states(), self._val_draws
        else:  # interrupted in a step: it is redone from its start
            rng, draws = self._rng_at_step_start, 0
        if rng is not None:
            state["rng_states"] = rng
            state["rng_after_step"] = after
            state["rng_draws_after"] = draws
        return state

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_on_exception and self._redo:
            # rewound to the window's first batch only while its optimizer step is still to come (an
            # interrupt after the step, e.g. in another callback's on_train_batch_end, keeps the batch)
            stepped = trainer.global_step != self._window_step
            _as_saved_after_last_step(checkpoint, kept=None if stepped else self._window_done)
        else:
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            _as_saved_inside_the_epoch(checkpoint, data_left=not getattr(fetcher, "done", False),
                                       kept=self._window_done if self._mid_window else None)

    @property
    def _redo(self) -> bool:
        """Interrupted inside an optimizer step (a batch, or a window of accumulated ones): the
        checkpoint is of its start, which a resume redoes."""
        return self._in_step or self._mid_window

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("rng_states", None)
        after_step, draws = bool(state_dict.pop("rng_after_step", False)), int(state_dict.pop("rng_draws_after", 0))
        super().load_state_dict(state_dict)
        if rng is not None and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            self._pending = (rng, after_step, draws)

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # rank 0 writes; ends with a barrier
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("taosr.Checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Only ``last.ckpt``, only while fitting (Lightning's default also writes a named file)."""
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn != TrainerFn.FITTING or not self.dirpath or not self._should_save_on_exception(trainer) \
                or isinstance(exception, DiskFull):  # the disk is full: another save would fail the same way
            return
        if raised_alone(trainer, exception):
            # the save ends with a barrier the other ranks, inside their step, never reach (taosr.callbacks.ranks)
            saved = self._last_checkpoint_saved or (self.last_path if os.path.exists(self.last_path) else "none")
            print(f"taosr: {type(exception).__name__} on rank {trainer.global_rank} of {trainer.world_size}: no "
                  f"last.ckpt at step {trainer.global_step} (a multi-process run saves on an exception only when "
                  f"SIGTERM or a first Ctrl-C stops every rank); the last checkpoint saved: {saved}", file=sys.stderr)
            return
        self._saving_on_exception = True
        # a Ctrl-C during the save (one process) must not cut it short: Lightning ignores one after its own
        # Ctrl-C, not after SIGTERM, and `taosr compare` sends one to every worker when one of them stopped
        previous = _ignore_sigint() if trainer.world_size == 1 else None
        try:
            self._save_checkpoint(trainer, self.last_path)
        finally:
            self._saving_on_exception = False
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        rank_zero_info(f"taosr: {type(exception).__name__} at step {trainer.global_step}: saved {self.last_path}")

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath and not trainer.sanity_checking:
            self._save_checkpoint(trainer, self.last_path)
