"""SFT loss and log-prob helpers (pure)."""
from __future__ import annotations

import torch


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: (B, T, V), (B, T) -> (B, T), in float32 via logsumexp."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


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
