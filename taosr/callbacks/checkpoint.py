"""ModelCheckpoint that also writes ``last.ckpt`` when training ends, so `taosr test --ckpt_path
<run>/checkpoints/last.ckpt` works whatever the step interval was."""
from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self.dirpath and not trainer.sanity_checking:
            trainer.save_checkpoint(os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"))
