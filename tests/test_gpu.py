"""GPU tier (``pytest -m gpu``; skipped with its reason where CUDA is absent, so CI stays CPU-only).

- every config under configs/ fits 2 steps and validates on CUDA in bf16-mixed (micro model);
  the GRPO and SRPO fits are one GRPO and one SRPO training step each, twice over;
- the rollout engine's greedy output on CUDA equals ``generate``'s, with the decode step captured
  as a CUDA graph and without; the graph is reused across calls, sees in-place weight updates and
  is re-captured when a parameter tensor is replaced;
- the GRM scorer on CUDA (bf16) equals its CPU (fp32) result within bf16 tolerance;
- 16-mixed with the logger off, and a GRPO fit in 16-mixed (the grad scaler); noise drawn inside a captured step is fresh at every replay; a
  model whose generation config changes scores is evaluated with ``generate``.
A failed capture is an error in these fits (the decoder would otherwise fall back to eager steps).
"""
import glob
import json
import os
import warnings

import pytest
import torch

from tests.conftest import ROOT, rl_samples_overrides, sample_smoke
from tests.conftest import fit as _fit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU tier: pytest -m gpu)")]

CUDA_BF16 = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed"]


def fit(*args, **kwargs):
    """A fit in which a failed CUDA-graph capture is an error (the decoder otherwise falls back to
    eager steps with a warning, and the fit would pass without graphs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="rollout engine: CUDA graph capture failed")
        return _fit(*args, **kwargs)


def _validated(root) -> dict:
    files = sorted(glob.glob(os.path.join(str(root), "eval", "val-step*-metrics.json")))
    assert files, f"no validation metrics under {root}/eval"
    return json.load(open(files[-1]))


@pytest.fixture(scope="module")
def gpu_sft(tmp_path_factory, cache_dir):
    root = str(tmp_path_factory.mktemp("gpu-sft"))
    fit("configs/sft.yaml", root, cache_dir, *CUDA_BF16)
    return root


@pytest.fixture(scope="module")
def gpu_samples(tmp_path_factory, gpu_sft, cache_dir):
    return sample_smoke(os.path.join(gpu_sft, "export"), str(tmp_path_factory.mktemp("gpu-samples") / "samples.jsonl"),
                        cache_dir)


@pytest.fixture(scope="module")
def gpu_grm(tmp_path_factory, cache_dir, gpu_samples):
    root = str(tmp_path_factory.mktemp("gpu-grm"))
    fit("configs/grm.yaml", root, cache_dir, "--data.samples_path", gpu_samples, *CUDA_BF16)
    return root


def test_sft_config_on_cuda(gpu_sft):
    m = _validated(gpu_sft)
    assert {"macro_f1", "format_error_rate", "step_accuracy"} <= set(m)
    assert os.path.exists(os.path.join(gpu_sft, "export", "config.json"))


def test_dpo_config_on_cuda(tmp_path, gpu_sft, gpu_samples, cache_dir):
    fit("configs/dpo.yaml", str(tmp_path), cache_dir, "--data.samples_path", gpu_samples,
        "--model.init_args.model.name_or_path", os.path.join(gpu_sft, "export"), *CUDA_BF16)
    _validated(tmp_path)


def test_grm_config_on_cuda(gpu_grm):
    m = json.load(open(sorted(glob.glob(os.path.join(gpu_grm, "eval", "val-step*-grm-metrics.json")))[-1]))
    assert 0.0 <= m["grm/verdict_accuracy"] <= 1.0


def test_grpo_step_on_cuda(tmp_path, gpu_sft, gpu_samples, cache_dir):
    fit("configs/grpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(gpu_sft, "export"), *rl_samples_overrides(gpu_samples), *CUDA_BF16)
    _validated(tmp_path)
    assert os.path.exists(tmp_path / "export" / "config.json")


@pytest.mark.parametrize("mode", ["verifier_then_grm"])
def test_srpo_step_on_cuda(tmp_path, gpu_sft, gpu_grm, gpu_samples, cache_dir, mode):
    fit("configs/srpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(gpu_sft, "export"), "--model.init_args.grm_path", os.path.join(gpu_grm, "export"),
        "--model.init_args.examiner.mode", mode, *rl_samples_overrides(gpu_samples), *CUDA_BF16)
    _validated(tmp_path)


def test_grpo_step_in_16_mixed_on_cuda(tmp_path, gpu_sft, gpu_samples, cache_dir):
    """The grad scaler's path: clipping after unscaling, a batch without an update counted (CPU:
    tests/test_grpo_module.py::test_grpo_under_16_mixed_clips_unscaled_gradients)."""
    fit("configs/grpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(gpu_sft, "export"), *rl_samples_overrides(gpu_samples), "--trainer.accelerator", "gpu",
        "--trainer.devices", "1", "--trainer.precision", "16-mixed")
    _validated(tmp_path)


def test_16_mixed_without_a_logger_on_cuda(tmp_path, cache_dir):
    fit("configs/sft.yaml", str(tmp_path), cache_dir, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
        "--trainer.precision", "16-mixed", "--trainer.logger", "false")
    _validated(tmp_path)


def test_every_config_has_a_cuda_test():
    configs = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert configs == {"sft.yaml", "dpo.yaml", "grpo.yaml", "srpo.yaml", "grm.yaml"}, "add a CUDA test for it"


# ---------------------------------------------------------------------------- the graph engine

class _Tok:
    pad_token_id, eos_token_id = 0, 2


def _llama(dtype=torch.float32, layers=4, vocab=512, hidden=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2, bos_token_id=1,
                      max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).to("cuda", dtype).eval()


def _prompts(B, P, vocab=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, P), generator=g)
    att = torch.ones_like(ids)
    for r in range(0, B, 3):  # every third row left-padded by a few tokens
        k = 1 + r % 5
        ids[r, :k], att[r, :k] = 0, 0
    return ids.cuda(), att.cuda()


def _same(a, b) -> bool:
    n = min(a.shape[1], b.shape[1])
    return a.shape[0] == b.shape[0] and torch.equal(a[:, :n], b[:, :n])


@pytest.mark.parametrize("graphs", [True, False])
def test_engine_greedy_equals_generate_on_cuda(graphs):
    from taosr.eval.generation import GenerationSpec, hf_generate_ids
    from taosr.rl.engines.graph import decoder_for
    from taosr.rl.engines.hf import HFEngine

    model = _llama()
    spec = GenerationSpec(max_new_tokens=40, do_sample=False)
    engine = HFEngine(cuda_graphs=graphs)
    d = decoder_for(model)
    for B, P in ((5, 17), (13, 30), (5, 23)):  # the third call reuses the first's bucket and graph
        ids, att = _prompts(B, P, seed=B + P)
        ours = engine.generate(model, _Tok, ids, att, spec)
        assert _same(ours, hf_generate_ids(model, _Tok, ids, att, spec)), (B, P)
        G4 = engine.generate(model, _Tok, ids, att, GenerationSpec(max_new_tokens=40, num_return_sequences=4))
        assert torch.equal(G4, ours.repeat_interleave(4, 0))
    assert not d.capture_failed
    # one graph per batch bucket, reused by the third call: 6 and 16 rows, and 24 and 64 with G=4
    assert d.captures == (4 if graphs else 0)


def test_graph_sees_in_place_updates_and_recaptures_replaced_weights():
    from taosr.eval.generation import GenerationSpec, hf_generate_ids
    from taosr.rl.engines.graph import StaticDecoder

    model = _llama()
    d = StaticDecoder()
    spec = GenerationSpec(max_new_tokens=24)
    ids, att = _prompts(8, 12)
    d.generate(model, _Tok, ids, att, spec)
    assert d.captures == 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    assert _same(d.generate(model, _Tok, ids, att, spec), hf_generate_ids(model, _Tok, ids, att, spec))
    assert d.captures == 1
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # replaced, not updated
    assert _same(d.generate(model, _Tok, ids, att, spec), hf_generate_ids(model, _Tok, ids, att, spec))
    assert d.captures == 2


def test_graph_sampling_runs_and_differs_between_seeds():
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.graph import StaticDecoder

    model = _llama()
    d = StaticDecoder()
    spec = GenerationSpec(max_new_tokens=32, do_sample=True, temperature=1.3, top_p=0.95, top_k=50,
                          num_return_sequences=8)
    ids, att = _prompts(4, 16)
    torch.manual_seed(0)
    a = d.generate(model, _Tok, ids, att, spec)
    b = d.generate(model, _Tok, ids, att, spec)  # replayed: fresh noise each replay
    assert a.shape[0] == 32 and not torch.equal(a[:, :8], b[:, :8])
    assert d.captures == 1 and not d.capture_failed


def test_noise_drawn_inside_a_graph_is_fresh_at_every_replay():
    """torch registers the default CUDA generator with a capture, so each replay draws new Gumbel noise
    (the sampler runs inside the captured step)."""
    from taosr.rl.engines.graph import gumbel_max_sample

    scores = torch.zeros(4096, 8, device="cuda")
    out = torch.empty(4096, dtype=torch.long, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out.copy_(gumbel_max_sample(scores))  # warm-up on a side stream, as capture needs
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(gumbel_max_sample(scores))
    g.replay()
    first = out.clone()
    g.replay()
    assert not torch.equal(first, out)
    freq = torch.bincount(torch.cat([first, out]).cpu(), minlength=8).float() / (2 * 4096)
    assert torch.allclose(freq, torch.full((8,), 1 / 8), atol=0.02)  # uniform over equal scores


def test_generate_ids_keeps_generate_where_the_generation_config_changes_scores():
    from taosr.eval.generation import GenerationSpec, generate_ids, hf_generate_ids
    from taosr.rl.engines.graph import decoder_for

    model = _llama()
    model.generation_config.repetition_penalty = 3.0
    ids, att = _prompts(5, 12)
    spec = GenerationSpec(max_new_tokens=20)
    assert _same(generate_ids(model, _Tok, ids, att, spec), hf_generate_ids(model, _Tok, ids, att, spec))
    assert decoder_for(model).captures == 0


def test_graph_under_bf16_autocast_matches_eager():
    """The rollout/eval path under autocast (fp32 weights, bf16 compute): replayed graph == the same steps run
    eagerly on the same bucket (a decoder that never gets past its warm-up), token for token."""
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.graph import StaticDecoder

    model = _llama()
    spec = GenerationSpec(max_new_tokens=24)
    ids, att = _prompts(6, 20)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g, eager = StaticDecoder(), StaticDecoder(warmup=10**6)
        out_g = g.generate(model, _Tok, ids, att, spec)
        out_e = eager.generate(model, _Tok, ids, att, spec)
    assert g.captures == 1 and eager.captures == 0 and not g.capture_failed
    assert next(iter(g.slots.values())).dtype == torch.bfloat16
    assert torch.equal(out_g, out_e)


def test_generate_ids_uses_the_decoder_on_cuda():
    from taosr.eval.generation import GenerationSpec, generate_ids, hf_generate_ids
    from taosr.rl.engines.graph import decoder_for

    model = _llama()
    ids, att = _prompts(7, 15)
    spec = GenerationSpec(max_new_tokens=20)
    assert _same(generate_ids(model, _Tok, ids, att, spec), hf_generate_ids(model, _Tok, ids, att, spec))
    assert decoder_for(model).captures == 1


# ---------------------------------------------------------------------------- GRM scorer

def test_grm_scorer_cuda_equals_cpu(gpu_grm, cache_dir):
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.rl.grm import GRMScorer

    dm = RelevanceDataModule(synth=SynthConfig(n_train=48, n_val=6, n_test=6), data_dir=os.path.join(cache_dir, "data"))
    dm.setup("fit")
    cpu = GRMScorer.load(os.path.join(gpu_grm, "export"), corpus=dm.corpus)
    exs = dm.splits["train"][:16]
    steps = [dict(ex.steps) for ex in exs]
    steps[3].pop("attribute", None)  # a missing step stays NaN on both
    ref = cpu.score_steps(exs, steps)
    gpu = GRMScorer(cpu.model.to("cuda", torch.bfloat16), cpu.tok, batch_size=5)
    got = gpu.score_steps(exs, steps)
    assert got.device.type == "cpu" and torch.equal(got.isnan(), ref.isnan())
    ok = ~ref.isnan()
    assert torch.allclose(got[ok], ref[ok], atol=3e-2), (got[ok] - ref[ok]).abs().max()
