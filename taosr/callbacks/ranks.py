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
  the others within seconds.
"""
from __future__ import annotations

import signal
import sys

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


class EndRanksOnFailure(pl.Callback):
    """On an exception that only this rank raised, kill the ranks this process started."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        launcher = _started_ranks(trainer) if raised_alone(trainer, exception) else None
        if launcher is None:
            return
        alive = [p.pid for p in launcher.procs if p.poll() is None]
        if alive:
            print(f"taosr: {type(exception).__name__} on rank {trainer.global_rank}: ending the other ranks "
                  f"(pids {', '.join(map(str, alive))})", file=sys.stderr)
            launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))
