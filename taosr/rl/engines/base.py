from __future__ import annotations

from typing import Protocol

import torch

from taosr.eval.generation import GenerationSpec


class RolloutEngine(Protocol):
    def sync_weights(self, model) -> None:
        """Make the engine sample from the trainer's current weights."""

    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec) -> torch.Tensor:
        """Completion ids (B * spec.num_return_sequences, L), right padded with pad_token_id;
        the completions of one prompt are contiguous. An engine's ``ragged`` attribute (default
        True) says whether a row without eos may end before L (then it ends at its last non-pad
        token; :func:`taosr.eval.generation.completion_lengths`)."""

    def sample(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               spec: GenerationSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``generate``'s ids and, where the engine reports them, the sampler's log-prob of each
        token (same shape, after its temperature / top-k / top-p; NaN where unknown), else None.
        Rollouts call this: an off-policy engine's log-probs drive the importance-sampling
        correction (:mod:`taosr.rl.sampler_correction`)."""
