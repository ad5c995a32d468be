"""Step scoring for SRPO, called by the reward callback: the offline verifier where a gold
annotation covers a step, the GRM elsewhere (combined by the examiner mode), the examiner's hard
verdicts, and the map from completion tokens to steps.

Only the rows the update can use are examined in full (``rows``: the module's
:meth:`~taosr.methods.srpo.SRPOModule.examined_rows`, the groups dynamic sampling keeps): a dropped
group's advantages are never used, so its completions get no GRM score (NaN: the examiner gives
their uncovered steps ``uncovered_value``) and no token map (-1). The GRM scores one group per call,
so a kept row's scores do not depend on which other groups were kept, and ``stats``
(``train/steps/*``) are means over the examined rows."""
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

    def _grm_scores(self, rollout: Rollout, rows: torch.Tensor) -> torch.Tensor | None:
        """(N, K) GRM scores of the ``rows`` (one call, so one batch or more, per group of G rows:
        a group's candidates share its prompt), NaN elsewhere."""
        if self.grm is None:
            return None
        dev = rollout.device
        if next(self.grm.model.parameters()).device != dev:
            self.grm.model.to(dev)  # the strategy moves the policy after setup; follow it
        out = torch.full((len(rollout), len(STEP_KEYS)), float("nan"))
        G = rollout.group_size
        for g in torch.unique(rows.nonzero().flatten().cpu() // G).tolist():
            idx = [i for i in range(g * G, (g + 1) * G) if rows[i]]
            out[idx] = self.grm.score([rollout.examples[i] for i in idx], [rollout.parsed[i] for i in idx]).float()
        return out

    def __call__(self, rollout: Rollout, tokenizer, rows: torch.Tensor | None = None) -> StepScores:
        """``rows``: (N,) bool, the rows to examine in full (None: all)."""
        parsed, examples, dev = rollout.parsed, rollout.examples, rollout.device
        rows = torch.ones(len(rollout), dtype=torch.bool) if rows is None else rows.detach().cpu().bool()
        ver = torch.tensor([[float("nan") if v is None else v
                             for v in (verify_steps(p, ex.annotations)[k] for k in STEP_KEYS)]
                            for p, ex in zip(parsed, examples)], dtype=torch.float32, device=dev)
        present = torch.tensor([[k in p.steps for k in STEP_KEYS] for p in parsed], dtype=torch.bool, device=dev)
        grm = self._grm_scores(rollout, rows)
        grm = grm.to(dev) if grm is not None else None
        rewards, source = combine_step_rewards(ver, grm, present, self.examiner)
        verdict = hard_verdicts(rewards, source)
        comp, mask = rollout.completion_ids, rollout.completion_mask
        lens = mask.sum(1).tolist()
        token_step = torch.full(comp.shape, -1, dtype=torch.long)
        comp_cpu = comp.cpu()
        for i in rows.nonzero().flatten().tolist():
            n = lens[i]
            ids = comp_cpu[i, :n].tolist()
            token_step[i, :n] = torch.tensor(token_step_index(ids, tokenizer, parsed[i], rollout.texts[i]),
                                             dtype=torch.long)
        return StepScores(rewards=rewards, source=source, present=present, verdict=verdict,
                          token_step=token_step.to(dev), stats=step_stats(ver, grm, rewards, source, present, rows),
                          examined=rows.to(dev))


def step_stats(ver: torch.Tensor, grm: torch.Tensor | None, rewards: torch.Tensor, source: torch.Tensor,
               present: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
    """``train/steps/*``: means over the examined ``rows`` (none examined: no stats, a gap)."""
    rows = rows.to(present.device)
    if not bool(rows.any()):
        return {}
    ver, rewards, source, present = ver[rows], rewards[rows], source[rows], present[rows]
    stats = examiner_stats(ver, grm[rows] if grm is not None else None, source, present)
    stats.update({
        "steps/per_response": float(present.sum(1).float().mean()),
        "steps/mean_reward": float(rewards[present].mean()) if present.any() else 0.0,
        "steps/min_reward": float(rewards.masked_fill(~present, 1.0).min(1).values.mean()),
        "steps/verifier_accuracy": float(torch.nanmean(ver)) if (~torch.isnan(ver)).any() else float("nan"),
    })
    return stats
