"""``taosr sample``: offline pass@N sampling from a policy export.

For every prompt of a split: N sampled completions, each parsed (label, format error) and
checked (correct, step verdicts against annotations), plus the prompt's pass rate. One JSON
line per prompt, self-contained (the example is embedded), so DPO pair building, rejection
sampling and diverse sampling can read it without the original data::

    {"index": 0, "split": "train", "pass_rate": 0.5, "example": {...},
     "samples": [{"text": "...", "pred": 3, "correct": true, "format_error": false,
                  "step_verdicts": {"query": 1.0, ...}}, ...]}
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from taosr.eval.generation import GenerationSpec, decode_completions, make_record
from taosr.rl.engines.hf import HFEngine


def sample_split(model, tokenizer, dm, split: str, spec: GenerationSpec, batch_size: int = 16,
                 limit: int | None = None) -> list[dict]:
    dm.attach_tokenizer(tokenizer)
    rows = dm.splits[split][:limit] if limit else dm.splits[split]
    out = []
    engine = HFEngine()  # each prompt prefilled once, its N samples decoded on a preallocated cache
    for s in range(0, len(rows), batch_size):
        chunk = list(enumerate(rows[s: s + batch_size], start=s))
        batch = dm.collate_prompts(chunk)
        ids = engine.generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], spec)
        texts = decode_completions(tokenizer, ids)
        n = spec.num_return_sequences
        for j, (i, ex) in enumerate(chunk):
            recs = [make_record(ex, t, i) for t in texts[j * n:(j + 1) * n]]
            samples = [{"text": r["reasoning"], "pred": r["pred"], "correct": r["pred"] == ex.label,
                        "format_error": r["format_error"], "step_verdicts": r["step_verdicts"]} for r in recs]
            out.append({"index": i, "split": split, "pass_rate": sum(x["correct"] for x in samples) / n,
                        "example": ex.to_dict(), "samples": samples})
    return out


def sample_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="taosr sample", description="Offline pass@N sampling from a policy export.")
    p.add_argument("--model", required=True, help="policy export folder (or HF id / preset)")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--data", default="synth", help="'synth' (embedded default) or a data file")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-n-train", type=int, default=3000, help="size of the synthetic train split (as in the config)")
    p.add_argument("--synth-n-val", type=int, default=200)
    p.add_argument("--synth-n-test", type=int, default=400)
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--data-dir", default=".cache/taosr/data", help="cache of the synthetic data")
    a = p.parse_args(argv)

    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer

    torch.manual_seed(a.seed)
    paths = {"train": a.data if a.split == "train" else None, "val": a.data if a.split == "val" else None,
             "test": a.data if a.split == "test" else None}
    if a.split != "train":
        paths["train"] = a.data
    dm = RelevanceDataModule(view="sft", synth=SynthConfig(n_train=a.synth_n_train, n_val=a.synth_n_val,
                                                                n_test=a.synth_n_test, seed=a.synth_seed), data_dir=a.data_dir, **paths)
    dm.setup("fit")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=a.model), corpus=dm.corpus)
    spec = GenerationSpec(max_new_tokens=a.max_new_tokens, do_sample=True, temperature=a.temperature,
                          top_p=a.top_p, num_return_sequences=a.n)
    t0 = time.perf_counter()
    rows = sample_split(model, tok, dm, a.split, spec, a.batch_size, a.limit)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        for r in rows:
            r = dict(r)
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    rates = [r["pass_rate"] for r in rows]
    mixed = sum(0 < x < 1 for x in rates)
    print(f"sampled {len(rows)} prompts x {a.n} in {time.perf_counter() - t0:.1f}s -> {a.out}\n"
          f"mean pass@1 {sum(rates) / len(rates):.3f}; prompts with mixed outcomes {mixed}; "
          f"never correct {sum(x == 0 for x in rates)}; always correct {sum(x == 1 for x in rates)}")
    return 0
