"""float32 against bf16 autocast on a CPU: a training step and a rollout of a pretrained model + LoRA.

Lightning's ``--trainer.precision bf16-mixed`` on a CPU runs the forward under
``torch.autocast("cpu", torch.bfloat16)`` with float32 master weights; rollouts inside a fit decode
under the same autocast (taosr.rl.engines.graph). On a CPU with AVX512-BF16 or AMX, oneDNN's bf16
matrix products can beat float32; elsewhere bf16 is emulated and slower. This measures both on this
machine, the two precisions interleaved rep by rep (a busy machine slows both alike):

    python benchmarks/cpu_precision.py                       # SmolLM2-135M-Instruct + LoRA r16, all cores
    python benchmarks/cpu_precision.py --threads 1 --reps 5

Train step: a batch of ``--batch`` sequences of ``--length`` tokens, forward + backward + AdamW on the
adapter (SFT's step at the SmolLM2 quick start's batch 8). Rollout: ``--prompts`` prompts x G
completions of ``--new-tokens`` tokens from the HF engine (one prefill per prompt, static cache);
every row decodes the full width (no token ends it), so both precisions do the same work.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        flags = []
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(have) or "none of avx512f / avx512_bf16 / amx_bf16"


def mean_se(xs: list[float]) -> str:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return f"{m:.2f} ± {se:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=220, help="tokens per training sequence (prompt + reasoning)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=130)
    p.add_argument("--new-tokens", type=int, default=96)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from taosr.eval.generation import GenerationSpec
    from taosr.models.factory import LoraSpec, ModelSpec, load_model_and_tokenizer
    from taosr.rl.engines.hf import HFEngine

    from taosr.models.presets import TINY_PRESETS

    corpus, cache = None, {}
    if a.model in TINY_PRESETS:  # built here: its tokenizer is trained on synthetic data (the test's case)
        from taosr.data.datamodule import RelevanceDataModule
        from taosr.data.synth import SynthConfig

        work = tempfile.mkdtemp(prefix="cpu_precision-")
        dm = RelevanceDataModule(synth=SynthConfig(n_train=200, n_val=8, n_test=8), data_dir=os.path.join(work, "data"))
        dm.setup("fit")
        corpus = dm.corpus
        cache = {"cache_dir": os.environ.get("TAOSR_MODELS", os.path.join(work, "models"))}
    lora = LoraSpec(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    model, tok = load_model_and_tokenizer(ModelSpec(a.model, lora=lora, **cache), corpus=corpus)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    train_ids = torch.randint(100, vocab - 100, (a.batch, a.length), generator=g)
    prompt_ids = torch.randint(100, vocab - 100, (a.prompts, a.prompt_length), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    spec = GenerationSpec(max_new_tokens=a.new_tokens, do_sample=True, temperature=1.0, num_return_sequences=a.G)
    engine = HFEngine()

    class NoEos:  # every row decodes the full width, whatever it samples
        pad_token_id = tok.pad_token_id
        eos_token_id = -1

    def train_step(bf16: bool) -> float:
        model.train()
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=train_ids, labels=train_ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    def rollout(bf16: bool, rep: int) -> float:
        torch.manual_seed(rep)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ids = engine.generate(model, NoEos, prompt_ids, prompt_mask, spec)
        dt = time.perf_counter() - t
        assert ids.shape == (a.prompts * a.G, a.new_tokens), ids.shape
        return dt

    for bf16 in (False, True):  # warm-up: first calls allocate and pick kernels
        train_step(bf16)
        rollout(bf16, 0)
    times = {(k, b): [] for k in ("train", "rollout") for b in (False, True)}
    for rep in range(a.reps):
        for bf16 in (False, True) if rep % 2 == 0 else (True, False):
            times[("train", bf16)].append(train_step(bf16))
            times[("rollout", bf16)].append(rollout(bf16, rep + 1))

    tokens = a.prompts * a.G * a.new_tokens
    print(f"\n{platform.processor() or platform.machine()}; {os.cpu_count()} CPUs, {a.threads} torch threads; "
          f"CPU flags: {cpu_flags()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
          f"{a.model} + LoRA r16; {a.reps} reps, mean ± standard error\n")
    print("| work | float32 s | bf16 autocast s | float32 / bf16 |")
    print("|---|---|---|---|")
    for kind, what in (("train", f"train step, {a.batch} x {a.length} tokens"),
                       ("rollout", f"rollout, {a.prompts} x {a.G} x {a.new_tokens} new tokens ({tokens} tokens)")):
        f32, b16 = times[(kind, False)], times[(kind, True)]
        ratios = [x / y for x, y in zip(f32, b16)]
        print(f"| {what} | {mean_se(f32)} | {mean_se(b16)} | {mean_se(ratios)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
