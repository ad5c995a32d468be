"""DPO sigmoid loss (pure), with conservative label smoothing (cDPO) as in TRL."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0):
    """Return (losses (B,), chosen_rewards (B,), rejected_rewards (B,)).

    logits = (pi_c - pi_r) - (ref_c - ref_r);
    loss = -(1 - ls) * logsigmoid(beta * logits) - ls * logsigmoid(-beta * logits);
    rewards = beta * (policy - reference), detached.
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen, rejected


def dpo_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins."""
    return {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
    }
