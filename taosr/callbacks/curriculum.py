"""CurriculumCallback: advances the DataModule's curriculum stage by step count or metric.

Steps are global steps: in GRPO/SRPO one rollout batch, whatever ``num_iterations`` is."""
from __future__ import annotations

import lightning.pytorch as pl


class CurriculumCallback(pl.Callback):
    def _maybe_advance(self, trainer, pl_module) -> None:
        cur = getattr(trainer.datamodule, "curriculum", None)
        if cur is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        # rank 0 decides (validation metrics are logged there only): every rank's sampler must filter alike
        if trainer.strategy.broadcast(cur.should_advance(trainer.global_step, metrics), src=0):
            cur.advance(trainer.global_step)
            print(f"taosr: curriculum advanced to stage {cur.stage} at step {trainer.global_step}")
        pl_module.log("curriculum/stage", float(cur.stage), batch_size=1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_advance(trainer, pl_module)
