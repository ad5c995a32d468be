"""SRPO's GRM scoring of one rollout batch: every completion in one call (batches mixing groups: the
scorer before 2026-12-03), every completion one group per call, and the groups dynamic sampling
keeps one group per call (what SRPO does now). Seconds per rollout batch, GRM positions run, and whether
the kept rows' scores are the same. Also the time to build the GRM inputs of a batch (tokenising), with
the scorer's memo (per group: each distinct prompt and step line once, in one batched tokenizer call
each) and one candidate at a time (the scorer before 2026-12-04).

    python benchmarks/grm_scoring.py --model runs/quickstart/dpo/export --grm runs/quickstart/grm/export
    python benchmarks/grm_scoring.py                          # tiny preset, the policy itself as the judge

Rollouts have the RL configs' shape (``--prompts`` 8 x ``--G`` 8, temperature 1.3, up to 96 new
tokens) from held-out prompts; the outcome rewards (label right, format) decide which groups are
kept (GRPO's rule: a group whose rewards all equal is dropped). The three ways take each batch in
turn (the order alternates), so drift of the machine hits them alike.
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

    from eval_generation import add_rollout_options, load_with_data, ratio_text
    from taosr.eval.generation import GenerationSpec
    from taosr.reasoning.format import parse_reasoning
    from taosr.rl.examiner import ExaminerSpec
    from taosr.reasoning.grm_layout import candidates_memo
    from taosr.rl.grm import GRMScorer
    from taosr.rl.step_scorer import StepScorer
    from update_plan import rollout_batch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rollout_options(p, batches=6)
    p.add_argument("--grm", default=None, help="GRM export (default: the policy scores as an untrained judge)")
    p.add_argument("--grm-batch-size", type=int, default=32, help="model.init_args.grm_batch_size")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, dm = load_with_data(argparse.Namespace(model=a.model, batch=a.prompts, batches=a.batches),
                                    tempfile.mkdtemp(prefix="taosr-grm-scoring-"))
    rows = dm.splits["test"]
    grm = GRMScorer.load(a.grm, a.grm_batch_size, corpus=dm.corpus) if a.grm else GRMScorer(model, tok, a.grm_batch_size)
    scorer = StepScorer(ExaminerSpec(mode="grm"), grm)
    spec = GenerationSpec(max_new_tokens=a.new, do_sample=True, temperature=a.temperature, num_return_sequences=a.G)
    tokens = {"mixed": 0, "groups": 0, "kept": 0}

    counting = {"key": None}

    def count(module, args, kwargs):  # positions the GRM's decoder runs, padding included
        if counting["key"]:
            tokens[counting["key"]] += int(kwargs["input_ids"].numel())

    grm.model.get_decoder().register_forward_pre_hook(count, with_kwargs=True)

    ways = {
        "every completion, one call (batches mix groups; before)":
            ("mixed", lambda r, keep: grm.score(r.examples, r.parsed)),
        "every completion, one call per group":
            ("groups", lambda r, keep: scorer._grm_scores(r, torch.ones(len(r), dtype=torch.bool))),
        "kept groups only, one call per group (SRPO now)":
            ("kept", lambda r, keep: scorer._grm_scores(r, keep)),
    }
    secs = {k: [] for k in ways}
    build = {"memo": [], "no memo": []}
    kept_share, lengths, max_diff, same, same_ids = [], [], 0.0, True, True
    loader = list(dm.test_dataloader())[: a.batches]
    for i, b in enumerate(loader):
        r, _, kept_rows = rollout_batch(model, tok, b, rows, spec, seed=i)  # outcome rewards, GRPO's keep rule
        r.examples = [rows[int(j)] for j in r.example_index.tolist()]
        r.parsed = [parse_reasoning(t) for t in r.texts]
        keep = torch.zeros(len(r), dtype=torch.bool)
        keep[kept_rows] = True
        kept_share.append(float(keep.float().mean()))
        lengths.append(float(r.completion_mask.sum(1).float().mean()))
        for k in (list(build) if i % 2 else list(build)[::-1]):
            t0 = time.perf_counter()
            inputs = []
            for g in range(0, len(r), a.G):  # one scorer call per group, as SRPO calls it
                exs, steps = r.examples[g:g + a.G], [p.steps for p in r.parsed[g:g + a.G]]
                memo = candidates_memo(grm.tok, exs, steps) if k == "memo" else None
                inputs += [grm._encode(e, st, memo) for e, st in zip(exs, steps)]
            build[k].append(time.perf_counter() - t0)
            same_ids = same_ids and inputs == [grm._encode(e, p.steps) for e, p in zip(r.examples, r.parsed)]
        got = {}
        for k in (list(ways) if i % 2 else list(ways)[::-1]):
            key, fn = ways[k]
            counting["key"] = key
            t0 = time.perf_counter()
            got[k] = fn(r, keep)
            secs[k].append(time.perf_counter() - t0)
            counting["key"] = None
        mixed, groups, kept = (got[k] for k in ways)
        same = same and torch.equal(kept[keep].nan_to_num(-1), groups[keep].nan_to_num(-1))
        if keep.any():
            max_diff = max(max_diff, float((kept[keep] - mixed[keep]).abs().nan_to_num(0).max()))
    base = secs[next(iter(ways))]
    print(f"\nGRM scoring ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), policy {a.model}, "
          f"GRM {a.grm or 'the policy (untrained judge)'}, grm_batch_size {a.grm_batch_size}; {len(base)} rollout "
          f"batches of {a.prompts} prompts x G = {a.G}, mean completion {statistics.mean(lengths):.1f} tokens, "
          f"kept by dynamic sampling {statistics.mean(kept_share):.0%} of the rows; torch {torch.__version__}\n")
    print("| GRM scoring | s / rollout batch | ratio to the first (mean ± s.e. over batches) | GRM positions run / batch (padding included) |")
    print("|---|---|---|---|")
    for k, v in secs.items():
        print(f"| {k} | {statistics.mean(v):.3f} | {ratio_text(v, base)} | "
              f"{tokens[ways[k][0]] / len(v):.0f} |")
    print(f"\nbuilding the GRM inputs of a batch, one call per group (tokenising): {statistics.mean(build['memo']) * 1e3:.1f} ms with the "
          f"scorer's memo, {statistics.mean(build['no memo']) * 1e3:.1f} ms one candidate at a time (ratio "
          f"{ratio_text(build['memo'], build['no memo'])}); the inputs: {'identical' if same_ids else 'DIFFERENT'}")
    print(f"\nkept rows' scores: one call per group, all groups vs kept only: {'identical' if same else 'DIFFERENT'}; "
          f"against batches mixing groups: max |difference| {max_diff:.1e}")


if __name__ == "__main__":
    main()
