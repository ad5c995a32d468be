"""Rollout throughput: tokens/s of Hugging Face ``generate`` (dynamic cache and static cache),
taosr's engine with eager decode steps (the engine before CUDA graphs, and the CPU path) and
taosr's engine with the decode step captured as a CUDA graph, on the same prompts with the same
sampling.

    python benchmarks/rollout_throughput.py                  # GPU: tiny + smollm2-135m, 64 and 256 sequences
    python benchmarks/rollout_throughput.py --presets tiny   # CPU defaults are smaller (see --help)

Every sequence decodes exactly ``--new`` tokens (end-of-sequence is switched off), so tokens/s is
sequences x new tokens / seconds of a warm call (the median of ``--reps``). The first call of each
method and shape is reported separately (``first s``): for ``generate`` with the static cache it
includes transformers' compile, for the graph engine the warm-up steps and the capture (``capture s``
is the capture alone). On CPU the graph engine takes the eager path (no capture).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def load(preset: str, workdir: str, dtype: str, device: str):
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer

    dm = RelevanceDataModule(synth=SynthConfig(n_train=400, n_val=8, n_test=8), data_dir=os.path.join(workdir, "data"))
    dm.setup("fit")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=preset, dtype=dtype,
                                                    cache_dir=os.environ.get("TAOSR_MODELS", os.path.join(workdir, "models"))),
                                          corpus=dm.corpus)
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None  # every sequence runs to --new tokens
    return model, tok


class NoEos:
    """Tokenizer stand-in for the engine: pad 0, an end-of-sequence id that is never drawn."""

    def __init__(self, pad: int):
        self.pad_token_id, self.eos_token_id = pad, -1


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def methods(a):
    import torch

    from taosr.eval.generation import GenerationSpec
    from taosr.rl.engines.graph import StaticDecoder

    def spec(G):
        return GenerationSpec(max_new_tokens=a.new, do_sample=True, temperature=a.temperature, top_p=a.top_p,
                              num_return_sequences=G)

    def hf(cache):
        def run(model, tok, ids, att, G, state):
            kw = dict(cache_implementation="static") if cache == "static" else {}
            out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=a.temperature,
                                 top_p=a.top_p, top_k=None, max_new_tokens=a.new, min_new_tokens=a.new,
                                 num_return_sequences=G, pad_token_id=tok.pad_token_id, eos_token_id=None, **kw)
            return out.shape[0] * (out.shape[1] - ids.shape[1])
        return run

    def engine(graphs):
        def run(model, tok, ids, att, G, state):
            d = state.setdefault("decoder", StaticDecoder(cuda_graphs=graphs))
            with torch.no_grad():
                out = d.generate(model, NoEos(tok.pad_token_id), ids, att, spec(G))
            state["capture_s"] = d.capture_s
            state["capture_failed"] = d.capture_failed  # then every step ran eagerly
            return out.shape[0] * out.shape[1]
        return run

    return [("generate (dynamic cache)", hf("dynamic")), ("generate (static cache)", hf("static")),
            ("taosr engine, eager steps", engine(False)), ("taosr engine, CUDA graphs", engine(True))]


def bench(a, preset: str, workdir: str) -> list[tuple]:
    import torch

    model, tok = load(preset, workdir, a.dtype, a.device)
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in a.sequences:
        B = n // a.G
        ids = torch.randint(3, model.config.vocab_size, (B, a.prompt_len), generator=g).to(a.device)
        att = torch.ones_like(ids)
        for name, run in methods(a):
            if (name.startswith("generate (static") and a.skip_static) or \
                    (a.only_static and not name.startswith("generate (static")):
                continue
            state: dict = {}
            torch.manual_seed(0)
            sync(a.device)
            t0 = time.perf_counter()
            run(model, tok, ids, att, a.G, state)
            sync(a.device)
            first = time.perf_counter() - t0
            warm = []
            for _ in range(a.reps):
                sync(a.device)
                t0 = time.perf_counter()
                ntok = run(model, tok, ids, att, a.G, state)
                sync(a.device)
                warm.append(time.perf_counter() - t0)
            s = statistics.median(warm)
            cap = "failed (eager)" if state.get("capture_failed") else state.get("capture_s")
            rows.append((preset, n, name, ntok / s, s, first, cap))
            print(f"  {preset} {n} seq: {name}: {ntok / s:,.0f} tok/s", file=sys.stderr, flush=True)
            del state
            if a.device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,smollm2-135m" if cuda else "tiny")
    p.add_argument("--sequences", default="64,256" if cuda else "8,32", help="sequences per call (comma list)")
    p.add_argument("--G", type=int, default=1, help="completions per prompt (sequences / G prompts)")
    p.add_argument("--new", type=int, default=128 if cuda else 32, help="new tokens per sequence")
    p.add_argument("--prompt-len", type=int, default=200 if cuda else 64)
    p.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3 if cuda else 2)
    p.add_argument("--skip-static", action="store_true", help="leave out generate with the static cache (compiles)")
    p.add_argument("--only-static", action="store_true", help="only generate with the static cache")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    a = p.parse_args()
    a.sequences = [int(x) for x in a.sequences.split(",")]
    workdir = tempfile.mkdtemp(prefix="taosr-rollout-bench-")
    rows = []
    for preset in a.presets.split(","):
        rows += bench(a, preset, workdir)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nRollout throughput on {dev}, {a.dtype}, prompts of {a.prompt_len} tokens, {a.new} new tokens, "
          f"sampling at temperature {a.temperature} top-p {a.top_p}, G={a.G}; torch {torch.__version__}\n")
    print("| model | sequences | method | tokens / s (warm) | s / call (warm) | first call s | capture s |")
    print("|---|---|---|---|---|---|---|")
    for preset, n, name, tps, s, first, cap in rows:
        print(f"| {preset} | {n} | {name} | {tps:,.0f} | {s:.2f} | {first:.2f} | "
              f"{cap if isinstance(cap, str) else '—' if not cap else f'{cap:.2f}'} |")


if __name__ == "__main__":
    main()
