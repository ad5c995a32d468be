"""Advantages (pure): GRPO's group-normalised outcome advantage and a registry of step-level
estimators for SRPO. Rows are grouped contiguously: N = prompts x G.

Step-level estimators return per-token advantages (N, T) from:
``outcome_rewards`` (N,), ``step_rewards`` (N, K) in [0, 1] (missing steps already 0),
``correct`` (N,) bool, ``token_step`` (N, T) long (0..K-1 = step of the token, K = after the last
step e.g. the label line, -1 = padding), ``group_size`` and optionally ``step_present`` (N, K) bool
(steps the completion contains; all when omitted).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps), std unbiased as TRL; without ``scale_std`` (Dr. GRPO)
    only the mean is removed."""
    g = rewards.float().view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale_std:
        std = g.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        adv = adv / (std + eps)
    return adv.view(-1)


def zero_spread_mask(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for every completion whose group's rewards all equal (no learning signal)."""
    g = rewards.view(-1, group_size)
    flat = (g.max(1).values - g.min(1).values) <= 1e-8
    return flat.repeat_interleave(group_size)


def frac_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    return float(zero_spread_mask(rewards, group_size).view(-1, group_size)[:, 0].float().mean())


def critical_step_mask(step_rewards: torch.Tensor, correct: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Critical steps: a right step inside a wrong answer, or a wrong step inside a right answer."""
    right = step_rewards >= threshold
    c = correct.bool().unsqueeze(1)
    return (right & ~c) | (~right & c)


def _broadcast(per_seq_or_step: torch.Tensor, token_step: torch.Tensor, K: int) -> torch.Tensor:
    """Map (N, K+1) values (index K = after the last step) onto tokens; 0 at padding."""
    idx = token_step.clamp(min=0, max=K)
    out = per_seq_or_step.gather(1, idx)
    return out.masked_fill(token_step < 0, 0.0)


@dataclass
class StepAdvantageSpec:
    """Which step-level estimator SRPO uses and its options (each estimator reads the ones it needs)."""
    name: str = "outcome_plus_step"
    lam: float = 0.5
    critical_weight: float = 2.0
    clamp: float | None = 2.0
    outcome_weight: float = 1.0
    scale_std: bool = True          # outcome advantage: divide by the group std (GRPO) or not (Dr. GRPO)
    step_scale_std: bool = False    # outcome_plus_step: also divide step rewards by their group std

    def kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


STEP_ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def register_step_advantage(name: str):
    def deco(fn):
        STEP_ADVANTAGES[name] = fn
        return fn
    return deco


def compute_step_advantages(name: str, **kwargs) -> torch.Tensor:
    if name not in STEP_ADVANTAGES:
        raise ValueError(f"step advantage {name!r} is unknown; registered: {sorted(STEP_ADVANTAGES)}")
    return STEP_ADVANTAGES[name](**kwargs)


@register_step_advantage("outcome")
def outcome_advantage(*, outcome_rewards, step_rewards, correct, token_step, group_size,
                      scale_std: bool = True, eps: float = 1e-4, **_) -> torch.Tensor:
    """GRPO's sequence advantage on every token (SRPO with this estimator is GRPO)."""
    a = group_advantages(outcome_rewards, group_size, scale_std, eps)
    K = step_rewards.shape[1]
    return _broadcast(a.unsqueeze(1).expand(-1, K + 1).contiguous(), token_step, K)


@register_step_advantage("outcome_plus_step")
def outcome_plus_step(*, outcome_rewards, step_rewards, correct, token_step, group_size, lam: float = 0.5,
                      critical_weight: float = 2.0, clamp: float | None = 2.0, scale_std: bool = True,
                      step_scale_std: bool = False, eps: float = 1e-4, **_) -> torch.Tensor:
    """A(i,k) = A_out(i) + lam * w(i,k) * s_hat(i,k), clamped; s_hat = step k's reward minus its
    group mean at the same step (0 where the group's rewards at k do not vary), divided by the
    group std only with ``step_scale_std`` (off by default: soft GRM scores that differ by a few
    hundredths would otherwise become full-size advantages); w = critical_weight on critical
    steps, else 1. Tokens after the last step get A_out."""
    N, K = step_rewards.shape
    a_out = group_advantages(outcome_rewards, group_size, scale_std, eps)
    s = step_rewards.float().view(-1, group_size, K)
    centred = s - s.mean(1, keepdim=True)
    spread = (s.max(1, keepdim=True).values - s.min(1, keepdim=True).values) > 1e-8
    if step_scale_std and group_size > 1:
        centred = centred / (s.std(1, keepdim=True) + eps)
    s_hat = torch.where(spread, centred, torch.zeros_like(centred)).view(N, K)
    w = torch.where(critical_step_mask(step_rewards, correct), torch.full_like(s_hat, critical_weight), torch.ones_like(s_hat))
    per_step = a_out.unsqueeze(1) + lam * w * s_hat
    table = torch.cat([per_step, a_out.unsqueeze(1)], 1)
    if clamp is not None:
        table = table.clamp(-clamp, clamp)
    return _broadcast(table, token_step, K)


@register_step_advantage("process_sum")
def process_sum(*, outcome_rewards, step_rewards, correct, token_step, group_size, outcome_weight: float = 1.0,
                clamp: float | None = None, eps: float = 1e-4, scale_std: bool = True,
                step_present: torch.Tensor | None = None, **_) -> torch.Tensor:
    """DeepSeekMath process supervision: normalise the rewards of all steps present in a group
    together (missing steps of malformed output take no part and contribute 0); a token's
    advantage is the sum of normalised rewards of its step and every later step, plus
    ``outcome_weight`` x A_out (process rewards alone get hacked)."""
    N, K = step_rewards.shape
    a_out = group_advantages(outcome_rewards, group_size, scale_std, eps)
    present = torch.ones_like(step_rewards, dtype=torch.bool) if step_present is None else step_present.bool()
    s = step_rewards.float().view(-1, group_size * K)
    pm = present.view(-1, group_size * K).float()
    cnt = pm.sum(1, keepdim=True)
    mean = (s * pm).sum(1, keepdim=True) / cnt.clamp(min=1.0)
    norm = (s - mean) * pm
    if scale_std:
        std = ((norm ** 2).sum(1, keepdim=True) / (cnt - 1).clamp(min=1.0)).sqrt()  # unbiased, as torch.std
        norm = norm / (std + eps)
    norm = norm.view(N, K)
    suffix = norm.flip(1).cumsum(1).flip(1)  # sum over j >= k
    table = torch.cat([suffix, torch.zeros(N, 1, dtype=suffix.dtype, device=suffix.device)], 1) + outcome_weight * a_out.unsqueeze(1)
    if clamp is not None:
        table = table.clamp(-clamp, clamp)
    return _broadcast(table, token_step, K)
