"""Hugging Face engine for rollouts: batched, left-padded prompts, KV cache, sampling params.

With ``prefix_sharing`` (default) each prompt is prefilled once and its KV cache is shared by its
G completions, then a plain decode loop samples with transformers' own logits warpers
(temperature, top-k, top-p); otherwise ``model.generate`` with ``num_return_sequences=G``.
Both give right-padded completion ids with the G completions of a prompt contiguous; greedy
decoding gives the same tokens either way (tested).
"""
from __future__ import annotations

import torch

from taosr.eval.generation import GenerationSpec, generate_ids


def _warpers(spec: GenerationSpec):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if spec.do_sample:
        if spec.temperature and spec.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(spec.temperature))
        if spec.top_k:
            procs.append(TopKLogitsWarper(spec.top_k))
        if spec.top_p is not None and spec.top_p < 1.0:
            procs.append(TopPLogitsWarper(spec.top_p))
    return procs


@torch.no_grad()
def sample_shared_prefix(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         spec: GenerationSpec) -> torch.Tensor:
    G = max(1, spec.num_return_sequences)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].repeat_interleave(G, 0)
        att = attention_mask.repeat_interleave(G, 0)
        nxt = pos[:, -1:].repeat_interleave(G, 0) + 1
        procs = _warpers(spec)
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        toks = []
        ones = torch.ones(att.shape[0], 1, dtype=att.dtype, device=att.device)
        for _ in range(spec.max_new_tokens):
            scores = procs(None, logits.float())
            if spec.do_sample:
                nt = torch.multinomial(torch.softmax(scores, -1), 1).squeeze(1)
            else:
                nt = scores.argmax(-1)
            nt = torch.where(done, torch.full_like(nt, pad), nt)
            toks.append(nt)
            done |= nt == eos
            if bool(done.all()):
                break
            att = torch.cat([att, ones], 1)
            out = model(input_ids=nt[:, None], attention_mask=att, position_ids=nxt, past_key_values=cache, use_cache=True)
            cache, logits, nxt = out.past_key_values, out.logits[:, -1], nxt + 1
        return torch.stack(toks, 1) if toks else torch.full((logits.shape[0], 1), pad, dtype=torch.long)
    finally:
        if was_training:
            model.train()


class HFEngine:
    def __init__(self, prefix_sharing: bool = True):
        self.prefix_sharing = prefix_sharing

    def sync_weights(self, model) -> None:  # samples straight from the training model
        return None

    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec) -> torch.Tensor:
        if self.prefix_sharing:
            return sample_shared_prefix(model, tokenizer, input_ids, attention_mask, spec)
        return generate_ids(model, tokenizer, input_ids, attention_mask, spec)
