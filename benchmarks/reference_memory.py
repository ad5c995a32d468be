"""Memory of DPO's / GRPO's reference for a run that starts from an adapter-only export
(``merge_lora_on_export: false``): the frozen deep copy of the whole model (``reference: copy``,
what ``auto`` gave before 2026-12-04) against the export's adapter loaded a second time, frozen,
on the same base weights (``reference: auto`` now; :mod:`taosr.models.reference`).

    python benchmarks/reference_memory.py                     # a ~137M-parameter Llama from a config
    python benchmarks/reference_memory.py --layers 2 --hidden 64 --intermediate 128 --vocab 512   # seconds

Nothing is downloaded: the base model is a seeded Llama built from a config (``--vocab``,
``--hidden``, ``--layers``, ...) with LoRA (``--r``, all linear layers) whose adapter is exported
adapter-only. Each setting then runs in its own process, which builds a ``GRPOModule`` from the
export (``beta`` 0.04; the policy-only row has ``beta`` 0: no reference) and runs its ``setup`` as
a fit does; the table has the module's parameter bytes (policy + reference, each tensor once),
the process's resident memory after setup and its peak (``VmRSS`` / ``VmHWM``: they include
torch's own ~0.3-0.5 GB, the same in every row) and the seconds of one ``reference_logps`` over
``--rows`` completions of ``--tokens`` tokens after a ``--prompt``-token prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SETTINGS = {  # name: (beta, reference)
    "policy only (beta 0, no reference)": (0.0, "auto"),
    "deep copy (reference: copy; auto before)": (0.04, "copy"),
    "second adapter (reference: auto)": (0.04, "auto"),
}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def build_export(a, root: str) -> str:
    """A seeded Llama from a config, saved as the base folder, and its LoRA adapter exported adapter-only."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from taosr.models.factory import save_export
    from taosr.models.tokenizer import train_bpe_tokenizer

    base = os.path.join(root, "base")
    tok = train_bpe_tokenizer((f"query {i} product {i * 7} label {i % 5}" for i in range(400)), 300, base)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base)  # the adapter records this folder as its base
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=a.r, lora_alpha=2 * a.r, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)  # a trained adapter (B = 0 would make it the base)
    return save_export(model, tok, os.path.join(root, "export"), merge_lora=False)


def child(a) -> None:
    """One setting in this process: build and set up the module, measure, print one JSON line."""
    import types

    import torch

    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule
    from taosr.models.factory import ModelSpec
    from taosr.rl.rollout import Rollout

    torch.set_num_threads(a.threads)
    beta, reference = SETTINGS[a.child]
    t0 = time.perf_counter()
    mod = GRPOModule(model=ModelSpec(name_or_path=a.export), beta=beta, reference=reference, export_dir=None)
    mod._trainer = types.SimpleNamespace(datamodule=None)
    mod.setup("fit")
    setup_s = time.perf_counter() - t0
    seen, params, trainable = set(), 0, 0
    for p in mod.parameters():  # (parameters() yields each tensor once)
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        params += p.numel() * p.element_size()
        trainable += p.numel() * p.element_size() if p.requires_grad else 0
    rss, hwm = _status_kb("VmRSS"), _status_kb("VmHWM")
    ref_s = None
    if beta > 0:
        g = torch.Generator().manual_seed(0)
        n, G = a.rows, 2
        prompt = torch.randint(3, 300, (n // G, a.prompt), generator=g).repeat_interleave(G, 0)
        comp = torch.randint(3, 300, (n, a.tokens), generator=g)
        r = Rollout(spec=GenerationSpec(max_new_tokens=a.tokens, do_sample=True, num_return_sequences=G),
                    prompt_ids=prompt, prompt_mask=torch.ones_like(prompt), completion_ids=comp,
                    completion_mask=torch.ones_like(comp), texts=[""] * n, example_index=torch.arange(n) // G,
                    clipped=torch.zeros(n, dtype=torch.bool))
        mod.reference_logps(r)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.reps):
            mod.reference_logps(r)
        ref_s = (time.perf_counter() - t0) / a.reps
    print(json.dumps({"setting": a.child, "kind": mod.ref_kind, "params_bytes": params, "trainable_bytes": trainable,
                      "rss_kb": rss, "hwm_kb": hwm, "setup_s": setup_s, "ref_s": ref_s}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--r", type=int, default=16, help="LoRA rank (all linear layers)")
    p.add_argument("--rows", type=int, default=8, help="completions scored by one reference_logps")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    with tempfile.TemporaryDirectory(prefix="taosr-reference-memory-") as root:
        export = build_export(a, root)
        rows = []
        for name in SETTINGS:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--export", export,
                   *(f"--{k}={getattr(a, k)}" for k in ("rows", "prompt", "tokens", "reps", "threads"))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name}: failed\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    mb = 1 / 2 ** 20
    total = rows[0]["params_bytes"]
    print(f"Llama vocab {a.vocab}, hidden {a.hidden}, {a.layers} layers, intermediate {a.intermediate}: "
          f"{total / 4 / 1e6:.1f}M parameters with the LoRA r{a.r} adapter "
          f"({rows[0]['trainable_bytes'] / 4 / 1e6:.2f}M trainable); float32; {a.threads} torch threads\n")
    print("| setting | reference kind | parameter MiB (policy + reference) | reference MiB | RSS after setup MiB "
          "| peak RSS MiB | setup s | reference_logps s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = "—" if r["ref_s"] is None else f"{r['ref_s']:.3f}"
        print(f"| {r['setting']} | {r['kind'] or '—'} | {r['params_bytes'] * mb:.1f} | "
              f"{(r['params_bytes'] - total) * mb:.1f} | {r['rss_kb'] / 1024:.0f} | {r['hwm_kb'] / 1024:.0f} | "
              f"{r['setup_s']:.2f} | {ref} |")
    copy_, adapter = rows[1], rows[2]
    print(f"\nsecond adapter vs deep copy: parameters {adapter['params_bytes'] / copy_['params_bytes']:.3f}x, "
          f"peak RSS {adapter['hwm_kb'] / copy_['hwm_kb']:.3f}x")


if __name__ == "__main__":
    main()
