"""Hugging Face engine for rollouts: batched, left-padded prompts, KV cache, sampling params.

With ``prefix_sharing`` (default) each prompt is prefilled once and its keys and values are copied
G times into a preallocated ``StaticCache`` sized for prompt + ``max_new_tokens``; a decode loop
then writes one position per step in place (a growing cache re-copies every layer's keys and
values at every token). Tokens are drawn with transformers' own logits warpers (temperature,
top-k, top-p) and the Gumbel-max trick (argmax of logits + Gumbel noise: exactly a draw from
softmax(logits), without ``torch.multinomial``'s slow exponential draw on CPU). The decode loop
is :class:`taosr.rl.engines.graph.StaticDecoder`: on CUDA its one-token step is captured as a
CUDA graph per batch-size bucket and replayed (``cuda_graphs=False`` turns that off); on CPU the
same step runs eagerly. Otherwise ``model.generate`` with ``num_return_sequences=G``. Both give
right-padded completion ids with the G completions of a prompt contiguous; greedy decoding gives
the same tokens either way (tested). Temperature 0 is greedy.
"""
from __future__ import annotations

import torch

from taosr.errors import ConfigError
from taosr.eval.generation import GenerationSpec, generation_config_extras, hf_generate_ids
from taosr.models.kvcache import cache_kwargs, output_cache, written_static_cache
from taosr.rl.engines.graph import decoder_for, gumbel_max_sample, make_sampler, warpers

__all__ = ["HFEngine", "gumbel_max_sample", "sample_shared_prefix", "warpers"]


@torch.no_grad()
def sample_shared_prefix(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         spec: GenerationSpec, static_cache: bool = True, cuda_graphs: bool = True) -> torch.Tensor:
    """G completions per prompt from one prefill. ``static_cache``: the :class:`StaticDecoder` of the
    model (CUDA graphs on CUDA unless ``cuda_graphs`` is off; eager steps read only the cache
    positions written so far: ~10% less time per CPU rollout, ``benchmarks/rollout_rows.py``);
    otherwise a growing cache (reference)."""
    if static_cache and written_static_cache(model.config, 1) is not None:
        # (a sliding-window or hybrid cache keeps only its window: copied into the decoder's slots, its
        # keys no longer lined up with a left-padded prompt's absolute mask; the growing cache is exact)
        return decoder_for(model).generate(model, tokenizer, input_ids, attention_mask, spec, cuda_graphs=cuda_graphs,
                                           written_only=True)
    G = max(1, spec.num_return_sequences)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    T = spec.max_new_tokens
    was_training = model.training
    model.eval()
    try:
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        cache = output_cache(out)
        cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].repeat_interleave(G, 0)
        N, P = logits.shape[0], input_ids.shape[1]
        att = torch.ones(N, P + T, dtype=attention_mask.dtype, device=attention_mask.device)
        att[:, :P] = attention_mask.repeat_interleave(G, 0)
        nxt = pos[:, -1:].repeat_interleave(G, 0) + 1
        sampler = make_sampler(spec)
        done = torch.zeros(N, dtype=torch.bool, device=logits.device)
        toks = torch.full((N, max(T, 1)), pad, dtype=torch.long, device=logits.device)
        n = 0
        for t in range(T):
            nt = sampler(logits).masked_fill(done, pad)
            toks[:, t] = nt
            n = t + 1
            done |= nt == eos
            if t == T - 1 or bool(done.all()):
                break
            out = model(input_ids=nt[:, None], attention_mask=att[:, :P + t + 1], position_ids=nxt,
                        use_cache=True, **cache_kwargs(model, cache))
            cache, logits, nxt = output_cache(out), out.logits[:, -1], nxt + 1
        return toks[:, :max(n, 1)]
    finally:
        if was_training:
            model.train()


class HFEngine:
    """Samples from the training model itself. ``cuda_graphs``: capture the decode step on CUDA
    (also switchable per spec with ``generation.cuda_graphs``)."""

    def __init__(self, prefix_sharing: bool = True, static_cache: bool = True, cuda_graphs: bool = True):
        self.prefix_sharing, self.static_cache, self.cuda_graphs = prefix_sharing, static_cache, cuda_graphs
        # taosr's samplers stop a row at the tokenizer's eos only, so a row without it ran the whole
        # width (a pad token it sampled last is its own); generate may stop on other eos ids
        self.ragged = not prefix_sharing

    def sync_weights(self, model) -> None:  # samples straight from the training model
        return None

    def sample(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               spec: GenerationSpec) -> tuple[torch.Tensor, None]:
        """The ids; no sampler log-probs (the sampler is the trainer's own model: on-policy)."""
        return self.generate(model, tokenizer, input_ids, attention_mask, spec), None

    def generate(self, model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec) -> torch.Tensor:
        if self.prefix_sharing:
            return sample_shared_prefix(model, tokenizer, input_ids, attention_mask, spec,
                                        static_cache=self.static_cache, cuda_graphs=self.cuda_graphs)
        extras = generation_config_extras(model)
        if extras:  # generate applies them; the update scores plain draws from the warpers: off-policy
            raise ConfigError(
                f"rollout engine hf: prefix_sharing: false samples with model.generate, which applies the model's "
                f"generation_config ({', '.join(extras)}), but the update scores plain draws: keep prefix_sharing: "
                f"true (the default, which ignores them) or clear them in the model folder's generation_config.json")
        return hf_generate_ids(model, tokenizer, input_ids, attention_mask, spec)
