"""A multi-process run (DDP) that fails on one rank ends on every rank.

Lightning stops all ranks together only for SIGTERM: rank 0 forwards it to the other ranks and
every rank raises ``SIGTERMException`` at the same batch boundary, so a checkpoint saved then (which
needs every rank: it ends with a barrier) is safe. Any other exception happens on one rank while
the others are inside a step or a collective. Saving from there (``last.ckpt`` on exception) waits
in a barrier the others never reach, and the run hung for good: measured with 2 CPU processes
(gloo), a rank-0 error at step 2 was still waiting after 10 minutes, SIGTERM included. So:

- :func:`raised_alone` says whether an exception is one rank's only: a multi-process run and not
  the coordinated SIGTERM (the checkpoint callback does not save on those);
- :class:`EndRanksOnFailure` (added to every taosr command) kills the ranks a failing launcher
  process started (Lightning's subprocess launcher: ``taosr fit --trainer.devices N``), as Lightning
  does itself after Ctrl-C. A failing child rank exits, and Lightning's process observer then ends
  the others within seconds;
- :class:`CtrlCStopsEveryRank` (added to every taosr fit) turns Ctrl-C in a multi-process fit into
  that coordinated stop: the first Ctrl-C (a terminal sends it to every rank; ``kill -INT`` of any
  one rank is enough) is only noted, the ranks agree on it at the end of the step they are in (one
  boolean reduced over the ranks per training batch, as Lightning broadcasts one for SIGTERM) and all
  stop there, as for SIGTERM, so
  ``last.ckpt`` holds that step; a second Ctrl-C stops at once, without saving. A single process
  keeps Python's Ctrl-C, which stops at once and saves the step reached (taosr.callbacks.checkpoint).
"""
from __future__ import annotations

import atexit
import signal
import sys
import threading

import lightning.pytorch as pl


def raised_alone(trainer, exception: BaseException) -> bool:
    """Whether ``exception`` stops only this rank of a multi-process run: anything but Lightning's
    coordinated SIGTERM (every rank raises that at the same batch boundary)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return trainer.world_size > 1 and not isinstance(exception, SIGTERMException)


def _started_ranks(trainer):
    """The launcher of the ranks this process started (Lightning's subprocess launcher), or None."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
        return launcher
    return None


def _observer_expects_exits() -> None:
    """Lightning's process observer in the launching process SIGKILLs it as soon as a rank it started
    exits with a non-zero code. After a stop every rank makes together (SIGTERM, Ctrl-C) the ranks
    exit 143 / 130 on their own while this one is still ending (its note, its exit code): the
    observer would cut that short (exit -9, no note). It is told that there is nothing left to watch."""
    for thread in threading.enumerate():
        if thread.name == "child-process-observer" and isinstance(getattr(thread, "_child_processes", None), list):
            thread._child_processes = []  # its next look finds no failed process and it ends


def _reap(procs, wait_seconds: float = 60.0) -> None:
    """At exit: the ranks still running a minute after a stop they all made are killed (not left behind
    holding their devices)."""
    import time

    deadline = time.monotonic() + wait_seconds
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - TimeoutExpired, or a process already gone
            if proc.poll() is None:
                proc.kill()


class EndRanksOnFailure(pl.Callback):
    """On an exception that only this rank raised, kill the ranks this process started; after a stop
    they all made, let them end (this process waits up to a minute for them at exit, then kills them)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        launcher = _started_ranks(trainer)
        if launcher is None:
            return
        if not raised_alone(trainer, exception):  # a stop every rank makes together: they end by themselves
            _observer_expects_exits()
            atexit.register(_reap, list(launcher.procs))
            return
        alive = [p.pid for p in launcher.procs if p.poll() is None]
        if alive:
            print(f"taosr: {type(exception).__name__} on rank {trainer.global_rank}: ending the other ranks "
                  f"(pids {', '.join(map(str, alive))})", file=sys.stderr)
            launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))


_stopped_by_ctrl_c = False


def stopped_by_ctrl_c() -> bool:
    """Whether the coordinated stop of this process's last fit came from Ctrl-C (exit 130), not
    SIGTERM (143): both end as Lightning's ``SIGTERMException``."""
    return _stopped_by_ctrl_c


class CtrlCStopsEveryRank(pl.Callback):
    """Ctrl-C in a multi-process fit: every rank ends the step it is in, then all stop together and
    save ``last.ckpt`` (Lightning's SIGTERM stop); a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self._asked = False
        self._previous = None
        self._installed = False
        self._rank = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        global _stopped_by_ctrl_c
        _stopped_by_ctrl_c = False
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            self._asked = False
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
            self._rank = trainer.global_rank

    def _on_sigint(self, signum, frame) -> None:
        if self._asked:
            self._restore()
            raise KeyboardInterrupt
        self._asked = True
        if self._rank == 0:
            print("taosr: Ctrl-C: every rank stops at the end of this step and saves last.ckpt (Ctrl-C again: stop "
                  "now, without saving)", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank ends every training batch (DDP keeps their steps equal): the one point they all reach
        global _stopped_by_ctrl_c
        if not self._installed:  # not skipped once SIGTERM came in: that may reach the ranks at different batches,
            return                 # and a rank skipping this collective would leave the others waiting in it
        if trainer.strategy.reduce_boolean_decision(self._asked, all=False):
            if self._rank == 0 and not self._asked:
                print("taosr: Ctrl-C on another rank: every rank stops at the end of this step and saves last.ckpt",
                      file=sys.stderr, flush=True)
            _stopped_by_ctrl_c = True
            trainer._signal_connector.received_sigterm = True  # Lightning stops every rank after this batch

    def _restore(self) -> None:
        if self._installed:
            self._installed = False
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
