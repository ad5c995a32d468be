"""A callback for tests/test_ddp.py that makes one rank of a DDP run fail at step 2 while the other
is busy there (sleeping outside any collective): ``--trainer.callbacks+=tests.ddp_faults.FailOneRank``
with ``TAOSR_FAIL_RANK`` (the failing rank), ``TAOSR_BUSY_SECONDS`` and ``TAOSR_FAULT`` (``raise``: an
error; ``sigterm`` / ``sigint``: the failing rank sends itself SIGTERM / SIGINT, the others are not
busy; ``sigint_group``: it sends SIGINT to the run's process group, as a terminal's Ctrl-C does;
``sigint_twice``: that, twice) in the environment."""
import os
import signal
import time

import lightning.pytorch as pl


class FailOneRank(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != 2 or getattr(self, "_done", False):
            return
        self._done = True
        mine = trainer.global_rank == int(os.environ["TAOSR_FAIL_RANK"])
        fault = os.environ.get("TAOSR_FAULT", "raise")
        if fault == "none":
            return
        if fault != "raise":
            if mine and fault in ("sigterm", "sigint"):
                os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGINT)
            elif mine:
                for _ in range(2 if fault == "sigint_twice" else 1):
                    os.killpg(os.getpgid(0), signal.SIGINT)
                    time.sleep(0.5)
            return
        if mine:
            raise RuntimeError(f"injected failure on rank {trainer.global_rank}")
        time.sleep(float(os.environ["TAOSR_BUSY_SECONDS"]))
