"""The clipped GRPO/PPO policy objective (pure) with named loss aggregations.

Aggregations (``loss_agg``), each normalised by counts of the WHOLE accumulated batch so that
summing micro-batch losses gives exactly the full-batch loss and gradient:
- ``token_mean`` (default; DAPO / verl token-mean; TRL ``dapo``): sum of token losses / ``num_tokens``;
- ``seq_mean`` (TRL ``grpo``): per-sequence token mean, summed, / ``num_sequences``;
- ``dr_grpo`` (Dr. GRPO): sum of token losses / (``num_sequences`` x ``max_completion_length``).

``weights`` (B,) counts how many identical rows each row stands for (the update computes one of a
group's repeated completions: :mod:`taosr.rl.update_plan`): a row's token losses count that many
times in every aggregation, as if its copies were in the batch.
"""
from __future__ import annotations

from typing import Callable

import torch

from taosr.registry import Registry

LOSS_AGGREGATIONS: Registry[Callable] = Registry("loss aggregation", "model.init_args.loss_agg")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


@LOSS_AGGREGATIONS.register("token_mean", options=())
def _token_mean(per_token, mask, num_tokens, num_sequences, max_len):
    denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
    return (per_token * mask).sum() / denom


@LOSS_AGGREGATIONS.register("seq_mean", options=())
def _seq_mean(per_token, mask, num_tokens, num_sequences, max_len):
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    denom = num_sequences if num_sequences is not None else per_token.shape[0]
    return per_seq.sum() / denom


@LOSS_AGGREGATIONS.register("dr_grpo", options=())
def _dr_grpo(per_token, mask, num_tokens, num_sequences, max_len):
    n = num_sequences if num_sequences is not None else per_token.shape[0]
    L = max_len if max_len is not None else per_token.shape[1]
    return (per_token * mask).sum() / (n * L)


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.28, delta: float | None = None,
                ref_logps: torch.Tensor | None = None, beta: float = 0.0, loss_agg: str = "token_mean",
                num_tokens: float | None = None, num_sequences: float | None = None,
                max_completion_length: int | None = None,
                weights: torch.Tensor | None = None,
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (+ beta * k3 KL). ``advantages`` is (B,) per sequence or (B, T) per token.
    ``loss_agg`` names a registered aggregation (an unknown name is a ConfigError from the registry).
    ``is_weights`` (B, T): constants multiplying each token's surrogate term, not the KL term (the
    sampler-mismatch correction, :mod:`taosr.rl.sampler_correction`; as TRL applies its vLLM ratio)."""
    aggregate = LOSS_AGGREGATIONS.get(loss_agg)
    mask = mask.to(logps.dtype)
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
    # padding positions take no part: whatever old / ref log-probs hold there (zeros past the width
    # they were computed at), exp() of their difference never overflows into inf * 0 = NaN
    valid = mask > 0
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
    log_ratio = torch.where(valid, logps - old_logps, zero)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if is_weights is not None:
        per_token = per_token * is_weights.to(per_token.dtype)
    metrics: dict[str, float] = {}
    # the metrics' mask counts a row's copies too
    wmask = mask if weights is None else mask * weights.to(mask.dtype).unsqueeze(1)
    if weights is not None:  # default normalisers count the copies too
        num_tokens = float(wmask.sum().clamp(min=1.0)) if num_tokens is None else num_tokens
        num_sequences = float(weights.sum()) if num_sequences is None else num_sequences
    if ref_logps is not None and beta > 0:
        kl = k3_kl(logps, torch.where(valid, ref_logps, logps))
        per_token = per_token + beta * kl
        metrics["kl"] = float(masked_mean(kl.detach(), wmask))
    if weights is not None:
        per_token = per_token * weights.to(per_token.dtype).unsqueeze(1)
    loss = aggregate(per_token, mask, num_tokens, num_sequences, max_completion_length)
    with torch.no_grad():
        r = torch.exp(log_ratio)
        low = (r < 1 - eps_low) & (adv < 0)
        high = (r > 1 + eps_high) & (adv > 0)
        metrics["clip_ratio/low_mean"] = float(masked_mean(low.to(mask.dtype), wmask))
        metrics["clip_ratio/high_mean"] = float(masked_mean(high.to(mask.dtype), wmask))
        metrics["clip_ratio/region_mean"] = float(masked_mean((low | high).to(mask.dtype), wmask))
    return loss, metrics
