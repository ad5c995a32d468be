"""RewardModelCallback: scores the rollouts the RolloutCallback attached, before ``training_step``.

Outcome reward for every completion (label correct, format valid). When the module asks for
step rewards (SRPO), the hybrid examiner scores every step as well (see :mod:`taosr.rl.examiner`).
"""
from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

from taosr.reasoning.format import parse_reasoning
from taosr.rl.rewards import OutcomeRewardSpec, outcome_rewards


class RewardModelCallback(pl.Callback):
    def __init__(self, outcome: OutcomeRewardSpec | None = None):
        self.outcome = outcome or OutcomeRewardSpec()

    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        r = batch.get("rollout")
        if r is None:
            raise RuntimeError("RewardModelCallback needs rollouts: list RolloutCallback before it in trainer.callbacks")
        t0 = time.perf_counter()
        rows = trainer.datamodule.train_rows_cache
        examples = [rows[int(i)] for i in r["example_index"].tolist()]
        parsed = [parse_reasoning(t) for t in r["texts"]]
        out = outcome_rewards(parsed, [ex.label for ex in examples], self.outcome)
        dev = r["completion_ids"].device
        r["parsed"], r["examples"] = parsed, examples
        r.update({k: v.to(dev) for k, v in out.items()})
        if getattr(pl_module, "needs_step_rewards", False):
            pl_module.score_steps(r)
        r["timing_s/reward"] = time.perf_counter() - t0
