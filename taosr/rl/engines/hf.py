"""Hugging Face ``generate`` engine: batched, left padded prompts, KV cache, sampling params."""
from __future__ import annotations

import torch

from taosr.eval.generation import GenerationSpec, generate_ids


class HFEngine:
    def sync_weights(self, model) -> None:  # samples straight from the training model
        return None

    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec) -> torch.Tensor:
        return generate_ids(model, tokenizer, input_ids, attention_mask, spec)
