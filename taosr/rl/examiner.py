"""Hybrid stepwise examination (pure): combine the offline verifier and the GRM per step.

Inputs are (N, K) tensors in step order: ``verifier`` holds 1/0 where a gold annotation covers
the step and NaN elsewhere; ``grm`` holds the GRM's P(step is right) (NaN where not scored);
``present`` marks steps the completion actually contains (missing steps of malformed output get
reward 0 and source "missing").

Modes:
- ``verifier_then_grm`` (default): the verifier where it covers a step, the GRM elsewhere;
- ``grm``: the GRM for every present step;
- ``verifier``: the verifier only (uncovered steps get ``uncovered_value``, default 0.5 = neutral);
- ``weighted``: ``verifier_weight`` * verifier + (1 - verifier_weight) * GRM where both judged,
  whichever judged otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EXAMINER_MODES = ("verifier_then_grm", "grm", "verifier", "weighted")
SOURCE_MISSING, SOURCE_VERIFIER, SOURCE_GRM, SOURCE_BOTH, SOURCE_NONE = 0, 1, 2, 3, 4


@dataclass
class ExaminerSpec:
    mode: str = "verifier_then_grm"
    verifier_weight: float = 0.5
    uncovered_value: float = 0.5


def combine_step_rewards(verifier: torch.Tensor, grm: torch.Tensor | None, present: torch.Tensor,
                         spec: ExaminerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (step_rewards (N,K) in [0,1], source (N,K) long with the SOURCE_* codes)."""
    if spec.mode not in EXAMINER_MODES:
        raise ValueError(f"examiner mode {spec.mode!r} is unknown; expected one of {EXAMINER_MODES}")
    if grm is None:
        if spec.mode in ("grm", "weighted"):
            raise ValueError(f"examiner mode {spec.mode!r} needs a GRM")
        grm = torch.full_like(verifier, float("nan"))
    v_ok, g_ok = ~torch.isnan(verifier), ~torch.isnan(grm)
    v, g = torch.nan_to_num(verifier), torch.nan_to_num(grm)
    reward = torch.full_like(verifier, spec.uncovered_value)
    source = torch.full(verifier.shape, SOURCE_NONE, dtype=torch.long, device=verifier.device)
    if spec.mode == "verifier_then_grm":
        use_v, use_g = v_ok, ~v_ok & g_ok
        reward = torch.where(use_g, g, torch.where(use_v, v, reward))
        source[use_v], source[use_g] = SOURCE_VERIFIER, SOURCE_GRM
    elif spec.mode == "grm":
        reward = torch.where(g_ok, g, reward)
        source[g_ok] = SOURCE_GRM
    elif spec.mode == "verifier":
        reward = torch.where(v_ok, v, reward)
        source[v_ok] = SOURCE_VERIFIER
    else:
        w = spec.verifier_weight
        both = v_ok & g_ok
        reward = torch.where(both, w * v + (1 - w) * g, torch.where(v_ok, v, torch.where(g_ok, g, reward)))
        source[v_ok], source[g_ok & ~v_ok], source[both] = SOURCE_VERIFIER, SOURCE_GRM, SOURCE_BOTH
    reward = torch.where(present, reward, torch.zeros_like(reward))
    source = torch.where(present, source, torch.full_like(source, SOURCE_MISSING))
    return reward, source


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
