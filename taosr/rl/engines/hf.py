"""Hugging Face engine for rollouts: batched, left-padded prompts, KV cache, sampling params.

With ``prefix_sharing`` (default) each prompt is prefilled once and its keys and values are copied
G times into a preallocated ``StaticCache`` sized for prompt + ``max_new_tokens``; a plain decode
loop then writes one position per step in place (a growing cache re-copies every layer's keys
and values at every token). Tokens are drawn with transformers' own logits warpers (temperature,
top-k, top-p) and the Gumbel-max trick (argmax of logits + Gumbel noise: exactly a draw from
softmax(logits), without ``torch.multinomial``'s slow exponential draw on CPU). Otherwise
``model.generate`` with ``num_return_sequences=G``. Both give right-padded completion ids with
the G completions of a prompt contiguous; greedy decoding gives the same tokens either way (tested).
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


def gumbel_max_sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row drawn from softmax(scores): argmax(scores + G), G ~ Gumbel(0, 1) i.i.d.
    Masked entries (-inf) are never drawn."""
    u = torch.rand(scores.shape, dtype=scores.dtype, device=scores.device, generator=generator)
    return (scores - u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_()).argmax(-1)


def _static_cache(model, prefill_cache, G: int, max_len: int):
    """A StaticCache of batch B*G holding the prefill's keys and values, each row repeated G times."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=max_len)
    for dst, src in zip(cache.layers, prefill_cache.layers):
        dst.update(src.keys.repeat_interleave(G, 0), src.values.repeat_interleave(G, 0))
    return cache


@torch.no_grad()
def sample_shared_prefix(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         spec: GenerationSpec, static_cache: bool = True) -> torch.Tensor:
    G = max(1, spec.num_return_sequences)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    P, T = input_ids.shape[1], spec.max_new_tokens
    was_training = model.training
    model.eval()
    try:
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        if static_cache:
            cache = _static_cache(model, out.past_key_values, G, P + T)
        else:
            cache = out.past_key_values
            cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].repeat_interleave(G, 0)
        N = logits.shape[0]
        # the whole mask up front: prompt padding stays masked, every generated position is
        # attended (causality hides the positions not written yet)
        att = torch.ones(N, P + T, dtype=attention_mask.dtype, device=attention_mask.device)
        att[:, :P] = attention_mask.repeat_interleave(G, 0)
        nxt = pos[:, -1:].repeat_interleave(G, 0) + 1
        procs = _warpers(spec)
        done = torch.zeros(N, dtype=torch.bool, device=logits.device)
        toks = torch.full((N, max(T, 1)), pad, dtype=torch.long, device=logits.device)
        n = 0
        for t in range(T):
            scores = procs(None, logits.float())
            nt = gumbel_max_sample(scores) if spec.do_sample else scores.argmax(-1)
            nt = nt.masked_fill(done, pad)
            toks[:, t] = nt
            n = t + 1
            done |= nt == eos
            if t == T - 1 or bool(done.all()):
                break
            out = model(input_ids=nt[:, None], attention_mask=att[:, :P + t + 1] if not static_cache else att,
                        position_ids=nxt, past_key_values=cache, use_cache=True)
            cache, logits, nxt = out.past_key_values, out.logits[:, -1], nxt + 1
        return toks[:, :max(n, 1)]
    finally:
        if was_training:
            model.train()


class HFEngine:
    def __init__(self, prefix_sharing: bool = True, static_cache: bool = True):
        self.prefix_sharing, self.static_cache = prefix_sharing, static_cache

    def sync_weights(self, model) -> None:  # samples straight from the training model
        return None

    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec) -> torch.Tensor:
        if self.prefix_sharing:
            return sample_shared_prefix(model, tokenizer, input_ids, attention_mask, spec, static_cache=self.static_cache)
        return generate_ids(model, tokenizer, input_ids, attention_mask, spec)
