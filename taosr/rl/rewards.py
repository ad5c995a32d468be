"""Outcome rewards (pure): label correct and format valid, with configurable weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from taosr.reasoning.format import ParsedReasoning


@dataclass
class OutcomeRewardSpec:
    correct_weight: float = 1.0
    format_weight: float = 0.2


def outcome_rewards(parsed: list[ParsedReasoning], gold: list[int], spec: OutcomeRewardSpec,
                    device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Per completion (on ``device``): ``correct`` (label equals gold), ``format`` (parsed without
    error) and ``reward`` = correct_weight * correct + format_weight * format."""
    correct = torch.tensor([p.label is not None and p.label == g for p, g in zip(parsed, gold)], dtype=torch.float32,
                           device=device)
    fmt = torch.tensor([not p.format_error for p in parsed], dtype=torch.float32, device=device)
    return {"correct": correct, "format": fmt, "reward": spec.correct_weight * correct + spec.format_weight * fmt}
