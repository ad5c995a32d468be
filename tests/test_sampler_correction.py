"""The importance-sampling correction of an off-policy rollout engine (vLLM): weights per mode on
hand-made log-probs, its settings' errors, vLLM outputs read into ids and log-probs, and the GRPO
update wiring (the weights reach the loss of every planned micro-batch, and a run logs the mismatch)."""
import importlib.util
import math
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from taosr.errors import ConfigError
from taosr.rl.sampler_correction import IS_MODES, check_is_settings, sampler_is_weights

NAN = float("nan")


def _case():
    # row 0: token log-ratios (train - sampler) ln 2, ln 0.5, ln 4 -> rho 2, 0.5, 4; sequence rho 4
    # row 1: ln 0.2, unknown sampler log-prob (NaN: rho 1), padding -> rho 0.2, 1; sequence rho 0.2
    train = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    sampler = torch.tensor([[-1.0 - math.log(2), -2.0 + math.log(2), -0.5 - math.log(4)],
                            [-1.0 - math.log(0.2), NAN, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return train, sampler, mask


@pytest.mark.parametrize("mode,cap_max,cap_min,want", [
    ("token_truncate", 3.0, None, [[2, 0.5, 3], [0.2, 1, 0]]),
    ("token_truncate", 3.0, 0.6, [[2, 0.6, 3], [0.6, 1, 0]]),
    ("token_mask", 3.0, None, [[2, 0.5, 0], [0.2, 1, 0]]),
    ("token_mask", 3.0, 0.3, [[2, 0.5, 0], [0, 1, 0]]),
    ("token_mask", None, None, [[2, 0.5, 4], [0.2, 1, 0]]),
    ("sequence_truncate", 3.0, None, [[3, 3, 3], [0.2, 0.2, 0]]),
    ("sequence_mask", 3.0, None, [[0, 0, 0], [0.2, 0.2, 0]]),
    ("sequence_mask", 5.0, 0.25, [[4, 4, 4], [0, 0, 0]]),
])
def test_weights_by_hand(mode, cap_max, cap_min, want):
    w, m = sampler_is_weights(*_case(), mode=mode, cap_max=cap_max, cap_min=cap_min)
    assert torch.allclose(w, torch.tensor(want, dtype=torch.float32), atol=1e-6), w
    # |log-ratio| over the known completion tokens: ln2, ln2, ln4, ln5 (the NaN and the padding left out)
    assert m["sampler/logp_diff_mean"] == pytest.approx((2 * math.log(2) + math.log(4) + math.log(5)) / 4, rel=1e-6)
    assert m["sampler/logp_diff_max"] == pytest.approx(math.log(5), rel=1e-6)
    assert m["sampler/unknown_frac"] == pytest.approx(1 / 5)  # row 1's NaN among the 5 completion tokens
    rhos = [2, 0.5, 4, 0.2, 1] if mode.startswith("token") else [4, 0.2]
    assert m["sampler/is_ratio_min"] == pytest.approx(min(rhos), rel=1e-6)
    assert m["sampler/is_ratio_max"] == pytest.approx(max(rhos), rel=1e-6)
    assert m["sampler/is_ratio_mean"] == pytest.approx(sum(rhos) / len(rhos), rel=1e-6)
    lo, hi = cap_min if cap_min is not None else -math.inf, cap_max if cap_max is not None else math.inf
    assert m["sampler/is_bounded_frac"] == pytest.approx(sum(not lo <= x <= hi for x in rhos) / len(rhos))


def test_no_mismatch_weighs_one_and_padding_zero():
    train = -torch.rand(3, 5)
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [0] * 5])
    for mode in IS_MODES:
        w, m = sampler_is_weights(train, train.clone(), mask, mode=mode)
        assert torch.equal(w, mask.float()), mode
        assert m["sampler/logp_diff_max"] == 0 and m["sampler/is_bounded_frac"] == 0


def test_weights_carry_no_gradient():
    train = (-torch.rand(2, 3)).requires_grad_()
    w, _ = sampler_is_weights(train, train.detach() - 0.1, torch.ones(2, 3), mode="token_truncate")
    assert not w.requires_grad


@pytest.mark.parametrize("mode,cap_max,cap_min,match", [
    ("tis", 3.0, None, r"model.init_args.rollout_is: 'tis' is unknown; expected one of token_truncate, token_mask, "
                       r"sequence_truncate, sequence_mask or null \(off\)"),
    ("token_mask", 0.0, None, r"rollout_is_max: must be > 0"),
    ("token_mask", 2.0, 2.0, r"rollout_is_min: must be >= 0 and below rollout_is_max \(2.0\), got 2.0"),
    ("token_mask", 2.0, -1.0, r"rollout_is_min"),
    ("sequence_truncate", None, None, r"model.init_args.rollout_is: 'sequence_truncate' clamps the ratio to "
                                      r"\[rollout_is_min, rollout_is_max\], and both are null"),
])
def test_bad_settings_are_one_line_errors(mode, cap_max, cap_min, match):
    with pytest.raises(ConfigError, match=match):
        check_is_settings(mode, cap_max, cap_min, "model.init_args")
    from taosr.methods.grpo import GRPOModule

    with pytest.raises(ConfigError, match=match):
        GRPOModule(rollout_is=mode, rollout_is_max=cap_max, rollout_is_min=cap_min)


def test_a_nan_ratio_weighs_zero_and_counts_as_bounded():
    """+inf and -inf log-ratios in one sequence give a NaN sequence ratio: neither clamped nor masked by
    the comparisons, so it is taken out explicitly."""
    train = torch.tensor([[0.0, -1.0], [-1.0, -1.0]])
    sampler = torch.tensor([[-math.inf, -1.0], [-1.0, -1.0]])
    train[0, 1] = -math.inf
    sampler[0, 1] = -0.5  # -inf - (-0.5) = -inf;  0 - (-inf) = +inf: the sum is NaN
    for mode in ("sequence_truncate", "sequence_mask"):
        w, m = sampler_is_weights(train, sampler, torch.ones(2, 2), mode=mode)
        assert w.tolist() == [[0.0, 0.0], [1.0, 1.0]], mode
        assert m["sampler/is_bounded_frac"] == 0.5


@pytest.mark.parametrize("mode,top_p,top_k,on_policy,refused", [
    ("sequence_mask", 0.9, 0, False, True), ("sequence_truncate", 1.0, 50, False, True),
    ("sequence_mask", 1.0, 0, False, False), ("token_truncate", 0.9, 50, False, False),
    ("sequence_mask", 0.9, 0, True, False), (None, 0.9, 0, False, False)])
def test_sequence_correction_of_truncated_sampling_is_refused(mode, top_p, top_k, on_policy, refused):
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.sampler_correction import check_sampler_spec

    spec = GenerationSpec(do_sample=True, temperature=1.0, top_p=top_p, top_k=top_k)
    if refused:
        with pytest.raises(ConfigError, match=r"^model.init_args.rollout_is: '.*' multiplies a sequence's token ratios, "
                                              r"and the rollouts sample with top_p"):
            check_sampler_spec(mode, spec, on_policy, "model.init_args")
    else:
        check_sampler_spec(mode, spec, on_policy, "model.init_args")


def test_the_rollout_callback_refuses_it_before_building_the_engine():
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule

    gen = GenerationSpec(do_sample=True, temperature=1.0, top_p=0.9)
    cb = RolloutCallback(engine="vllm", generation=gen)
    with pytest.raises(ConfigError, match=r"rollout_is: 'sequence_mask' multiplies"):
        cb.setup(None, GRPOModule(), "fit")
    if importlib.util.find_spec("vllm") is None:  # a token mode passes the check and reaches the engine
        with pytest.raises(ConfigError, match=r"needs vLLM"):
            cb.setup(None, GRPOModule(rollout_is="token_truncate"), "fit")


def test_off_and_good_settings_pass():
    for mode in (None, *IS_MODES):
        check_is_settings(mode, 3.0, None, "k")
    check_is_settings("token_truncate", None, 0.5, "k")


# ---------------------------------------------------------------- vLLM outputs
def _lp(x):
    return SimpleNamespace(logprob=x, rank=1, decoded_token=None)


def test_vllm_outputs_to_ids_and_log_probs():
    from taosr.rl.engines.vllm_engine import completions_from_outputs

    outs = [SimpleNamespace(outputs=[
                # the sampled token's entry among others (logprobs=N gives the top N and the sampled one)
                SimpleNamespace(token_ids=[5, 6, 2], logprobs=[{5: _lp(-0.1), 9: _lp(-3.0)}, {6: _lp(-0.2)},
                                                               {2: _lp(-0.3)}]),
                SimpleNamespace(token_ids=[7], logprobs=[{7: _lp(NAN)}])]),
            SimpleNamespace(outputs=[
                SimpleNamespace(token_ids=[8, 8], logprobs=None),          # vLLM gave none for this sample
                SimpleNamespace(token_ids=[4, 3], logprobs=[{4: _lp(-1.5)}, {}])])]  # nor for one position
    ids, lps = completions_from_outputs(outs, pad_token_id=0, logprobs=True)
    assert ids.tolist() == [[5, 6, 2], [7, 0, 0], [8, 8, 0], [4, 3, 0]]
    want = torch.tensor([[-0.1, -0.2, -0.3], [NAN, 0, 0], [NAN, NAN, 0], [-1.5, NAN, 0]])
    assert torch.allclose(lps, want, equal_nan=True)
    ids2, none = completions_from_outputs(outs, pad_token_id=0)
    assert torch.equal(ids2, ids) and none is None


def test_hf_engine_reports_no_sampler_log_probs():
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.hf import HFEngine

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    tok = SimpleNamespace(eos_token_id=1, pad_token_id=0)
    spec = GenerationSpec(do_sample=True, temperature=1.0, max_new_tokens=4, num_return_sequences=2)
    ids = torch.randint(3, 40, (2, 5))
    torch.manual_seed(1)
    got, lps = HFEngine().sample(model, tok, ids, torch.ones_like(ids), spec)
    torch.manual_seed(1)
    assert torch.equal(got, HFEngine().generate(model, tok, ids, torch.ones_like(ids), spec)) and lps is None


class _SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


def _stand_in_vllm(monkeypatch, llm_cls) -> None:
    """Install a stand-in ``vllm`` module (``LLM`` = ``llm_cls``; ``SamplingParams`` keeps its kwargs).
    The engine sets vLLM's single-process launcher variables where unset: they are set here first so
    that monkeypatch restores them (left in this process, WORLD_SIZE=1 and LOCAL_RANK=0 made later DDP
    tests' subprocesses skip rank 1)."""
    fake = ModuleType("vllm")
    fake.LLM, fake.SamplingParams = llm_cls, _SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29599")):
        monkeypatch.setenv(k, v)


def test_the_vllm_engine_asks_for_processed_log_probs_of_the_sampled_tokens(monkeypatch):
    """What the engine hands vLLM (vLLM cannot run on this CPU machine: a stand-in module records the
    calls): ``LLM(logprobs_mode="processed_logprobs")`` (log-probs after temperature, as the update scores)
    and ``SamplingParams(logprobs=0)`` (the sampled token's) for rollouts, none for ``generate``; an empty
    generation config folder (vLLM would stop on the model's other eos ids)."""
    calls = {}

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, sp, use_tqdm=False, **kw):
            calls.setdefault("sp", []).append(sp.kw)
            c = SimpleNamespace(token_ids=[5, 1], logprobs=[{5: _lp(-0.5)}, {1: _lp(-0.25)}] if sp.kw["logprobs"] == 0
                                else None)
            return [SimpleNamespace(outputs=[c] * sp.kw["n"]) for _ in prompts]

    _stand_in_vllm(monkeypatch, LLM)
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(model_path="m", sleep_level=0)
    engine._build(None)
    assert calls["llm"]["logprobs_mode"] == "processed_logprobs" and calls["llm"]["model"] == "m"
    # vLLM reads this folder's generation config, not the model's: no eos ids beyond the tokenizer's
    import json
    import os

    with open(os.path.join(calls["llm"]["generation_config"], "generation_config.json")) as f:
        assert json.load(f) == {}
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    ids, mask = torch.tensor([[0, 3, 4]]), torch.tensor([[0, 1, 1]])
    spec = GenerationSpec(do_sample=True, temperature=1.3, max_new_tokens=4, num_return_sequences=2)
    out, lps = engine.sample(None, tok, ids, mask, spec)
    assert calls["sp"][-1]["logprobs"] == 0 and calls["sp"][-1]["temperature"] == 1.3
    assert calls["sp"][-1]["top_k"] == 0 and calls["sp"][-1]["top_p"] == 1.0  # untruncated ("0 or -1": off)
    assert out.tolist() == [[5, 1], [5, 1]] and lps.tolist() == [[-0.5, -0.25], [-0.5, -0.25]]
    assert torch.equal(engine.generate(None, tok, ids, mask, spec), out) and calls["sp"][-1]["logprobs"] is None


def test_the_vllm_engine_syncs_weights_and_sleeps_in_order(monkeypatch):
    """The colocated engine's call order against a stand-in vLLM (it cannot run here): wake the weights,
    load every trainer tensor by name (through ``collective_rpc`` into the worker's model), reset the
    prefix cache, wake the KV cache; after sampling, sleep again at the configured level."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.vllm_engine import VLLMEngine

    log, loaded = [], {}

    class Runner:
        def __init__(self):
            self.model = SimpleNamespace(load_weights=lambda items: loaded.update({n: t.clone() for n, t in items}))

    class LLM:
        def __init__(self, **kw):
            log.append(("init", kw["enable_sleep_mode"]))

        def wake_up(self, tags=None):
            log.append(("wake_up", tuple(tags)))

        def sleep(self, level=1):
            log.append(("sleep", level))

        def collective_rpc(self, fn):
            log.append(("load",))
            fn(SimpleNamespace(model_runner=Runner()))

        def reset_prefix_cache(self):
            log.append(("reset_prefix_cache",))

        def generate(self, prompts, sp, use_tqdm=False, **kw):
            log.append(("generate", len(prompts)))
            c = SimpleNamespace(token_ids=[5, 1], logprobs=[{5: _lp(-0.5)}, {1: _lp(-0.25)}])
            return [SimpleNamespace(outputs=[c] * sp.kw["n"]) for _ in prompts]

    _stand_in_vllm(monkeypatch, LLM)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    engine = VLLMEngine(model_path="m", sleep_level=1)
    engine.sync_weights(model)
    assert log == [("init", True), ("wake_up", ("weights",)), ("load",), ("reset_prefix_cache",),
                   ("wake_up", ("kv_cache",))]
    want = model.state_dict()
    assert set(loaded) == set(want) and all(torch.equal(loaded[n], want[n]) for n in want)
    log.clear()
    spec = GenerationSpec(do_sample=True, temperature=1.0, max_new_tokens=4, num_return_sequences=2)
    engine.sample(model, SimpleNamespace(pad_token_id=0, eos_token_id=1), torch.tensor([[3, 4]]),
                  torch.ones(1, 2, dtype=torch.long), spec)
    assert log == [("generate", 1), ("sleep", 1)]
