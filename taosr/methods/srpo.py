"""SRPO: GRPO's machinery with step-level advantages from a hybrid stepwise examiner.

Per rollout: the completion is split into its five steps (token spans from the reasoning-format
module); every present step is scored by the offline verifier where a gold annotation covers it
and by the GRM elsewhere (``examiner.mode``); the step rewards and the outcome reward go through
the selected step-advantage estimator (``step_advantage.name`` in :data:`taosr.rl.advantages.STEP_ADVANTAGES`),
which gives every token of step k of rollout i the value A(i, k).
"""
from __future__ import annotations

import torch

from taosr.labels import STEP_KEYS
from taosr.methods.grpo import GRPOModule
from taosr.reasoning.format import token_step_index
from taosr.rl.advantages import (STEP_ADVANTAGES, StepAdvantageSpec, compute_step_advantages, critical_step_mask,
                                 zero_spread_mask)
from taosr.rl.examiner import ExaminerSpec, combine_step_rewards, examiner_stats


class SRPOModule(GRPOModule):
    needs_step_rewards = True

    def __init__(self, *args, step_advantage: StepAdvantageSpec | None = None, examiner: ExaminerSpec | None = None,
                 grm_path: str | None = None, grm_batch_size: int = 32, keep_step_only_groups: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.examiner = examiner or ExaminerSpec()
        self.step_advantage = step_advantage or StepAdvantageSpec()
        if self.step_advantage.name not in STEP_ADVANTAGES:
            from taosr.errors import ConfigError

            raise ConfigError(f"model.step_advantage.name: {self.step_advantage.name!r} is unknown; "
                              f"registered: {', '.join(sorted(STEP_ADVANTAGES))}")
        self.grm = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        needs_grm = self.examiner.mode in ("verifier_then_grm", "grm", "weighted")
        if self.grm is None and self.hparams.grm_path and needs_grm:
            from taosr.rl.grm import GRMScorer

            dm = self.trainer.datamodule
            self.grm = GRMScorer.load(self.hparams.grm_path, self.hparams.grm_batch_size, corpus=dm.corpus)
        if needs_grm and self.grm is None and self.examiner.mode != "verifier_then_grm":
            from taosr.errors import ConfigError

            raise ConfigError(f"model.examiner.mode={self.examiner.mode!r} needs model.grm_path (a GRM export)")

    def score_steps(self, r: dict) -> None:
        from taosr.reasoning.verifier import verify_steps

        parsed, examples = r["parsed"], r["examples"]
        ver = torch.tensor([[float("nan") if v is None else v for v in (verify_steps(p, ex.annotations)[k] for k in STEP_KEYS)]
                            for p, ex in zip(parsed, examples)], dtype=torch.float32)
        present = torch.tensor([[k in p.steps for k in STEP_KEYS] for p in parsed], dtype=torch.bool)
        grm = None
        if self.grm is not None:
            if next(self.grm.model.parameters()).device != self.device:
                self.grm.model.to(self.device)  # the strategy moves the policy after setup; follow it
            grm = self.grm.score(examples, parsed)
        rewards, source = combine_step_rewards(ver, grm, present, self.examiner)
        comp, mask = r["completion_ids"], r["completion_mask"]
        token_step = torch.full(comp.shape, -1, dtype=torch.long)
        for i, (p, text) in enumerate(zip(parsed, r["texts"])):
            n = int(mask[i].sum())
            ids = comp[i, :n].tolist()
            idx = token_step_index(ids, self.tokenizer, p, text)
            token_step[i, :n] = torch.tensor(idx, dtype=torch.long)
        dev = comp.device
        r["step_rewards"], r["step_source"], r["step_present"] = rewards.to(dev), source.to(dev), present.to(dev)
        r["token_step"] = token_step.to(dev)
        r["step_stats"] = examiner_stats(ver, grm, source, present)
        crit = critical_step_mask(rewards, r["correct"].bool().cpu())
        r["step_stats"].update({
            "steps/per_response": float(present.sum(1).float().mean()),
            "steps/mean_reward": float(rewards[present].mean()) if present.any() else 0.0,
            "steps/min_reward": float(rewards.masked_fill(~present, 1.0).min(1).values.mean()),
            "steps/critical_count": float((crit & present).sum()),
            "steps/verifier_accuracy": float(torch.nanmean(ver)) if (~torch.isnan(ver)).any() else float("nan"),
        })

    def advantages(self, r: dict) -> torch.Tensor:
        spec = self.step_advantage
        return compute_step_advantages(
            spec.name, outcome_rewards=r["reward"], step_rewards=r["step_rewards"], correct=r["correct"].bool(),
            token_step=r["token_step"], group_size=r["group_size"], step_present=r["step_present"], **spec.kwargs())

    def keep_mask(self, r: dict) -> torch.Tensor:
        """Dynamic sampling. Default (GRPO's rule): drop groups whose outcome rewards have zero spread.
        With ``keep_step_only_groups`` a group is dropped only when its step rewards are flat too, so
        all-correct groups with a wrong step still train on the step term — but their rows (A_out = 0)
        join the token-mean divisor and dilute the outcome signal: on the default data verifier-only
        SRPO reached val macro F1 0.779 with them and 0.827 without (60 steps, seed 0)."""
        if not self.hparams.dynamic_sampling or self.step_advantage.name == "outcome" \
                or not self.hparams.get("keep_step_only_groups", False):
            return super().keep_mask(r)
        G = r["group_size"]
        steps = r["step_rewards"].view(-1, G, r["step_rewards"].shape[-1])
        flat_steps = (steps.max(1).values - steps.min(1).values).amax(-1) <= 1e-6
        return ~(zero_spread_mask(r["reward"], G) & flat_steps.repeat_interleave(G))

    def _rollout_metrics(self, r: dict, keep: torch.Tensor) -> dict[str, float]:
        m = super()._rollout_metrics(r, keep)
        m.update({k: v for k, v in r.get("step_stats", {}).items() if v == v})
        return m
