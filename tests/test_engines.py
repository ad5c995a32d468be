"""Rollout engines: the HF engine samples G completions per prompt; the vLLM engine's weight-name
mapping (plain and LoRA-merged) and its clear error without vLLM installed."""
import contextlib
import importlib.util
import weakref

import pytest
import torch

from taosr.errors import ConfigError
from taosr.rl.engines import make_engine
from taosr.rl.engines.vllm_engine import vllm_weight_items
from tests.conftest import TinyTok, tiny_llama


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


def test_adapter_versions_keep_only_the_latest_folder():
    """lora_sync: adapter writes the adapter at every sync (about 20 MB for SmolLM2 r16): only the
    version vLLM will load next stays on disk, under one temporary root."""
    import os

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.rl.engines.vllm_engine import AdapterVersions

    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    versions = AdapterVersions()
    try:
        first = versions.save(peft)
        second = versions.save(peft)
        assert versions.version == 2 and second != first and not os.path.exists(first)
        assert os.listdir(versions.root) == ["v2"] and "adapter_config.json" in os.listdir(second)
        # a frozen reference adapter (an adapter-only start's DPO/GRPO reference) is not synced to vLLM
        from taosr.models.factory import REFERENCE_ADAPTER

        peft.add_adapter(REFERENCE_ADAPTER, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        third = versions.save(peft)
        assert REFERENCE_ADAPTER not in os.listdir(third) and "adapter_config.json" in os.listdir(third)
    finally:
        import shutil

        shutil.rmtree(versions.root, ignore_errors=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_vllm_missing_gives_clear_error():
    with pytest.raises(ConfigError, match=r"pip install 'taosr\[vllm\]'"):
        make_engine("vllm")
    with pytest.raises(ConfigError, match="unknown"):
        make_engine("trt")


def test_shared_prefix_sampler_greedy_equals_generate():
    from taosr.eval.generation import GenerationSpec, hf_generate_ids as generate_ids
    from taosr.rl.engines.hf import HFEngine

    model, Tok = tiny_llama(seed=0), TinyTok  # the global generator continues from the model's seed
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


# ---------------------------------------------------------------------------- the static decoder

def _prompts(B: int = 3, P: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (B, P), generator=g)
    att = torch.ones_like(ids)
    att[1 % B, :2] = 0
    ids[1 % B, :2] = 0
    return ids, att


class _Replayer:
    """Stands in for a captured CUDA graph on CPU: capture records nothing and runs nothing (as a real
    capture), replay runs the step eagerly on the same static buffers (as a real replay)."""

    def __init__(self, step):
        self.step, self.replays = step, 0

    def replay(self):
        self.replays += 1
        self.step()


def _graph_decoder(**kw):
    from taosr.rl.engines.graph import StaticDecoder

    d = StaticDecoder(**kw)
    d._graph_devices = ("cpu",)  # take the CUDA branch (buckets, rounded cache, capture, sparse sync) on CPU
    d._capture = lambda step, pool: _Replayer(step)
    return d


def _greedy(T=10, G=1):
    from taosr.eval.generation import GenerationSpec

    return GenerationSpec(max_new_tokens=T, do_sample=False, num_return_sequences=G)


def _same_tokens(a, b):
    n = min(a.shape[1], b.shape[1])
    return torch.equal(a[:, :n], b[:, :n])


def test_graph_path_greedy_equals_generate_with_buckets_and_reuse():
    """The CUDA code path minus the capture itself: the batch padded to a bucket (5 rows -> 6), the cache
    rounded to 128 positions, warm-up steps, capture, replays with the all-finished check every 4 tokens;
    the graph is reused by later calls (other prompt lengths, other prompts) and greedy output stays
    `generate`'s."""
    from taosr.eval.generation import hf_generate_ids

    model = tiny_llama()
    d = _graph_decoder(sync_every=4, warmup=2)
    ids, att = _prompts(B=5, P=6)
    ref = hf_generate_ids(model, TinyTok, ids, att, _greedy())
    out = d.generate(model, TinyTok, ids, att, _greedy())
    assert _same_tokens(out, ref) and out.shape[0] == 5
    (slot,) = d.slots.values()
    assert slot.batch == 6 and slot.cache_len == 128 and d.captures == 1
    graph = next(iter(slot.graphs.values()))
    assert graph.replays == 10 - 1 - 2  # first token from the prefill, 2 warm-up steps, the rest replayed
    # a second call, longer prompts within the same cache bucket: no new capture, every step replayed
    ids2, att2 = _prompts(B=6, P=9, seed=3)
    out2 = d.generate(model, TinyTok, ids2, att2, _greedy())
    assert d.captures == 1 and graph.replays == 7 + 9 and len(d.slots) == 1
    assert _same_tokens(out2, hf_generate_ids(model, TinyTok, ids2, att2, _greedy()))
    # G copies of each prompt decode greedily to the prompt's own tokens
    rep = d.generate(model, TinyTok, ids, att, _greedy(G=3))
    assert torch.equal(rep, out.repeat_interleave(3, 0)[:, :rep.shape[1]]) and rep.shape[1] == out.shape[1]


def test_graph_path_output_length_and_padding_match_the_eager_path():
    """Both paths return the same tensor (columns up to the last row's eos) for greedy and for seeded sampling."""
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.graph import StaticDecoder

    model = tiny_llama(seed=4)
    with torch.no_grad():  # make eos likely so rows finish at different steps
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight.std() * torch.randn(32).sign()
    ids, att = _prompts(B=3, P=5, seed=7)
    for spec in (_greedy(T=24, G=2), GenerationSpec(max_new_tokens=24, do_sample=True, temperature=0.8, top_k=6,
                                                    top_p=0.9, num_return_sequences=2)):
        torch.manual_seed(0)
        eager = StaticDecoder().generate(model, TinyTok, ids, att, spec)
        torch.manual_seed(0)
        graphed = _graph_decoder(sync_every=8).generate(model, TinyTok, ids, att, spec)
        if not spec.do_sample:
            assert torch.equal(eager, graphed)
        else:  # padding rows draw noise too, so the draws differ; shape rules and eos/pad layout still hold
            assert graphed.shape[0] == eager.shape[0] == 6
        for out in (eager, graphed):
            ended = (out == 2).any(1)
            first = torch.where(ended, (out == 2).float().argmax(1), torch.full((6,), out.shape[1]))
            after = torch.arange(out.shape[1])[None] > first[:, None]
            assert (out[after] == 0).all()  # pad after each row's eos
            assert ended.all() or out.shape[1] == 24  # trimmed to the last eos unless a row ran to the budget
            assert not ended.all() or (first.max() == out.shape[1] - 1)


def test_graphs_see_in_place_updates_and_recapture_when_weights_are_replaced():
    from taosr.eval.generation import hf_generate_ids

    model = tiny_llama(seed=2)
    d = _graph_decoder(sync_every=2)
    ids, att = _prompts()
    d.generate(model, TinyTok, ids, att, _greedy())
    assert d.captures == 1
    with torch.no_grad():  # what the optimizer does: in place, same storage
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = d.generate(model, TinyTok, ids, att, _greedy())
    assert d.captures == 1  # reused...
    assert _same_tokens(out, hf_generate_ids(model, TinyTok, ids, att, _greedy()))  # ...and decoding the new weights
    model.model.embed_tokens.weight.data = model.model.embed_tokens.weight.data.clone()  # a replaced tensor
    d.generate(model, TinyTok, ids, att, _greedy())
    assert d.captures == 2
    # another sampling rule is another graph on the same slot
    from taosr.eval.generation import GenerationSpec
    d.generate(model, TinyTok, ids, att, GenerationSpec(max_new_tokens=10, do_sample=True, temperature=0.7))
    assert d.captures == 3 and len(next(iter(d.slots.values())).graphs) == 2


class _PoolRule:
    """Captures under the caching allocator's rule for graph memory pools (torch 2.11,
    ``create_or_incref_pool``): any number of live graphs may share a pool, but once a pool's last graph
    is freed its id stays known with no user and a capture into it fails an internal assert."""

    def __init__(self):
        self.users, self.made = {}, 0

    def new_pool(self):
        self.made += 1
        return ("pool", self.made)

    def capture(self, step, pool):
        if self.users.get(pool) == 0:
            raise RuntimeError("it->second->use_count > 0 INTERNAL ASSERT FAILED")
        self.users[pool] = self.users.get(pool, 0) + 1
        g = _Replayer(step)

        def freed():
            self.users[pool] -= 1

        weakref.finalize(g, freed)
        return g


def test_recapture_after_every_graph_was_freed_takes_a_new_pool():
    """Replaced weights drop every graph, and a longer cache replaces a bucket's slot with its graphs:
    the next capture must not reuse the freed pool (the first GPU run's failure), while graphs alive
    side by side keep sharing one."""
    import warnings

    from taosr.eval.generation import hf_generate_ids

    model = tiny_llama(seed=2)
    d = _graph_decoder()
    rule = _PoolRule()
    d._capture, d._new_pool = rule.capture, rule.new_pool
    ids, att = _prompts()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture would warn and decode eagerly
        d.generate(model, TinyTok, ids, att, _greedy())
        ids5, att5 = _prompts(B=5)
        d.generate(model, TinyTok, ids5, att5, _greedy())  # a second bucket, alive beside the first
        assert d.captures == 2 and rule.made == 1
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # replaced
        out = d.generate(model, TinyTok, ids, att, _greedy())
        assert d.captures == 3 and rule.made == 2 and not d.capture_failed
        assert _same_tokens(out, hf_generate_ids(model, TinyTok, ids, att, _greedy()))
        for s in list(d.slots.values()):  # only the 4-row bucket has a graph now
            if s.batch != 4:
                s.graphs.clear()
        long_ids, long_att = _prompts(B=4, P=120)  # outgrows the 128-position cache: the slot is replaced
        d.generate(model, TinyTok, long_ids, long_att, _greedy())
        assert d.captures == 4 and rule.made == 3 and not d.capture_failed


def test_weights_signature_sees_lora_merge_and_disabled_adapters():
    from peft import LoraConfig, get_peft_model

    from taosr.rl.engines.graph import weights_signature

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    sig = weights_signature(model)
    assert weights_signature(model) == sig
    with model.disable_adapter():
        assert weights_signature(model) != sig
    assert weights_signature(model) == sig
    model.merge_adapter()
    assert weights_signature(model) != sig
    model.unmerge_adapter()
    assert weights_signature(model) == sig
    model.to(torch.float64)  # replaces every parameter tensor
    assert weights_signature(model)[0] != sig[0]


def test_capture_failure_falls_back_with_one_warning():
    from taosr.eval.generation import hf_generate_ids

    model = tiny_llama()
    d = _graph_decoder(warmup=1)

    def broken(step, pool):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    d._capture = broken
    ids, att = _prompts()
    with pytest.warns(RuntimeWarning, match=r"capture failed \(RuntimeError: operation not permitted") as rec:
        out = d.generate(model, TinyTok, ids, att, _greedy())
    mine = [w for w in rec if issubclass(w.category, RuntimeWarning)]
    assert len(mine) == 1 and "\n" not in str(mine[0].message)
    assert d.capture_failed and _same_tokens(out, hf_generate_ids(model, TinyTok, ids, att, _greedy()))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no second attempt, no second warning
        again = d.generate(model, TinyTok, ids, att, _greedy())
    assert torch.equal(again[:, :out.shape[1]], out[:, :again.shape[1]])


def test_cuda_graphs_off_keeps_the_eager_path():
    from taosr.eval.generation import GenerationSpec

    model = tiny_llama()
    d = _graph_decoder()
    ids, att = _prompts()
    off = GenerationSpec(max_new_tokens=8, cuda_graphs=False)
    d.generate(model, TinyTok, ids, att, off)
    d.generate(model, TinyTok, ids, att, _greedy(), cuda_graphs=False)
    assert d.captures == 0 and next(iter(d.slots.values())).batch == 3  # exact sizes, no capture
    ids5, att5 = _prompts(B=5)
    d.generate(model, TinyTok, ids5, att5, off)
    assert len(d.slots) == 1 and next(iter(d.slots.values())).batch == 5  # one eager slot, replaced, not piled up


def test_batch_buckets():
    from taosr.rl.engines.graph import batch_bucket

    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 64, 65, 100, 200, 256)] == \
        [1, 2, 3, 4, 6, 8, 12, 16, 64, 96, 128, 256, 256]
    assert all(batch_bucket(n) >= n for n in range(1, 600))
    assert all(batch_bucket(n) < 1.5 * n + 1 for n in range(1, 600))


def test_decoder_is_shared_per_model():
    from taosr.rl.engines.graph import decoder_for

    a, b = tiny_llama(), tiny_llama()
    assert decoder_for(a) is decoder_for(a) and decoder_for(a) is not decoder_for(b)


# ---------------------------------------------------------------------------- temperature 0, spec checks

def test_temperature_zero_is_greedy_everywhere():
    from taosr.eval.generation import GenerationSpec, generate_ids
    from taosr.rl.engines.hf import HFEngine, warpers

    model = tiny_llama()
    ids, att = _prompts()
    cold = GenerationSpec(max_new_tokens=8, do_sample=True, temperature=0.0, num_return_sequences=2)
    assert not cold.sampling and len(warpers(cold)) == 0
    greedy = HFEngine().generate(model, TinyTok, ids, att, _greedy(T=8, G=2))
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert torch.equal(HFEngine().generate(model, TinyTok, ids, att, cold), greedy)
    assert torch.equal(HFEngine(static_cache=False).generate(model, TinyTok, ids, att, cold), greedy)
    assert _same_tokens(generate_ids(model, TinyTok, ids, att, cold), greedy)  # model.generate refuses do_sample at 0
    # and a positive temperature does sample (the draws differ between seeds)
    hot = GenerationSpec(max_new_tokens=8, do_sample=True, temperature=1.5, num_return_sequences=4)
    torch.manual_seed(0)
    x = HFEngine().generate(model, TinyTok, ids, att, hot)
    torch.manual_seed(1)
    assert not torch.equal(x, HFEngine().generate(model, TinyTok, ids, att, hot))


@pytest.mark.parametrize("field,value,rule", [
    ("max_new_tokens", 0, ">= 1"), ("max_new_tokens", -3, ">= 1"), ("max_new_tokens", 1.5, "an integer"),
    ("temperature", -0.1, ">= 0"), ("temperature", float("nan"), "a finite number"),
    ("top_p", 0.0, r"in \(0, 1\]"), ("top_p", 1.2, r"in \(0, 1\]"),
    ("top_k", -1, ">= 0"), ("num_return_sequences", 0, ">= 1"),
])
def test_generation_spec_refuses_bad_values(field, value, rule):
    from taosr.eval.generation import GenerationSpec

    with pytest.raises(ConfigError, match=rf"^generation\.{field} must be {rule}[^,]*, got ") as e:
        GenerationSpec(**{field: value})
    assert "\n" not in str(e.value) and "eval_generation" in str(e.value)


def test_generation_spec_accepts_edges():
    from taosr.eval.generation import GenerationSpec

    GenerationSpec(max_new_tokens=1, temperature=0, top_p=1, top_k=0)
    GenerationSpec(temperature=2, top_p=1e-3, top_k=50, num_return_sequences=16)


def test_completion_lengths_stay_on_the_ids_device():
    """The lengths are made on the device of the ids (the quick start crashed on CUDA with a CPU tensor here)."""
    from taosr.eval.generation import completion_lengths

    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [5, 0, 0]])
    assert completion_lengths(ids, 2, 0).tolist() == [2, 3, 1]
    assert completion_lengths(ids, 0, 0).tolist() == [3, 3, 2]
    # no eos and a pad token sampled inside (pad != eos): the row ends at its last non-pad token, not
    # after as many tokens as are not pads (which kept the pad and cut the last real token)
    assert completion_lengths(torch.tensor([[5, 0, 6, 7], [5, 0, 6, 0]]), 2, 0).tolist() == [4, 3]
    # taosr's samplers (not ragged): a row without eos ran the whole width, a pad it sampled last included
    assert completion_lengths(torch.tensor([[5, 0, 6, 0], [5, 2, 0, 0]]), 2, 0, ragged=False).tolist() == [4, 2]
    from taosr.rl.engines.hf import HFEngine

    assert HFEngine().ragged is False and HFEngine(prefix_sharing=False).ragged is True
    meta = torch.empty(3, 4, dtype=torch.long, device="meta")  # any device mismatch raises on meta
    assert completion_lengths(meta, 2, 0).device.type == "meta"
    assert completion_lengths(meta, 0, 0).device.type == "meta"


def test_decode_step_traces_as_one_graph_without_host_syncs():
    """What a CUDA graph needs of the step (forward, warpers, Gumbel-max, bookkeeping): no data-dependent
    Python (`.item()`, `bool(tensor)`, shape-changing ops). Dynamo traces it into one graph with no break."""
    from taosr.eval.generation import GenerationSpec

    model = tiny_llama()
    d = _graph_decoder(warmup=1)
    steps = []
    d._capture = lambda step, pool: steps.append(step) or _Replayer(step)
    ids, att = _prompts()
    d.generate(model, TinyTok, ids, att, GenerationSpec(max_new_tokens=4, do_sample=True, temperature=0.7, top_k=5,
                                                     top_p=0.9))
    try:
        with torch.no_grad():
            ex = torch._dynamo.explain(steps[0])()
    finally:
        torch._dynamo.reset()
    assert ex.graph_count == 1 and ex.graph_break_count == 0, [str(b.reason)[:200] for b in ex.break_reasons]


def test_sharded_parameters_are_never_captured():
    from taosr.rl.engines.graph import graphable

    model = tiny_llama()
    assert graphable(model)
    next(model.parameters()).ds_id = 3  # what DeepSpeed ZeRO-3 puts on its partitioned parameters
    assert not graphable(model)
    d = _graph_decoder()
    ids, att = _prompts()
    d.generate(model, TinyTok, ids, att, _greedy())
    assert d.captures == 0


def test_cpu_greedy_evaluation_equals_generate_exactly(monkeypatch):
    """Greedy evaluation on CPU decodes on the written-only static cache: the same tokens and the
    same captured tier scores as ``model.generate`` (bit for bit: the attention sees the same keys),
    and ``generate`` itself wherever the model's generation config changes scores."""
    from taosr.eval.generation import generate_ids, hf_generate_ids
    from taosr.eval.scores import LabelSlotCapture
    from taosr.rl.engines.graph import decoder_for

    import taosr.models.kvcache as kvcache

    made = []

    def counted(config, n, dtype=None):  # the written-only cache is the one decoding (and none is kept afterwards)
        made.append(n)
        return written_static_cache(config, n, dtype)

    import taosr.rl.engines.graph as graph

    written_static_cache = kvcache.written_static_cache
    monkeypatch.setattr(graph, "written_static_cache", counted)
    model = tiny_llama(seed=4)
    with torch.no_grad():  # make eos likely so rows finish at different steps
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight.std() * torch.randn(32).sign()
    padded = _prompts(B=4, P=7, seed=3)
    unpadded = (padded[0][2:], torch.ones_like(padded[0][2:]))
    for ids, att in (padded, unpadded):  # unpadded: generate passes no mask, and neither do we
        ref_cap, cap = LabelSlotCapture([5, 6, 7, 8]), LabelSlotCapture([5, 6, 7, 8])
        ref = hf_generate_ids(model, TinyTok, ids, att, _greedy(T=24), [ref_cap])
        out = generate_ids(model, TinyTok, ids, att, _greedy(T=24), [cap])
        assert torch.equal(out, ref) and torch.equal(cap.logits(), ref_cap.logits())
    assert 24 + 7 in made and not decoder_for(model).slots
    ids, att = padded
    ref = hf_generate_ids(model, TinyTok, ids, att, _greedy(T=24))
    assert (ref == 2).any(1).sum() >= 2
    assert torch.equal(generate_ids(model, TinyTok, ids, att, _greedy(T=24, G=2)), ref.repeat_interleave(2, 0))
    # a repetition penalty or beam search is applied by generate only: evaluation keeps generate's tokens
    for name, value in (("repetition_penalty", 3.0), ("num_beams", 3)):
        setattr(model.generation_config, name, value)
        theirs = hf_generate_ids(model, TinyTok, ids, att, _greedy(T=24))
        assert not torch.equal(theirs, ref), name
        n = len(made)
        assert torch.equal(generate_ids(model, TinyTok, ids, att, _greedy(T=24)), theirs) and len(made) == n
        setattr(model.generation_config, name, 1.0 if name == "repetition_penalty" else 1)


def test_decoder_logits_processors_need_eager_steps_and_one_completion():
    from taosr.rl.engines.graph import StaticDecoder

    ids, att = _prompts(B=2, P=5)
    with pytest.raises(ValueError, match="one completion per prompt"):
        StaticDecoder().generate(tiny_llama(), TinyTok, ids, att, _greedy(G=2), logits_processor=[lambda i, s: s])


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_dropping_finished_rows_changes_no_token_and_no_draw():
    """With one thread the CPU loop decodes only the rows still running once a tenth of the batch has
    finished (the cache and inputs are cut to them, at least ``min_rows`` kept): the same tokens as
    decoding every row to the end, for seeded sampling (the sampler still draws for every row, so the
    random stream is unchanged) and for greedy evaluation with a label-slot capture on the written-only
    cache, down to the last rows (fewer than ``min_rows`` running); the slot's cache is whole again for
    the next call. With two threads it stays off."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.eval.generation import GenerationSpec
    from taosr.eval.scores import LabelSlotCapture
    from taosr.rl.engines.graph import StaticDecoder

    model = tiny_llama(seed=4)
    with torch.no_grad():  # make eos likely so rows finish at different steps
        model.lm_head.weight[2] += 0.6 * model.lm_head.weight.std() * torch.randn(32).sign()
    ids, att = _prompts(B=6, P=7, seed=5)
    spec = GenerationSpec(max_new_tokens=30, do_sample=True, temperature=1.2, num_return_sequences=3)
    whole, cut = StaticDecoder(compact=None), StaticDecoder()
    with _threads(1):
        for call in range(2):  # the second call reuses the slot the first one cut down
            torch.manual_seed(call)
            ref = whole.generate(model, TinyTok, ids, att, spec)
            after_whole = torch.rand(4)
            torch.manual_seed(call)
            out = cut.generate(model, TinyTok, ids, att, spec)
            assert torch.equal(out, ref)
            assert torch.equal(torch.rand(4), after_whole)  # as many random numbers drawn
    lengths = (ref != 0).sum(1)
    assert cut.compactions >= 2 and lengths.min() < ref.shape[1] // 2 and ref.shape[1] == 30
    with _threads(2):
        n = cut.compactions
        torch.manual_seed(0)
        cut.generate(model, TinyTok, ids, att, spec)
        assert cut.compactions == n
    # the evaluation path (written-only cache, a logits processor; seeded sampling, as a random model's
    # greedy rows never end) on a model as wide as the tiny preset: tokens, and every score a row got
    # while running
    torch.manual_seed(7)
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, eos_token_id=2,
                                        bos_token_id=1)).eval()
    with torch.no_grad():
        wide.lm_head.weight[2] += 0.5 * wide.lm_head.weight.std() * torch.randn(256).sign()
    ids, att = _prompts(B=12, P=7, seed=6)
    spec = GenerationSpec(max_new_tokens=60, do_sample=True, temperature=1.0)
    caps = []
    with _threads(1):
        for d in (StaticDecoder(compact=None), StaticDecoder()):
            cap = LabelSlotCapture([5, 6, 7, 8])
            torch.manual_seed(1)
            caps.append((d.generate(wide, TinyTok, ids, att, spec, written_only=True, logits_processor=[cap]),
                         cap.logits(), d))
    (ref, ref_scores, _), (out, scores, d) = caps
    assert torch.equal(out, ref) and d.compactions >= 1
    last = torch.where((ref == 2).any(1), (ref == 2).float().argmax(1), torch.full((12,), ref.shape[1]))
    running = torch.arange(ref.shape[1])[None] <= last[:, None]
    assert not running.all() and ((running.sum(0) > 0) & (running.sum(0) < 4)).any()  # min_rows padding used
    # the same numbers where the CPU's kernels give a row the same sums in a smaller batch (the project's
    # first machine, a Zen 3); a Zen 4 with AVX-512 differs in the last bits (1.8e-7 here) somewhere
    # beyond the linear layers (which the probe finds alike there too): within rounding
    assert torch.allclose(scores[running], ref_scores[running], rtol=0, atol=1e-5)


def test_decoder_cache_stores_keys_and_values_in_one_dtype():
    """Under autocast with fp32 weights a Llama's keys come out fp32 and its values bf16; transformers
    5.17's StaticLayer allocates both in the keys' dtype and then refuses the values. The decoder's
    layers store both in the dtype they are given (autocast's), else the first keys'."""
    from transformers import LlamaConfig

    from taosr.models.kvcache import static_cache, written_static_cache

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32, vocab_size=50)
    k, v = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 3, 16).bfloat16()
    for make in (static_cache, written_static_cache):
        layer = make(cfg, 10, torch.bfloat16).layers[0]
        keys, values = layer.update(k, v)
        assert layer.keys.dtype == layer.values.dtype == keys.dtype == values.dtype == torch.bfloat16
        assert torch.equal(keys[:, :, :3], k.bfloat16()) and torch.equal(values[:, :, :3], v)
        layer.update(torch.randn(2, 2, 1, 16), torch.randn(2, 2, 1, 16).bfloat16())  # later steps cast too
        plain = make(cfg, 10).layers[0]  # no dtype: the keys' (nothing cast without autocast)
        plain.update(k, v.float())
        assert plain.keys.dtype == plain.values.dtype == torch.float32


def test_decoding_under_cpu_autocast_on_both_paths():
    from taosr.eval.generation import GenerationSpec

    model = tiny_llama(seed=1)
    ids, att = _prompts(B=5, P=6)
    spec = GenerationSpec(max_new_tokens=10, do_sample=True, temperature=1.0, num_return_sequences=2)
    from taosr.rl.engines.graph import StaticDecoder

    for d in (_graph_decoder(), StaticDecoder()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = d.generate(model, TinyTok, ids, att, spec)
        assert out.shape[0] == 10
        layer = next(iter(d.slots.values())).cache.layers[0]
        assert layer.keys.dtype == layer.values.dtype == torch.bfloat16


def test_slots_made_in_inference_mode_serve_later_rollouts():
    """Lightning validates under inference mode; a slot made there is reused by a training rollout
    (no_grad) of the same bucket, which updates its buffers in place."""
    model = tiny_llama()
    ids, att = _prompts(B=4, P=6)
    from taosr.rl.engines.graph import StaticDecoder

    for d in (_graph_decoder(), StaticDecoder()):
        with torch.inference_mode():
            first = d.generate(model, TinyTok, ids, att, _greedy())
        with torch.no_grad():
            assert torch.equal(d.generate(model, TinyTok, ids, att, _greedy()), first)
        assert len(d.slots) == 1


def test_sliding_window_models_decode_without_capture():
    """A sliding-window cache keeps Python-side positions that a captured step would freeze: such
    models decode with eager steps (the same tokens as generate) and nothing is captured."""
    from transformers import MistralConfig, MistralForCausalLM

    from taosr.eval.generation import hf_generate_ids

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                             pad_token_id=0, eos_token_id=2, bos_token_id=1)).eval()
    d = _graph_decoder()
    ids = torch.randint(3, 40, (3, 6))
    out = d.generate(model, TinyTok, ids, torch.ones_like(ids), _greedy(T=12))
    assert d.captures == 0 and not d.capture_failed
    assert _same_tokens(out, hf_generate_ids(model, TinyTok, ids, torch.ones_like(ids), _greedy(T=12)))


def test_sliding_window_models_sample_exactly_with_left_padded_prompts():
    """A sliding-window cache holds only its window; copied into the decoder's slots its keys did not
    line up with a left-padded prompt's absolute mask once prompt + generation passed the window:
    other tokens than generate, silently (rollouts, `taosr sample`, CUDA evaluation). The engine now
    decodes such models on a growing cache."""
    from transformers import MistralConfig, MistralForCausalLM

    from taosr.eval.generation import hf_generate_ids
    from taosr.rl.engines.hf import HFEngine

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                             pad_token_id=0, eos_token_id=2, bos_token_id=1)).eval()
    ids = torch.randint(3, 40, (3, 7))
    att = torch.ones_like(ids)
    att[0, :3], att[2, :1] = 0, 0
    ids[att == 0] = 0
    spec = _greedy(T=10)
    assert _same_tokens(HFEngine().generate(model, TinyTok, ids, att, spec), hf_generate_ids(model, TinyTok, ids, att, spec))
    # the static decoder itself refuses such a batch (a caller that skipped the routing sampled other tokens)
    from taosr.rl.engines.graph import StaticDecoder

    with pytest.raises(ValueError, match="sliding window .* left-padded prompt"):
        StaticDecoder(cuda_graphs=False).generate(model, TinyTok, ids, att, spec, cuda_graphs=False)


def test_sliding_window_caches_take_one_dtype_too(monkeypatch):
    """transformers 5.17's StaticLayer (which sliding-window layers inherit from) allocates values in
    the keys' dtype: under bf16 autocast the fallback cache of a sliding-window model gets its inputs
    cast as well."""
    from transformers import MistralConfig, MistralForCausalLM
    from transformers.cache_utils import StaticLayer

    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.graph import StaticDecoder

    allocate = StaticLayer.lazy_initialization
    monkeypatch.setattr(StaticLayer, "lazy_initialization", lambda self, k, v, *a, **kw: allocate(self, k, v.to(k.dtype)))
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                             pad_token_id=0, eos_token_id=2, bos_token_id=1)).eval()
    ids = torch.randint(3, 40, (3, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = StaticDecoder().generate(model, TinyTok, ids, torch.ones_like(ids),
                                       GenerationSpec(max_new_tokens=8, do_sample=True, temperature=1.0))
    assert out.shape[0] == 3


def test_generate_rollouts_refuse_a_generation_config_the_update_cannot_score():
    """With prefix_sharing: false the hf engine samples with model.generate, which applied the model's
    generation_config (a repetition penalty an instruct model ships): the update scored plain draws,
    so the rollouts were off-policy without a word. The default engine ignores the config."""
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.hf import HFEngine

    model, Tok = tiny_llama(seed=0), TinyTok
    ids, att = torch.randint(3, 40, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    spec = GenerationSpec(max_new_tokens=4, do_sample=True, temperature=1.0, num_return_sequences=2)
    assert HFEngine(prefix_sharing=False).generate(model, Tok, ids, att, spec).shape[0] == 4
    model.generation_config.repetition_penalty = 1.3
    with pytest.raises(ConfigError, match=r"prefix_sharing: false .*repetition_penalty=1\.3"):
        HFEngine(prefix_sharing=False).generate(model, Tok, ids, att, spec)
    assert HFEngine(prefix_sharing=True).generate(model, Tok, ids, att, spec).shape[0] == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_merged_for_vllm_without_touching_the_base_weights(dtype):
    """vLLM's merge sync merged the adapter into the trainer's weights and unmerged it after: in bf16
    every sync rounded the frozen base weights (the policy and the adapter-disabled reference drifted
    from the start). The merged weights are new tensors now: equal to peft's merge, the model unchanged."""
    import copy

    from peft import LoraConfig, get_peft_model

    from taosr.rl.engines.vllm_engine import merged_lora_state

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).to(dtype)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    want = dict(vllm_weight_items(copy.deepcopy(model).merge_and_unload().state_dict().items(), peft=False))
    for _ in range(3):
        got = dict(vllm_weight_items(merged_lora_state(model), peft=True))
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # the trainer's weights untouched
    assert set(got) == set(want)
    for n, t in got.items():  # what peft's own merge (of a copy) gives, to the bit
        assert t.dtype == dtype and torch.equal(t, want[n]), n
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])


def test_weights_go_to_vllm_in_chunks_of_bounded_size():
    from taosr.rl.engines.vllm_engine import _chunks

    items = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 1])]  # float32: 4 bytes each
    chunks = list(_chunks(iter(items), max_bytes=80))
    assert [[n for n, _ in c] for c in chunks] == [["w0", "w1"], ["w2"], ["w3", "w4"]]
    assert [n for c in chunks for n, _ in c] == [n for n, _ in items]
