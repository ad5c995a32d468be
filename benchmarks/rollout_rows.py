"""CPU rollouts with and without dropping finished rows: seconds per rollout batch of the decoder
that GRPO/SRPO sample with (``StaticDecoder``, eager steps on CPU) when every row is decoded to the
end of the batch, when the cache and inputs are cut to the rows still running, and when attention
also reads only the positions written so far (the default since 2026-12-02), on the same prompts
with the same seeds, and whether each wrote the first one's tokens (dropping rows does; reading the
written positions only sums attention over fewer, all-masked-out, keys and may move a draw).

    python benchmarks/rollout_rows.py --model runs/quickstart/dpo/export    # the RL configs' rollout shape
    python benchmarks/rollout_rows.py                                       # tiny preset, from scratch

Rollouts have the RL configs' shape (``--prompts`` 8 x ``--G`` 8 completions, temperature 1.3, up to
96 new tokens, end-of-sequence on: a model trained on the task writes ~65 tokens, so rows finish
at different steps; one from scratch rarely ends before ``--new``). Both decoders take each batch
in turn (the order alternates), so drift of the machine hits both alike; the table has the mean
seconds per batch and the mean of the per-batch ratios with its standard error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    import torch

    from eval_generation import add_rollout_options, load, ratio_text
    from taosr.eval.generation import GenerationSpec, completion_lengths
    from taosr.rl.engines.graph import StaticDecoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rollout_options(p, batches=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, loader = load(argparse.Namespace(model=a.model, batch=a.prompts, batches=a.batches),
                              tempfile.mkdtemp(prefix="taosr-rollout-rows-"))
    spec = GenerationSpec(max_new_tokens=a.new, do_sample=True, temperature=a.temperature, num_return_sequences=a.G)
    decoders = {"every row to the end": (StaticDecoder(cuda_graphs=False, compact=None), False),
                "finished rows dropped": (StaticDecoder(cuda_graphs=False), False),
                "+ written positions only (default)": (StaticDecoder(cuda_graphs=False), True)}
    secs = {k: [] for k in decoders}
    same = {k: True for k in decoders}
    lengths, widths = [], []
    for i, b in enumerate(loader[: a.batches]):
        outs = {}
        for k in (list(decoders) if i % 2 else list(decoders)[::-1]):
            torch.manual_seed(i)
            decoder, written = decoders[k]
            t0 = time.perf_counter()
            outs[k] = decoder.generate(model, tok, b["input_ids"], b["attention_mask"], spec, cuda_graphs=False,
                                       written_only=written)
            secs[k].append(time.perf_counter() - t0)
        first = outs["every row to the end"]
        for k, out in outs.items():
            same[k] = same[k] and out.shape == first.shape and torch.equal(out, first)
        lengths.append(float(completion_lengths(first, tok.eos_token_id, tok.pad_token_id).float().mean()))
        widths.append(first.shape[1])
    base = secs["every row to the end"]
    print(f"\nCPU rollouts ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), model {a.model}, "
          f"{len(base)} batches of {a.prompts} prompts x G = {a.G}, temperature {a.temperature}, up to {a.new} new tokens; "
          f"mean completion {statistics.mean(lengths):.1f} tokens, mean batch width {statistics.mean(widths):.1f}; "
          f"torch {torch.__version__}\n")
    print("| decoding | s / rollout batch | ratio to every row (mean ± s.e. over batches) | same tokens |")
    print("|---|---|---|---|")
    for k, v in secs.items():
        print(f"| {k} | {statistics.mean(v):.2f} | {ratio_text(v, base)} | {'—' if v is base else ('yes' if same[k] else 'no')} |")


if __name__ == "__main__":
    main()
