"""GRM training: the SFT loss on the ``grm`` view; validation reports step-verdict accuracy.

Validation rows are the held-out split's gold reasoning with seeded corruptions (same recipe as
training); the GRM's soft score P(right) >= 0.5 is compared with the true verdict per step, and
the soft score's AUROC (right vs wrong steps) is reported beside it.
"""
from __future__ import annotations

import json
import os
import random

import torch
from torchmetrics.functional.classification import binary_auroc

from taosr.labels import STEP_KEYS
from taosr.methods.sft import SFTModule
from taosr.reasoning.format import conclusion
from taosr.reasoning.grm_layout import write_layout
from taosr.rl.grm import GRMScorer


def grm_eval_rows(examples, seed: int = 1234, corrupt_prob: float = 0.3) -> list[tuple]:
    from taosr.data.grm import corrupt_steps

    rng = random.Random(seed)
    ex5 = [ex for ex in examples if ex.steps and len(ex.steps) == 5]
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in ex5}) for k in STEP_KEYS}
    return [(ex, *corrupt_steps(ex, pool, rng, corrupt_prob)) for ex in ex5]


class GRMModule(SFTModule):
    def _grm_eval(self, split: str) -> dict[str, float]:
        rows = grm_eval_rows(self.trainer.datamodule.splits[split])
        scorer = GRMScorer(self.model, self.tokenizer, batch_size=self.trainer.datamodule.eval_batch_size)
        probs = scorer.score_steps([r[0] for r in rows], [r[1] for r in rows])
        truth = torch.tensor([[r[2][k] for k in STEP_KEYS] for r in rows], dtype=torch.bool)
        hit = (probs >= 0.5) == truth
        # AUROC of the soft score: how well P(right) orders right steps above wrong ones, whatever the
        # threshold (centred step advantages use the order, not the 0.5 cut).
        m = {"grm/verdict_accuracy": float(hit.float().mean()),
             "grm/auroc": float(binary_auroc(probs.flatten(), truth.flatten().long()))
             if truth.any() and (~truth).any() else float("nan"),
             "grm/wrong_step_recall": float(hit[~truth].float().mean()) if (~truth).any() else float("nan"),
             "grm/right_step_recall": float(hit[truth].float().mean())}
        for i, k in enumerate(STEP_KEYS):
            m[f"grm/verdict_accuracy/{k}"] = float(hit[:, i].float().mean())
        return m

    def export(self, out_dir: str | None = None) -> str:
        path = super().export(out_dir)
        write_layout(path)  # the scorer checks that it reads an export of its own layout
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
            tag = split if split == "test" else f"{split}-step{self.global_step}"
            with open(os.path.join(self.run_dir, "eval", f"{tag}-grm-metrics.json"), "w") as fh:
                json.dump(m, fh, indent=2)
        return m
