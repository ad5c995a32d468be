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
