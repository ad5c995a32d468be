"""SRPO: GRPO's machinery with step-level advantages from a hybrid stepwise examiner.

Per rollout: the completion is split into its five steps (token spans from the reasoning-format
module); the reward callback scores every present step with the module's
:class:`~taosr.rl.step_scorer.StepScorer` (``step_scorer``): the offline verifier where a gold
annotation covers the step and the GRM elsewhere (``examiner.mode``); the step rewards and the
outcome reward go through the selected step-advantage estimator (``step_advantage.name`` in
:data:`taosr.rl.advantages.STEP_ADVANTAGES`), which gives every token of step k of rollout i the
value A(i, k). The outcome part is GRPO's (the module's ``scale_std``), so SRPO with the ``outcome``
estimator, or with ``lam: 0``, is GRPO exactly.

Only the rows dynamic sampling keeps are examined in full (:meth:`SRPOModule.examined_rows`); the GRM
scores one kept group per call, at most ``grm_batch_size`` distinct completions per forward.
"""
from __future__ import annotations

import os

import torch

from taosr.errors import ConfigError
from taosr.methods.grpo import GRPOModule
from taosr.reasoning.targets import get_target
from taosr.rl.advantages import StepAdvantageSpec, critical_step_mask, step_centred, zero_spread_mask
from taosr.rl.examiner import ExaminerSpec
from taosr.rl.rollout import Rollout
from taosr.rl.step_scorer import StepScorer


class SRPOModule(GRPOModule):
    def __init__(self, *args, step_advantage: StepAdvantageSpec | None = None, examiner: ExaminerSpec | None = None,
                 grm_path: str | None = None, grm_batch_size: int = 32, keep_step_only_groups: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.examiner = examiner or ExaminerSpec()
        self.step_advantage = step_advantage or StepAdvantageSpec()
        self._estimator = self.step_advantage.check()
        self._mode = self.examiner.check()
        if self._mode.needs_grm and not grm_path:
            raise ConfigError(f"model.init_args.examiner.mode={self.examiner.mode!r} needs model.init_args.grm_path "
                              "(a GRM export)")
        if grm_path and self._mode.uses_grm:
            from taosr.models.factory import looks_like_hub_id

            if not os.path.isdir(grm_path) and not looks_like_hub_id(grm_path):
                raise ConfigError(f"model.init_args.grm_path: {grm_path!r} does not exist (a GRM export: the "
                                  "export folder of a configs/grm.yaml fit, e.g. runs/grm/export)")
        self.step_scorer: StepScorer | None = None

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is not None and not get_target(dm.target).has_steps:
            raise ConfigError(f"data.target: {dm.target!r} completions have no reasoning steps for SRPO's examiner to "
                              "score; train it with GRPO (configs/grpo.yaml) or use data.target: reasoning")
        super().setup(stage)
        if self.step_scorer is None:
            grm = None
            if self.hparams.grm_path and self._mode.uses_grm:
                from taosr.rl.grm import GRMScorer

                dm = self.trainer.datamodule
                grm = GRMScorer.load(self.hparams.grm_path, self.hparams.grm_batch_size, corpus=dm.corpus)
            self.step_scorer = StepScorer(self.examiner, grm)

    def advantages(self, r: Rollout) -> torch.Tensor:
        st = r.steps
        return self._estimator(outcome_rewards=r.reward, step_rewards=st.rewards, correct=r.correct.bool(),
                               token_step=st.token_step, group_size=r.group_size, step_present=st.present,
                               step_verdict=st.verdict, scale_std=self.hparams.scale_std,
                               **self.step_advantage.options())

    def _keep_reads_steps(self) -> bool:
        """Whether dynamic sampling's rule reads the step rewards (``keep_step_only_groups``)."""
        return bool(self.hparams.dynamic_sampling and self.step_advantage.name != "outcome"
                    and self.hparams.get("keep_step_only_groups", False))

    def examined_rows(self, r: Rollout) -> torch.Tensor:
        """(N,) bool: the rows the step scorer examines in full (GRM, token map), asked by the reward
        callback once the outcome rewards are set: the rows :meth:`keep_mask` will keep, since a
        dropped group's advantages are never used; every row when the keep rule reads the step
        rewards itself."""
        if self._keep_reads_steps():
            return torch.ones(len(r), dtype=torch.bool, device=r.device)
        return super().keep_mask(r)

    def keep_mask(self, r: Rollout) -> torch.Tensor:
        """Dynamic sampling. Default (GRPO's rule): drop groups whose outcome rewards have zero spread.
        With ``keep_step_only_groups`` a group is dropped only when its step rewards are flat too, so
        all-correct groups with a wrong step still train on the step term — but their rows (A_out = 0)
        join the token-mean divisor and dilute the outcome signal."""
        if not self._keep_reads_steps():
            keep = super().keep_mask(r)
            examined = r.steps.examined if r.steps is not None else None
            if examined is not None and bool((keep & ~examined).any()):
                raise RuntimeError("SRPO: dynamic sampling keeps rows the step scorer did not examine: the outcome "
                                   "rewards changed after RewardModelCallback scored the steps (a callback listed "
                                   "after it that sets rewards must score the steps again)")
            return keep
        G = r.group_size
        # flat where the step term is 0 throughout: no step whose present rewards vary (step_centred's rule)
        s_hat = step_centred(r.steps.rewards, G, r.steps.present)
        flat_steps = s_hat.view(-1, G * s_hat.shape[-1]).abs().amax(-1) == 0
        return ~(zero_spread_mask(r.reward, G) & flat_steps.repeat_interleave(G))

    def _rollout_metrics(self, r: Rollout, keep: torch.Tensor) -> dict[str, float]:
        m = super()._rollout_metrics(r, keep)
        if r.steps is not None:
            m.update({k: v for k, v in r.steps.stats.items() if v == v})
            st = r.steps  # the steps outcome_plus_step's critical weight applies to, in the groups kept
            s_hat = step_centred(st.rewards, r.group_size, st.present)
            m["steps/critical_count"] = float((critical_step_mask(st.verdict, r.correct.bool(), s_hat)
                                               & st.present)[keep].sum())
        return m
