"""GRM training: the SFT loss on the ``grm`` view; validation reports step-verdict accuracy.

Validation rows are the held-out split's gold reasoning with seeded corruptions (same recipe as
training); the GRM's soft score P(right) >= 0.5 is compared with the true verdict per step, and
the soft score's AUROC (right vs wrong steps) is reported beside it; ``grm/evidence/...`` scores the
same split's decision steps with one evidence part swapped in half of them and every conclusion
kept (a right conclusion from a wrong fact: what the verifier's evidence check catches). With ``data.grm_samples.holdout``
the policy samples of held-out queries are scored too (what the GRM meets in SRPO): against the
offline verifier's verdicts on the steps it covers (``grm/policy/...``) and, where the examples carry
gold steps (the synthetic default), against them on every step (``grm/policy_gold/...``) and on the
steps the verifier cannot see (``grm/policy_uncovered/...``: the GRM's share of the hybrid).
"""
from __future__ import annotations

import json
import os
import random
import sys

import torch
from torchmetrics.functional.classification import binary_auroc

from taosr.data.grm import policy_rows_split
from taosr.data.synth import DECISION_STEPS
from taosr.labels import STEP_KEYS
from taosr.methods.sft import SFTModule
from taosr.reasoning.format import conclusion
from taosr.reasoning.grm_layout import write_layout
from taosr.rl.grm import GRMScorer


def grm_eval_rows(examples, seed: int = 1234, corrupt_prob: float = 0.3, evidence_prob: float = 0.0) -> list[tuple]:
    from taosr.data.grm import corrupt_steps, evidence_pool

    rng = random.Random(seed)
    ex5 = [ex for ex in examples if ex.steps and len(ex.steps) == 5]
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in ex5}) for k in STEP_KEYS}
    ev_pool = evidence_pool(ex5) if evidence_prob > 0 else None
    return [(ex, *corrupt_steps(ex, pool, rng, corrupt_prob, evidence_prob, ev_pool)) for ex in ex5]


def verdict_metrics(probs: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor | None = None,
                    prefix: str = "grm") -> dict[str, float]:
    """Accuracy of P(right) >= 0.5 against ``truth`` (N, K) bool, on the ``valid`` (N, K) entries:
    overall, per step, on wrong and on right steps, and the soft score's AUROC (how well P(right)
    orders right steps above wrong ones whatever the threshold: centred step advantages use the
    order, not the 0.5 cut). NaN where a figure has no entries."""
    valid = (torch.ones_like(truth) if valid is None else valid) & ~torch.isnan(probs)
    hit = (probs >= 0.5) == truth

    def mean(sel: torch.Tensor) -> float:
        return float(hit[sel].float().mean()) if sel.any() else float("nan")

    t, p = truth[valid], probs[valid]
    m = {f"{prefix}/verdict_accuracy": mean(valid),
         f"{prefix}/auroc": float(binary_auroc(p, t.long())) if t.any() and (~t).any() else float("nan"),
         f"{prefix}/wrong_step_recall": mean(valid & ~truth),
         f"{prefix}/right_step_recall": mean(valid & truth),
         f"{prefix}/wrong_share": float((~t).float().mean()) if t.numel() else float("nan")}
    for i, k in enumerate(STEP_KEYS):
        col = torch.zeros_like(valid)
        col[:, i] = True
        m[f"{prefix}/verdict_accuracy/{k}"] = mean(valid & col)
    return m


def policy_truth(rows: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(verifier verdicts, covered, gold verdicts, gold known), each (N, K) bool, of policy rows
    (example, steps, verifier verdicts or None): gold is the step matching the example's gold step."""
    from taosr.reasoning.verifier import step_matches

    n = len(rows)
    ver, cov = torch.zeros(n, len(STEP_KEYS), dtype=torch.bool), torch.zeros(n, len(STEP_KEYS), dtype=torch.bool)
    gold, known = torch.zeros_like(ver), torch.zeros_like(ver)
    for i, (ex, steps, verdicts) in enumerate(rows):
        for j, k in enumerate(STEP_KEYS):
            if verdicts.get(k) is not None:
                ver[i, j], cov[i, j] = bool(verdicts[k]), True
            if k in steps and ex.steps and k in ex.steps:
                gold[i, j], known[i, j] = step_matches(k, steps[k], ex.steps[k]), True
    return ver, cov, gold, known


class GRMModule(SFTModule):
    DATA_VIEW = "grm"  # the DataModule view it trains on (data.view)

    def _grm_eval(self, split: str) -> dict[str, float]:
        dm = self.trainer.datamodule
        rows = grm_eval_rows(dm.splits[split])
        scorer = GRMScorer(self.model, self.tokenizer, batch_size=dm.eval_batch_size, max_length=dm.max_length)
        m: dict[str, float] = {}
        if rows:
            probs = scorer.score_steps([r[0] for r in rows], [r[1] for r in rows])
            truth = torch.tensor([[r[2][k] for k in STEP_KEYS] for r in rows], dtype=torch.bool)
            m = verdict_metrics(probs, truth)
        elif not getattr(self, "_noted_no_gold", False) and self.trainer.is_global_zero:
            # a user's labelled val file has no reasoning: nothing to corrupt and judge (it crashed here)
            self._noted_no_gold = True
            print(f"taosr: grm: no {split} example has the five gold steps the GRM's {split} metrics judge "
                  f"(grm/verdict_accuracy, grm/auroc): skipped; point data.{split} at a file taosr reason wrote "
                  f"to measure them", file=sys.stderr)
        # evidence mistakes alone (conclusions kept): does the GRM flag a right conclusion from a wrong fact?
        ev = grm_eval_rows(dm.splits[split], corrupt_prob=0.0, evidence_prob=0.5)
        ev_truth = torch.tensor([[r[2][k] for k in STEP_KEYS] for r in ev], dtype=torch.bool)
        if ev and not ev_truth.all():
            decision = torch.tensor([k in DECISION_STEPS for k in STEP_KEYS]).expand_as(ev_truth)
            ev_probs = scorer.score_steps([r[0] for r in ev], [r[1] for r in ev])
            m.update(verdict_metrics(ev_probs, ev_truth, decision.clone(), prefix="grm/evidence"))
        policy = policy_rows_split(dm)[1] if split == "val" and dm.grm_samples.holdout else []
        if policy:
            probs = scorer.score_steps([r[0] for r in policy], [r[1] for r in policy])
            ver, cov, gold, known = policy_truth(policy)
            m.update(verdict_metrics(probs, ver, cov, prefix="grm/policy"))
            if known.any():
                m.update(verdict_metrics(probs, gold, known, prefix="grm/policy_gold"))
                m.update(verdict_metrics(probs, gold, known & ~cov, prefix="grm/policy_uncovered"))
        return m

    def export(self, out_dir: str | None = None) -> str:
        path = super().export(out_dir)
        dm = self.trainer.datamodule if self._trainer is not None else None
        # the scorer checks that it reads an export of its own layout, and fits inputs to its training budget
        write_layout(path, max_length=getattr(dm, "max_length", None))
        return path

    def validation_step(self, batch, batch_idx):
        return None

    test_step = validation_step

    def _finish_eval(self, split: str) -> dict[str, float]:
        if self.trainer.sanity_checking:
            return {}
        m = self._grm_eval(split)
        self.log_dict({f"{split}/{k}": v for k, v in m.items() if v == v}, rank_zero_only=True)
        if self.trainer.is_global_zero:
            os.makedirs(os.path.join(self.run_dir, "eval"), exist_ok=True)
            tag = split if split == "test" else f"{split}-step{self.evaluated_step}"
            with open(os.path.join(self.run_dir, "eval", f"{tag}-grm-metrics.json"), "w") as fh:
                json.dump(m, fh, indent=2)
        return m
