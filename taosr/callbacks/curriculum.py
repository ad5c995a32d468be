"""CurriculumCallback: advances the DataModule's curriculum stage by step count or metric.

Steps are global steps: in GRPO/SRPO one rollout batch, whatever ``num_iterations`` is. A stage
with ``until_step: N`` ends before global batch N (N counts from the fit's start, not the stage's:
the first stage trains batches 0..N-1); with ``data.num_workers > 0`` the DataLoader has
drawn indices ahead (its prefetch), so the switch reaches the batches after those."""
from __future__ import annotations

import lightning.pytorch as pl


class CurriculumCallback(pl.Callback):
    advances_curriculum = True  # what the DataModule's view check looks for (data/views.py)

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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # after the step, before the next batch is drawn (the sampler filters lazily): with until_step N
        # batches 0..N-1 are the stage's. At the next batch's start it was one batch late (N+1 batches).
        self._maybe_advance(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._maybe_advance(trainer, pl_module)  # a resumed run at or past a stage's end
