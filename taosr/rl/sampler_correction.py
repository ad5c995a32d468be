"""Importance-sampling correction for a rollout engine whose sampler is not the trainer's forward (pure).

A separate inference engine (vLLM) samples with its own kernels, precision and batching, so the
probability it gave a token, pi_sampler(y), differs from the one the trainer's forward gives the
same weights, pi_old(y). The policy objective assumes its samples come from pi_old; on tokens where
the two disagree the gradient is biased (Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training"). Each token's (or sequence's) loss is weighted by
rho = pi_old / pi_sampler, bounded (TRL ``vllm_importance_sampling_*``; verl ``rollout_is``):

- ``token_truncate``: rho per token, clamped to [min, max] (TIS);
- ``token_mask``: rho per token, tokens outside [min, max] weigh 0;
- ``sequence_truncate``: rho = exp(sum over the sequence's tokens of log pi_old - log pi_sampler),
  one weight for every token of the sequence, clamped;
- ``sequence_mask``: the same sequence rho, sequences outside [min, max] weigh 0 (TRL's default).

A token whose sampler log-prob is unknown (NaN) counts as no mismatch (rho 1). The weights are
constants of the update (computed from the log-probs before it, no gradient).
"""
from __future__ import annotations

import math

import torch

from taosr.errors import ConfigError

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def check_is_settings(mode: str | None, cap_max: float | None, cap_min: float | None, key: str) -> None:
    """One-line ConfigError for an unknown mode or bounds that leave no weight (``key``: where they are set)."""
    if mode is None:
        return
    if mode not in IS_MODES:
        raise ConfigError(f"{key}.rollout_is: {mode!r} is unknown; expected one of {', '.join(IS_MODES)} or null (off)")
    if cap_max is not None and cap_max <= 0:
        raise ConfigError(f"{key}.rollout_is_max: must be > 0 (or null: no upper bound), got {cap_max}")
    if cap_min is not None and (cap_min < 0 or (cap_max is not None and cap_min >= cap_max)):
        raise ConfigError(f"{key}.rollout_is_min: must be >= 0 and below rollout_is_max ({cap_max}), got {cap_min}")
    if mode.endswith("truncate") and cap_max is None and cap_min is None:
        raise ConfigError(f"{key}.rollout_is: {mode!r} clamps the ratio to [rollout_is_min, rollout_is_max], and both "
                          "are null (give rollout_is_max, e.g. 3.0)")


def check_sampler_spec(mode: str | None, spec, on_policy: bool, key: str) -> None:
    """Refuse a sequence-level correction of an off-policy engine that samples with top-k / top-p: the
    engine's log-probs are its truncated distribution's (each token's at least the full one's) while
    the update scores the full distribution, so every token's ratio is <= 1 and a sequence's, their
    product, shrinks with its length (0.95 a token over 96 tokens: 0.007), scaling its policy term
    down by orders of magnitude. Token modes keep each token's own ratio (mildly below 1)."""
    if mode is None or on_policy or not mode.startswith("sequence"):
        return
    top_p = spec.top_p if spec.top_p is not None else 1.0
    if top_p < 1.0 or spec.top_k:
        raise ConfigError(
            f"{key}.rollout_is: {mode!r} multiplies a sequence's token ratios, and the rollouts sample with "
            f"top_p {top_p:g} / top_k {spec.top_k or 0}: the engine's log-probs are of that truncated distribution "
            "and the update scores the full one, so every ratio is <= 1 and the product shrinks with the length; "
            "sample with top_p: 1.0 and top_k: 0, or use rollout_is: token_truncate (or null)")


@torch.no_grad()
def sampler_is_weights(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor,
                       mode: str = "sequence_mask", cap_max: float | None = 3.0,
                       cap_min: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(N, T) weights for the policy term of each completion token, and metrics.

    ``train_logps`` / ``sampler_logps``: (N, T) log-probs of the sampled tokens under the trainer's
    forward (before the update) and under the engine's sampler (NaN where unknown); ``mask`` (N, T)
    the completion tokens. Padding gets weight 0. Metrics (over completion tokens; the ratio's over
    sequences in the sequence modes): ``sampler/logp_diff_mean`` / ``_max`` (|log pi_old - log
    pi_sampler|, known tokens only), ``sampler/unknown_frac`` (the share of tokens without a sampler
    log-prob: they weigh as if the two agreed), ``sampler/is_ratio_min`` / ``_mean`` / ``_max``
    (before the bounds), ``sampler/is_bounded_frac`` (the share truncated or masked; a NaN ratio, from
    infinite log-probs, counts there and weighs 0).
    """
    if mode not in IS_MODES:
        raise ValueError(f"sampler_is_weights: mode {mode!r} is not one of {', '.join(IS_MODES)}")
    valid = mask.bool()
    diff = train_logps.float() - sampler_logps.float()
    known = valid & ~torch.isnan(diff)
    diff = torch.where(known, diff, torch.zeros_like(diff))
    if mode.startswith("sequence"):
        log_rho = diff.sum(1, keepdim=True)              # (N, 1)
        units = valid.any(1, keepdim=True)              # sequences with a token
    else:
        log_rho, units = diff, valid
    rho = torch.exp(log_rho)
    lo = cap_min if cap_min is not None else -math.inf
    hi = cap_max if cap_max is not None else math.inf
    bad = torch.isnan(rho)
    outside = (rho < lo) | (rho > hi) | bad
    if mode.endswith("truncate"):
        w = rho.clamp(min=cap_min, max=cap_max).masked_fill(bad, 0.0)
    else:
        w = rho.masked_fill(outside, 0.0)
    weights = w.expand_as(diff) * valid.to(w.dtype)
    metrics: dict[str, float] = {}
    d = diff.abs()[known]
    metrics["sampler/logp_diff_mean"] = float(d.mean()) if d.numel() else 0.0
    metrics["sampler/logp_diff_max"] = float(d.max()) if d.numel() else 0.0
    n_valid = int(valid.sum())
    metrics["sampler/unknown_frac"] = float((valid & ~known).sum()) / n_valid if n_valid else 0.0
    r = rho[units]
    if r.numel():
        metrics.update({"sampler/is_ratio_min": float(r.min()), "sampler/is_ratio_mean": float(r.mean()),
                        "sampler/is_ratio_max": float(r.max()),
                        "sampler/is_bounded_frac": float(outside[units].float().mean())})
    return weights, metrics
