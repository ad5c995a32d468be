"""A callback for tests/test_ddp.py that makes one rank of a DDP run fail at step 2 while the other
is busy there (sleeping outside any collective): ``--trainer.callbacks+=tests.ddp_faults.FailOneRank``
with ``TAOSR_FAIL_RANK`` (the failing rank), ``TAOSR_BUSY_SECONDS`` and ``TAOSR_FAULT`` (``raise``: an
error; ``sigterm``: the failing rank sends itself SIGTERM, the others are not busy) in the environment."""
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
        if os.environ.get("TAOSR_FAULT", "raise") == "sigterm":
            if mine:
                os.kill(os.getpid(), signal.SIGTERM)
            return
        if mine:
            raise RuntimeError(f"injected failure on rank {trainer.global_rank}")
        time.sleep(float(os.environ["TAOSR_BUSY_SECONDS"]))
