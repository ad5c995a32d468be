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
    ``log z - sum(e * d) / z``, computed a chunk at a time with ``e * d`` made in place: whole rows
    while a row has at most ``max_elements`` values, else positions of one row. So the extra memory
    is two chunks of at most ``max_elements`` float32 values (64 MiB each by default), not the three
    whole micro-batches of a log-softmax, its exp and their product: with a 150k vocabulary and long
    completions those are gigabytes (TRL chunks its entropy for the same reason). Logits are a
    model's raw output (finite)."""
    B, T, V = logits.shape
    out = torch.empty((B, T), dtype=torch.float32, device=logits.device)
    if T * V <= max_elements:
        n = max_elements // max(1, T * V)
        spans = [(slice(b, b + n), slice(None)) for b in range(0, B, n)]
    else:  # a row alone is over the budget: pieces of one row's positions
        n = max(1, max_elements // max(1, V))
        spans = [(slice(b, b + 1), slice(t, t + n)) for b in range(B) for t in range(0, T, n)]
    for rows, positions in spans:
        c = logits[rows, positions]
        d = c.float() - c.amax(-1, keepdim=True).float()
        e = d.exp()
        z = e.sum(-1)
        out[rows, positions] = z.log() - e.mul_(d).sum(-1) / z
        del d, e  # freed before the next chunk's are made
    return out


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
