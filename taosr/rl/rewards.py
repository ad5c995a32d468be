"""Outcome rewards (pure): label correct and format valid, with configurable weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from taosr.reasoning.format import ParsedReasoning


@dataclass
class OutcomeRewardSpec:
    """``correct_needs_format``: count a right label only in a well-formed completion (five steps in
    order, then the label). Off, a bare ``Label: N`` earns ``correct_weight`` (all but the format
    bonus of a full answer), and its missing steps have no tokens a step reward could reach."""
    correct_weight: float = 1.0
    format_weight: float = 0.2
    correct_needs_format: bool = False


def outcome_rewards(parsed: list[ParsedReasoning], gold: list[int], spec: OutcomeRewardSpec,
                    device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Per completion (on ``device``): ``correct`` (label equals gold; with ``correct_needs_format``
    only without a format error), ``format`` (parsed without error) and ``reward`` =
    correct_weight * correct + format_weight * format."""
    fmt = torch.tensor([not p.format_error for p in parsed], dtype=torch.float32, device=device)
    correct = torch.tensor([p.label is not None and p.label == g for p, g in zip(parsed, gold)], dtype=torch.float32,
                           device=device)
    if spec.correct_needs_format:
        correct = correct * fmt
    return {"correct": correct, "format": fmt, "reward": spec.correct_weight * correct + spec.format_weight * fmt}
