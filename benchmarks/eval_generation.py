"""Greedy evaluation decoding: seconds per batch and tokens/s of ``model.generate`` (the growing
cache: the CPU path of evaluation before this benchmark) and of taosr's decoder on a static
cache, with the whole preallocated cache in every attention, with only the written positions, and
with only the written positions of the rows still decoding (evaluation's CPU path now), on the
same held-out prompts, with the label-slot capture that evaluation uses. It also says whether each
method wrote exactly ``generate``'s tokens and tier scores (the scores of the steps each row was
still decoding: nothing reads a finished row's later scores).

    python benchmarks/eval_generation.py                                   # tiny preset, from scratch
    python benchmarks/eval_generation.py --model runs/quickstart/dpo/export --batches 4

Completions end at end-of-sequence as in evaluation (a model trained on the task writes ~70
tokens; one from scratch runs to ``--new``). Each method decodes every batch once after one
warm-up batch, the methods taking each batch in turn (so drift of the machine hits all alike); the
table has the mean seconds per batch, generated tokens / s and the mean of the per-batch time
ratios to ``generate``.
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


def add_rollout_options(p, batches: int) -> None:
    """The options of the scripts that time a part of an RL step on rollouts of the RL configs' shape
    (``--model``, ``--prompts``, ``--G``, ``--batches``, ``--new``, ``--temperature``, ``--threads``)."""
    p.add_argument("--model", default="tiny", help="policy: preset, folder or hub id")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout batch (data.batch_size)")
    p.add_argument("--G", type=int, default=8, help="completions per prompt (num_generations)")
    p.add_argument("--batches", type=int, default=batches)
    p.add_argument("--new", type=int, default=96, help="max new tokens")
    p.add_argument("--temperature", type=float, default=1.3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (compare runs use one per job)")


def ratio_text(secs: list[float], base: list[float]) -> str:
    """``mean ± s.e.`` over batches of the per-batch time ratios ``secs / base`` (s.e. 0 for one batch)."""
    from taosr.eval.stats import mean_se

    s = mean_se(x / y for x, y in zip(secs, base))
    return f"{s.mean:.3f} ± {s.se if s.n > 1 else 0.0:.3f}"


def load(a, workdir: str):
    """(model, tokenizer, held-out prompt batches) of ``a.batches + 1`` batches of ``a.batch``."""
    model, tok, dm = load_with_data(a, workdir)
    return model, tok, list(dm.test_dataloader())


def load_with_data(a, workdir: str):
    """(model, tokenizer, DataModule) whose test split holds the held-out prompts (its rows give the labels)."""
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig, heldout
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer
    from taosr.schema import write_jsonl

    test = os.path.join(workdir, "heldout.jsonl")
    write_jsonl(test, heldout(a.batch * (a.batches + 1), seed=1))
    dm = RelevanceDataModule(synth=SynthConfig(n_train=400, n_val=8, n_test=8), test=test, eval_batch_size=a.batch,
                             data_dir=os.path.join(workdir, "data"))
    dm.setup("test")
    cache = os.environ.get("TAOSR_MODELS", os.path.join(workdir, "models"))
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=a.model, cache_dir=cache), corpus=dm.corpus)
    dm.attach_tokenizer(tok)
    return model.eval(), tok, dm


def methods():
    from taosr.eval.generation import hf_generate_ids
    from taosr.rl.engines.graph import StaticDecoder

    def static(written: bool, compact):
        def run(model, tok, ids, att, spec, capture):
            d = StaticDecoder(cuda_graphs=False, compact=compact)
            return d.generate(model, tok, ids, att, spec, cuda_graphs=False, written_only=written,
                              logits_processor=[capture])
        return run

    return [("generate (growing cache)", lambda model, tok, ids, att, spec, capture:
             hf_generate_ids(model, tok, ids, att, spec, [capture])),
            ("static cache, whole length", static(False, None)),
            ("static cache, written positions", static(True, None)),
            ("static cache, written positions, finished rows dropped (evaluation)", static(True, 0.1))]


def running_scores(out, scores, eos: int):
    """The captured scores of the steps each row was still decoding (a finished row's later scores
    are not recomputed when finished rows are dropped, and nothing reads them)."""
    import torch

    ended = (out == eos).any(1)
    last = torch.where(ended, (out == eos).float().argmax(1), torch.full_like(ended, out.shape[1], dtype=torch.long))
    keep = torch.arange(scores.shape[1])[None] <= last[:, None]
    return scores[keep]


def main() -> None:
    import torch

    from taosr.eval.generation import GenerationSpec, completion_lengths
    from taosr.eval.scores import LabelSlotCapture

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="preset, folder or hub id")
    p.add_argument("--batch", type=int, default=100, help="prompts per batch (data.eval_batch_size)")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--new", type=int, default=96, help="max new tokens (eval_generation.max_new_tokens)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (compare runs use one per job; finished rows are dropped with one only)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok, loader = load(a, tempfile.mkdtemp(prefix="taosr-eval-bench-"))
    spec = GenerationSpec(max_new_tokens=a.new)
    warm, batches = loader[0], loader[1: a.batches + 1]
    rows = []

    def capture():  # the tier tokens' scores, as evaluation keeps them (any four ids where a tier is not one token)
        return LabelSlotCapture.for_tokenizer(tok) or LabelSlotCapture([0, 1, 2, 3])

    named = methods()
    for name, run in named:  # one warm-up batch each
        run(model, tok, warm["input_ids"], warm["attention_mask"], spec, capture())
    outs = {name: [] for name, _ in named}
    caps = {name: [] for name, _ in named}
    secs = {name: [] for name, _ in named}
    ntok = {name: 0 for name, _ in named}
    for i, b in enumerate(batches):  # every method takes each batch in turn (rotating order): drift hits all alike
        for name, run in named[i % len(named):] + named[:i % len(named)]:
            cap = capture()
            t0 = time.perf_counter()
            out = run(model, tok, b["input_ids"], b["attention_mask"], spec, cap)
            secs[name].append(time.perf_counter() - t0)
            ntok[name] += int(completion_lengths(out, tok.eos_token_id, tok.pad_token_id).sum())
            outs[name].append(out)
            caps[name].append(running_scores(out, cap.logits(), tok.eos_token_id))
    first = named[0][0]
    ref = outs[first] + caps[first]
    for name, _ in named:
        same = "—" if name == first else (
            "yes" if all(torch.equal(x, y) for x, y in zip(outs[name] + caps[name], ref)) else "no")
        rows.append((name, statistics.mean(secs[name]), ntok[name] / sum(secs[name]),
                     ratio_text(secs[name], secs[first]), same))
    P = batches[0]["input_ids"].shape[1]
    print(f"\nGreedy evaluation decoding on CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
          f"model {a.model}, {len(batches)} batches of {a.batch} held-out prompts (~{P} tokens), up to {a.new} new "
          f"tokens, label-slot capture on; torch {torch.__version__}\n")
    print("| method | s / batch | generated tokens / s | time / generate's (mean ± s.e. over batches) "
          "| same tokens and scores as generate |")
    print("|---|---|---|---|---|")
    for name, s, tps, ratio, same in rows:
        print(f"| {name} | {s:.2f} | {tps:,.0f} | {ratio} | {same} |")


if __name__ == "__main__":
    main()
