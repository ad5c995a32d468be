"""Rollout engines: the HF engine samples G completions per prompt; the vLLM engine's weight-name
mapping (plain and LoRA-merged) and its clear error without vLLM installed."""
import importlib.util

import pytest
import torch

from taosr.errors import ConfigError
from taosr.rl.engines import make_engine
from taosr.rl.engines.vllm_engine import vllm_weight_items


def test_plain_names_pass_through():
    items = [("model.layers.0.self_attn.q_proj.weight", torch.zeros(1)), ("lm_head.weight", torch.zeros(1))]
    assert [n for n, _ in vllm_weight_items(items, peft=False)] == [n for n, _ in items]


def test_lora_merged_names_are_base_names(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    base_names = set(base.state_dict())
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    mapped = dict(vllm_weight_items(peft.state_dict().items(), peft=True))
    assert set(mapped) == base_names  # every base weight once, no lora_A/B, no wrapper prefixes
    assert not any("lora_" in n or "base_layer" in n for n in mapped)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_vllm_missing_gives_clear_error():
    with pytest.raises(ConfigError, match=r"pip install 'taosr\[vllm\]'"):
        make_engine("vllm")
    with pytest.raises(ConfigError, match="unknown"):
        make_engine("trt")


def test_shared_prefix_sampler_greedy_equals_generate():
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.eval.generation import GenerationSpec, generate_ids
    from taosr.rl.engines.hf import HFEngine

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2,
                                         bos_token_id=1)).eval()

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    ids = torch.randint(3, 40, (3, 6))
    att = torch.ones_like(ids)
    att[1, :2] = 0
    ids[1, :2] = 0
    spec = GenerationSpec(max_new_tokens=8, do_sample=False, num_return_sequences=1)
    ours = HFEngine(prefix_sharing=True).generate(model, Tok, ids, att, spec)
    grown = HFEngine(prefix_sharing=True, static_cache=False).generate(model, Tok, ids, att, spec)
    ref = generate_ids(model, Tok, ids, att, spec)
    n = min(ours.shape[1], ref.shape[1])
    assert torch.equal(ours[:, :n], ref[:, :n])
    assert torch.equal(ours, grown)
    # G copies of a prompt decode greedily to the same tokens as the prompt alone
    rep = HFEngine().generate(model, Tok, ids, att, GenerationSpec(max_new_tokens=8, do_sample=False,
                                                                   num_return_sequences=3))
    assert torch.equal(rep, ours.repeat_interleave(3, 0))
    # no padding at all (an all-ones mask): the static cache's unwritten slots must stay masked
    full = torch.ones_like(ids)
    assert torch.equal(HFEngine().generate(model, Tok, ids, full, spec),
                       HFEngine(static_cache=False).generate(model, Tok, ids, full, spec))
    sampled = HFEngine().generate(model, Tok, ids, att, GenerationSpec(max_new_tokens=8, do_sample=True, top_k=5,
                                                                      top_p=0.9, temperature=0.7, num_return_sequences=4))
    assert sampled.shape[0] == 12


def test_gumbel_max_sample_draws_from_softmax():
    from taosr.rl.engines.hf import gumbel_max_sample

    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    scores = probs.log().expand(40000, 4)  # the zero-probability entry is -inf, as after top-k/top-p
    g = torch.Generator().manual_seed(0)
    draws = gumbel_max_sample(scores, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[3] == 0
    assert torch.allclose(freq, probs, atol=0.01)
    # temperature-scaled scores: a sharper distribution, still the softmax of what is passed
    sharp = torch.softmax(probs.log() / 0.5, -1)
    freq2 = torch.bincount(gumbel_max_sample(scores / 0.5, generator=g), minlength=4).float() / len(draws)
    assert torch.allclose(freq2, sharp, atol=0.01)
