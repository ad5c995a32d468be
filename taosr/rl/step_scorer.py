"""Step scoring for SRPO, called by the reward callback: the offline verifier where a gold
annotation covers a step, the GRM elsewhere (combined by the examiner mode), the examiner's hard
verdicts, and the map from completion tokens to steps."""
from __future__ import annotations

import torch

from taosr.labels import STEP_KEYS
from taosr.reasoning.format import token_step_index
from taosr.reasoning.verifier import verify_steps
from taosr.rl.examiner import ExaminerSpec, combine_step_rewards, examiner_stats, hard_verdicts
from taosr.rl.rollout import Rollout, StepScores


class StepScorer:
    """``scorer(rollout, tokenizer) -> StepScores``. ``grm`` is a loaded
    :class:`~taosr.rl.grm.GRMScorer` or None (verifier only); ``examiner.check()`` has run."""

    def __init__(self, examiner: ExaminerSpec, grm=None):
        self.examiner, self.grm = examiner, grm
        mode = examiner.check()
        if not mode.uses_grm:
            self.grm = None

    def _grm_scores(self, rollout: Rollout) -> torch.Tensor | None:
        if self.grm is None:
            return None
        dev = rollout.device
        if next(self.grm.model.parameters()).device != dev:
            self.grm.model.to(dev)  # the strategy moves the policy after setup; follow it
        return self.grm.score(rollout.examples, rollout.parsed)

    def __call__(self, rollout: Rollout, tokenizer) -> StepScores:
        parsed, examples, dev = rollout.parsed, rollout.examples, rollout.device
        ver = torch.tensor([[float("nan") if v is None else v
                             for v in (verify_steps(p, ex.annotations)[k] for k in STEP_KEYS)]
                            for p, ex in zip(parsed, examples)], dtype=torch.float32, device=dev)
        present = torch.tensor([[k in p.steps for k in STEP_KEYS] for p in parsed], dtype=torch.bool, device=dev)
        grm = self._grm_scores(rollout)
        grm = grm.to(dev) if grm is not None else None
        rewards, source = combine_step_rewards(ver, grm, present, self.examiner)
        verdict = hard_verdicts(rewards, source)
        comp, mask = rollout.completion_ids, rollout.completion_mask
        lens = mask.sum(1).tolist()
        token_step = torch.full(comp.shape, -1, dtype=torch.long)
        for i, (p, text, n, ids) in enumerate(zip(parsed, rollout.texts, lens, comp.tolist())):
            token_step[i, :n] = torch.tensor(token_step_index(ids[:n], tokenizer, p, text), dtype=torch.long)
        stats = examiner_stats(ver, grm, source, present)
        stats.update({
            "steps/per_response": float(present.sum(1).float().mean()),
            "steps/mean_reward": float(rewards[present].mean()) if present.any() else 0.0,
            "steps/min_reward": float(rewards.masked_fill(~present, 1.0).min(1).values.mean()),
            "steps/verifier_accuracy": float(torch.nanmean(ver)) if (~torch.isnan(ver)).any() else float("nan"),
        })
        return StepScores(rewards=rewards, source=source, present=present, verdict=verdict,
                          token_step=token_step.to(dev), stats=stats)
