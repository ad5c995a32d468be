"""Hybrid stepwise examination (pure): combine the offline verifier and the GRM per step.

Inputs are (N, K) tensors in step order: ``verifier`` holds 1/0 where a gold annotation covers
the step and NaN elsewhere; ``grm`` holds the GRM's P(step is right) (NaN where not scored);
``present`` marks steps the completion actually contains (missing steps of malformed output get
reward 0 and source "missing").

Modes (``model.init_args.examiner.mode``, registry :data:`EXAMINER_MODES`):
- ``verifier_then_grm`` (default): the verifier where it covers a step, the GRM elsewhere;
- ``grm``: the GRM for every present step (needs a GRM);
- ``verifier``: the verifier only (uncovered steps get ``uncovered_value``, default 0.5 = neutral);
- ``weighted``: ``verifier_weight`` * verifier + (1 - verifier_weight) * GRM where both judged,
  whichever judged otherwise (needs a GRM).

Every step a source judged also gets a hard verdict (:func:`hard_verdicts`): the verifier's 1/0,
or the soft score thresholded at 0.5; steps nobody judged have none (NaN).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from taosr.errors import ConfigError
from taosr.registry import Registry

SOURCE_MISSING, SOURCE_VERIFIER, SOURCE_GRM, SOURCE_BOTH, SOURCE_NONE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class ExaminerMode:
    """How one mode turns (verifier, GRM) into (reward, source); ``needs_grm``: refused without a
    GRM; ``uses_grm``: a GRM (when given) is loaded and run."""
    combine: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    needs_grm: bool
    uses_grm: bool


EXAMINER_MODES: Registry[ExaminerMode] = Registry("examiner mode", "model.init_args.examiner.mode")


@dataclass
class ExaminerSpec:
    mode: str = "verifier_then_grm"
    verifier_weight: float = 0.5
    uncovered_value: float = 0.5

    def check(self) -> ExaminerMode:
        """Validate the mode and the weights once (ConfigError naming the key)."""
        m = EXAMINER_MODES.get(self.mode)
        for name in ("verifier_weight", "uncovered_value"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"model.init_args.examiner.{name}: must be in [0, 1], got {v:g}")
        if self.mode != "weighted" and self.verifier_weight != ExaminerSpec.verifier_weight:
            raise ConfigError(f"model.init_args.examiner.verifier_weight: read by mode weighted only, and mode is "
                              f"{self.mode!r} (set mode: weighted, or remove it)")
        return m


def _verifier_then_grm(v, g, v_ok, g_ok, reward, source, spec):
    use_v, use_g = v_ok, ~v_ok & g_ok
    reward = torch.where(use_g, g, torch.where(use_v, v, reward))
    source[use_v], source[use_g] = SOURCE_VERIFIER, SOURCE_GRM
    return reward, source


def _grm(v, g, v_ok, g_ok, reward, source, spec):
    source[g_ok] = SOURCE_GRM
    return torch.where(g_ok, g, reward), source


def _verifier(v, g, v_ok, g_ok, reward, source, spec):
    source[v_ok] = SOURCE_VERIFIER
    return torch.where(v_ok, v, reward), source


def _weighted(v, g, v_ok, g_ok, reward, source, spec):
    w = spec.verifier_weight
    both = v_ok & g_ok
    reward = torch.where(both, w * v + (1 - w) * g, torch.where(v_ok, v, torch.where(g_ok, g, reward)))
    source[v_ok], source[g_ok & ~v_ok], source[both] = SOURCE_VERIFIER, SOURCE_GRM, SOURCE_BOTH
    return reward, source


EXAMINER_MODES.register("verifier_then_grm", ExaminerMode(_verifier_then_grm, needs_grm=False, uses_grm=True))
EXAMINER_MODES.register("grm", ExaminerMode(_grm, needs_grm=True, uses_grm=True))
EXAMINER_MODES.register("verifier", ExaminerMode(_verifier, needs_grm=False, uses_grm=False))
EXAMINER_MODES.register("weighted", ExaminerMode(_weighted, needs_grm=True, uses_grm=True))


def combine_step_rewards(verifier: torch.Tensor, grm: torch.Tensor | None, present: torch.Tensor,
                         spec: ExaminerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (step_rewards (N,K) in [0,1], source (N,K) long with the SOURCE_* codes)."""
    mode = EXAMINER_MODES.get(spec.mode)
    if grm is None:
        if mode.needs_grm:
            raise ValueError(f"examiner mode {spec.mode!r} needs a GRM")
        grm = torch.full_like(verifier, float("nan"))
    v_ok, g_ok = ~torch.isnan(verifier), ~torch.isnan(grm)
    v, g = torch.nan_to_num(verifier), torch.nan_to_num(grm)
    reward = torch.full_like(verifier, spec.uncovered_value)
    source = torch.full(verifier.shape, SOURCE_NONE, dtype=torch.long, device=verifier.device)
    reward, source = mode.combine(v, g, v_ok, g_ok, reward, source, spec)
    reward = torch.where(present, reward, torch.zeros_like(reward))
    source = torch.where(present, source, torch.full_like(source, SOURCE_MISSING))
    return reward, source


def hard_verdicts(rewards: torch.Tensor, source: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, K) hard verdicts of the examiner: 1 right / 0 wrong where a source judged the step (the
    verifier's 1/0 stays as is; a soft GRM or weighted score is thresholded), NaN where no source
    did (uncovered or missing steps)."""
    judged = (source == SOURCE_VERIFIER) | (source == SOURCE_GRM) | (source == SOURCE_BOTH)
    right = (rewards >= threshold).to(rewards.dtype)
    return torch.where(judged, right, torch.full_like(rewards, float("nan")))


def examiner_stats(verifier: torch.Tensor, grm: torch.Tensor | None, source: torch.Tensor,
                   present: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Shares of steps judged by each source, and verifier–GRM disagreement where both judged."""
    n = max(int(present.sum()), 1)
    out = {
        "steps/verifier_share": float(((source == SOURCE_VERIFIER) | (source == SOURCE_BOTH)).sum()) / n,
        "steps/grm_share": float(((source == SOURCE_GRM) | (source == SOURCE_BOTH)).sum()) / n,
        "steps/verifier_coverage": float((~torch.isnan(verifier) & present).sum()) / n,
        "steps/missing": float((~present).sum()),
    }
    if grm is not None:
        both = ~torch.isnan(verifier) & ~torch.isnan(grm) & present
        if both.any():
            out["steps/disagreement"] = float(((verifier[both] >= threshold) != (grm[both] >= threshold)).float().mean())
    return out
