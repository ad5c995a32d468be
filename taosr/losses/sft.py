"""SFT loss and log-prob helpers (pure)."""
from __future__ import annotations

import torch


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: (B, T, V), (B, T) -> (B, T), in float32 via logsumexp."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, max_elements: int = 2 ** 24) -> torch.Tensor:
    """Entropy of each position's next-token distribution: (B, T, V) -> (B, T) float32, no gradient.

    With ``d`` the logits less their maximum, ``e = exp(d)`` and ``z = sum(e)``, the entropy is
    ``log z - sum(e * d) / z``; computed a chunk of rows at a time (as many as keep a chunk within
    ``max_elements`` values, at least one) with ``e * d`` made in place, so the extra memory is about
    two chunks of float32 (128 MiB by default), not the three whole micro-batches of a log-softmax,
    its exp and their product: with a 150k vocabulary and long completions those are gigabytes (TRL
    chunks its entropy for the same reason). Logits are a model's raw output (finite)."""
    rows = max(1, max_elements // max(1, logits.shape[1] * logits.shape[2]))
    out = []
    for c in logits.split(rows):
        d = c.float() - c.amax(-1, keepdim=True).float()
        e = d.exp()
        z = e.sum(-1)
        out.append(z.log() - e.mul_(d).sum(-1) / z)
    return torch.cat(out) if out else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)


def shift_for_causal_lm(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Align position t's logits with token t+1: (logits[:, :-1], ids[:, 1:], mask[:, 1:])."""
    return logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over the tokens marked in ``loss_mask`` (1 = target)."""
    lg, tg, m = shift_for_causal_lm(logits, input_ids, loss_mask)
    m = m.float()
    return -(gather_logprobs(lg, tg) * m).sum() / m.sum().clamp(min=1.0)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the masked target tokens of each row: (B,)."""
    lg, tg, m = shift_for_causal_lm(logits, input_ids, loss_mask)
    return (gather_logprobs(lg, tg) * m.float()).sum(-1)
