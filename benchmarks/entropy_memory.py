"""Memory and time of the per-token entropy GRPO / SRPO log for a micro-batch (``train/entropy``):
the whole micro-batch at once through log-softmax (what ``_logps`` did before 2026-12-04) against
:func:`taosr.losses.sft.token_entropy` (rows in chunks, probabilities made and weighted in place).

    python benchmarks/entropy_memory.py                                  # SmolLM2's vocabulary (49152)
    python benchmarks/entropy_memory.py --vocab 151936 --rows 4 --tokens 256   # a Qwen-sized one

Each way runs in its own process on float32 logits of ``--rows`` x ``--tokens`` x ``--vocab`` (what
``_logps`` holds); the table has the memory it adds above the logits (on CUDA the peak allocated,
on CPU the process's peak resident ``VmHWM`` less its resident memory with the logits made,
with every block over 64 KiB mapped on its own so a freed one leaves the count), the
seconds (median of ``--repeats``), and the largest difference from the whole-batch numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(a) -> None:
    import statistics
    import time

    import torch

    from taosr.losses.sft import token_entropy

    torch.set_num_threads(a.threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(a.rows, a.tokens, a.vocab, generator=g, device=dev).mul_(3)  # (no second copy at the peak)

    def whole(x):
        with torch.no_grad():
            logp = torch.log_softmax(x, -1)
            return -(logp.exp() * logp).sum(-1)

    fn = whole if a.way == "whole" else (lambda x: token_entropy(x, max_elements=a.max_elements))
    fn(torch.randn(2, 3, 5, device=dev))  # warm: code and kernels loaded before the baseline is read
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _kib("VmRSS") * 1024
    secs = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        ent = fn(logits)
        if dev == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    added = (torch.cuda.max_memory_allocated() - base) if dev == "cuda" else _kib("VmHWM") * 1024 - base
    diff = float((ent - whole(logits)).abs().max())
    print(json.dumps({"added": added, "secs": statistics.median(secs), "diff": diff, "dev": dev,
                      "logits": logits.numel() * 4}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8, help="micro-batch rows (model.init_args.micro_batch_size)")
    p.add_argument("--tokens", type=int, default=128, help="completion tokens")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--max-elements", type=int, default=2 ** 24, help="token_entropy's max_elements (values a chunk)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--way", choices=["whole", "chunked"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.way:
        return child(a)
    rows = {}
    for way in ("whole", "chunked"):
        # glibc keeps freed blocks below its (growing) mmap threshold in the heap, so a process's
        # peak resident memory would count them again: every block over 64 KiB is mapped instead
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--way", way], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{way}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        rows[way] = json.loads(out.stdout.strip().splitlines()[-1])
    r0 = rows["whole"]
    mib = 2 ** 20
    print(f"\nPer-token entropy of {a.rows} x {a.tokens} x {a.vocab} float32 logits ({r0['logits'] / mib:.0f} MiB), "
          f"{r0['dev']}, {os.cpu_count()} cores, {a.threads} torch threads, median of {a.repeats}\n")
    print("| entropy | memory added above the logits (MiB) | s | max abs difference from the whole batch |")
    print("|---|---|---|---|")
    names = {"whole": "whole micro-batch, log-softmax (before)", "chunked": f"token_entropy, chunks of at most {a.max_elements} values (now)"}
    for way, r in rows.items():
        print(f"| {names[way]} | {r['added'] / mib:.0f} | {r['secs']:.3f} | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
