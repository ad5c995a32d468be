"""RewardModelCallback: scores the Rollout the RolloutCallback attached, before ``training_step``
(step 2 of the order documented in :mod:`taosr.rl.rollout`).

Completions are parsed by the DataModule's training target (``data.target``: the five steps and
the label, or the label line alone). First the outcome reward of every completion (label correct,
format valid); then, when the module
has a step scorer (SRPO: ``pl_module.step_scorer``, a :class:`~taosr.rl.step_scorer.StepScorer`),
the hybrid examiner's step scores (see :mod:`taosr.rl.examiner`) of the rows the module will keep
(``pl_module.examined_rows``).
"""
from __future__ import annotations

import time

import lightning.pytorch as pl

from taosr.reasoning.targets import get_target
from taosr.rl.rewards import OutcomeRewardSpec, outcome_rewards
from taosr.rl.rollout import Rollout


class RewardModelCallback(pl.Callback):
    def __init__(self, outcome: OutcomeRewardSpec | None = None):
        self.outcome = outcome or OutcomeRewardSpec()

    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        r: Rollout | None = batch.get("rollout")
        if r is None:
            raise RuntimeError("RewardModelCallback needs rollouts: list RolloutCallback before it in trainer.callbacks")
        t0 = time.perf_counter()
        rows = trainer.datamodule.train_rows_cache
        r.examples = [rows[int(i)] for i in r.example_index.tolist()]
        parse = get_target(trainer.datamodule.target).parse
        r.parsed = [parse(t) for t in r.texts]
        out = outcome_rewards(r.parsed, [ex.label for ex in r.examples], self.outcome, device=r.device)
        r.reward, r.correct, r.format = out["reward"], out["correct"], out["format"]
        scorer = getattr(pl_module, "step_scorer", None)
        if scorer is not None:  # the rows dynamic sampling keeps (no use examining the others)
            r.steps = scorer(r, pl_module.tokenizer, pl_module.examined_rows(r))
        r.timings["reward"] = time.perf_counter() - t0
