"""taosr.models.kvcache: the cache argument's name before and after transformers' rename, through peft,
and the decoder and shared-prefix update run without the deprecated name."""
import warnings
from types import SimpleNamespace

import torch

from taosr.models.kvcache import cache_kwargs, output_cache
from tests.conftest import TinyTok, tiny_llama


class Old(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids


class New(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return input_ids


class Wrapper(torch.nn.Module):  # peft's PeftModelForCausalLM: forward(*args, **kwargs)
    def __init__(self, base):
        super().__init__()
        self.base = base

    def get_base_model(self):
        return self.base

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)


def test_the_argument_name_follows_the_model_and_looks_through_peft():
    c = object()
    assert cache_kwargs(Old(), c) == {"past_key_values": c}
    assert cache_kwargs(New(), c) == {"cache": c}
    assert cache_kwargs(Wrapper(New()), c) == {"cache": c} and cache_kwargs(Wrapper(Old()), c) == {"past_key_values": c}


def test_output_cache_reads_either_field():
    a, b = object(), object()
    assert output_cache(SimpleNamespace(cache=a, past_key_values=b)) is a
    assert output_cache(SimpleNamespace(past_key_values=b)) is b
    assert output_cache(SimpleNamespace(cache=None, past_key_values=b)) is b


def test_decoding_passes_the_cache_under_the_installed_name():
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.hf import HFEngine

    model = tiny_llama()
    ids = torch.randint(3, 40, (2, 5))
    spec = GenerationSpec(max_new_tokens=4, do_sample=False, num_return_sequences=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*deprecated", category=FutureWarning)
        for static in (True, False):
            out = HFEngine(static_cache=static).generate(model, TinyTok, ids, torch.ones_like(ids), spec)
            assert out.shape[0] == 4


def test_written_static_cache_hands_attention_the_written_positions_only():
    from transformers import LlamaConfig, MistralConfig

    from taosr.models.kvcache import written_static_cache

    small = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32, vocab_size=50)
    cache = written_static_cache(LlamaConfig(**small), 10)
    layer = cache.layers[0]
    assert layer.get_mask_sizes(3) == (3, 0)  # nothing written yet: the query's own positions
    k, v = layer.update(torch.ones(2, 2, 3, 16), torch.ones(2, 2, 3, 16))
    assert k.shape == v.shape == (2, 2, 3, 16) and layer.keys.shape[2] == 10  # preallocated, viewed
    assert layer.get_mask_sizes(1) == (4, 0)
    k, _ = layer.update(torch.full((2, 2, 1, 16), 2.0), torch.zeros(2, 2, 1, 16))
    assert k.shape[2] == 4 and k.data_ptr() == layer.keys.data_ptr() and float(k[0, 0, 3, 0]) == 2.0
    cache.reset()
    assert layer.get_mask_sizes(1) == (1, 0)
    # sliding-window (or hybrid) caches keep their own layers: no written-only cache for them
    assert written_static_cache(MistralConfig(**small, sliding_window=4), 10) is None
