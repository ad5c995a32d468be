"""``taosr score``: a relevance score per (query, product) pair from a model export.

For every row of a data file (read with the flags of ``taosr data check``: ``--column-map``,
``--label-map``, ``--label-thresholds``, ``--items`` ... joins) the model's distribution over the four
tiers at the ``Label:`` slot (:mod:`taosr.eval.scores`), and from it the expected tier (the
ranking score), the cumulative scores P(tier >= t) for t = 2, 3, 4 (CumPT-style thresholds) and the
argmax tier. One JSON line per pair::

    {"id": "ex-1", "query": "...", "title": "...", "query_type": "brand", "gold": 3,
     "p_tier": [0.01, 0.04, 0.90, 0.05], "score": 2.99, "p_ge": {"2": 0.99, "3": 0.95, "4": 0.05},
     "pred": 3, "reasoning": "Query understanding: ...\\nLabel: 3", "label": 3, "format_error": false}

Modes:

- ``--reasoning`` (default): greedy reasoning first (:func:`taosr.eval.generation.generate_ids`),
  then P(tier) at its label line (read from the generation step that wrote the label digit when the
  generated tokens allow it (CPU), else one forward pass (always on CUDA, whose graph decoder takes
  no logits processors); :class:`taosr.eval.scores.LabelSlotCapture`). The default because the models this project trains write five
  steps before the label: asking them for the label right after the prompt reads a slot they never
  saw in training. A completion without a label line gets ``p_tier``/``score``/``pred`` null
  (counted; it ranks last in NDCG).
- ``--direct``: P(tier) at ``Label:`` right after the prompt, one forward pass per pair: for
  label-only models (trained with ``data.target: label``, whose completion is just ``Label: N``).

``--target`` names the prompt the model was trained with (``data.target``): ``label`` by default
with ``--direct``, ``reasoning`` otherwise.

The file is written under a temporary name and renamed when complete. Prints pairs/s (the
scoring loop: prompts, generation, forward passes; not loading), also per second of this process's
CPU time (what a shared machine's wall clock hides) and, since every row has a gold
label, macro F1 of the argmax tier, NDCG@10 of the expected tier and, when rows carry a numeric
``grade``, the grade RMSE (:mod:`taosr.eval.ranking`).
"""
from __future__ import annotations

import math
import os
import time


from taosr.cliargs import ArgumentParser, add_reader_options, reader_spec
from taosr.errors import ConfigError, TaosrError
from taosr.reasoning.targets import TARGETS
from taosr.schema import write_jsonl


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="taosr score", description="P(tier), expected tier and cumulative scores per pair.")
    p.add_argument("file", help="data file (JSONL, CSV or Parquet)")
    p.add_argument("--model", required=True, help="model export folder (or HF id)")
    p.add_argument("--out", required=True, help="output JSONL, one line per pair")
    add_reader_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reasoning", dest="direct", action="store_false",
                      help="greedy reasoning, then P(tier) at its label line (default)")
    mode.add_argument("--direct", dest="direct", action="store_true",
                      help="P(tier) at 'Label:' right after the prompt (label-only models)")
    p.set_defaults(direct=False)
    p.add_argument("--target", choices=TARGETS.names(), default=None,
                   help="the prompt the model was trained on (data.target); default: label with --direct, else the "
                        "one its export recorded, else reasoning")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per generate call / forward pass")
    p.add_argument("--limit", type=int, default=None, help="first N pairs only")
    p.add_argument("--max-new-tokens", type=int, default=96, help="reasoning mode: tokens generated per pair")
    p.add_argument("--max-length", type=int, default=384, help="prompt token budget (as data.max_length)")
    return p


def load_model(path: str):
    """The export on CUDA in bf16 (fp16 without bf16) when there is a GPU, else on the CPU in float32."""
    from taosr.models.factory import load_for_inference

    if os.path.exists(path) and not os.path.isdir(path):
        raise TaosrError(f"--model: {path} is a file; give a model export folder")
    try:
        model, tok = load_for_inference(path)
    except ConfigError as err:
        raise TaosrError(str(err).replace("model.name_or_path", "--model", 1)) from None
    return model, tok


def score_rows(model, tok, dm, examples: list, direct: bool, batch_size: int, max_new_tokens: int) -> list[dict]:
    """One output row per example (in order); see the module docstring for the fields."""
    from taosr.eval.generation import GenerationSpec, decode_completions, generate_ids, make_record
    from taosr.eval.scores import DIRECT_PREFIX, LabelSlotCapture, prompt_rows, tier_scores

    dev = next(model.parameters()).device
    out: list[dict] = []
    spec = GenerationSpec(max_new_tokens=max_new_tokens)
    chunk_size = batch_size if not direct else max(batch_size, 1024)  # direct: sort a larger pool by length
    for s in range(0, len(examples), chunk_size):
        chunk = list(enumerate(examples[s: s + chunk_size], start=s))
        batch = dm.collate_prompts(chunk)
        prompts = prompt_rows(batch["input_ids"], batch["attention_mask"])
        ids = capture = None
        if direct:
            texts = [DIRECT_PREFIX] * len(chunk)
        else:
            capture = LabelSlotCapture.for_tokenizer(tok, model)  # P(tier) from the generation's own step
            ids = generate_ids(model, tok, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), spec,
                               logits_processor=[capture] if capture is not None else None)
            texts = decode_completions(tok, ids)
        scores = tier_scores(model, tok, prompts, texts, batch_size=batch_size, generated=ids, capture=capture)
        for (i, ex), text, sc in zip(chunk, texts, scores):
            row = {"id": ex.id, "query": ex.query, "title": ex.item.title, "query_type": ex.query_type,
                   "gold": ex.label, "grade": getattr(ex, "grade", None),
                   "p_tier": sc["p_tier"] if sc else None, "score": sc["score"] if sc else None,
                   "p_ge": {str(t): v for t, v in sc["p_ge"].items()} if sc else None,
                   "pred": sc["pred"] if sc else None}
            if not direct:
                rec = make_record(ex, text, i, target=dm.target)
                row.update(reasoning=text, label=rec["pred"], format_error=rec["format_error"],
                           step_verdicts=rec["step_verdicts"])
            out.append(row)
    return out


def summary(rows: list[dict]) -> str:
    """Macro F1 (argmax tier), NDCG@10 (expected tier) and, with grades, the grade RMSE."""
    from taosr.eval.metrics import compute_metrics

    recs = [{**r, "format_error": r.get("format_error", False), "step_verdicts": r.get("step_verdicts") or {}}
            for r in rows]
    m = compute_metrics(recs)

    def f(x):
        return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"

    parts = [f"macro F1 {f(m['macro_f1'])}", f"NDCG@10 {f(m.get('ndcg@10'))} over {int(m.get('ndcg@10_queries', 0))} "
             f"queries ({int(m.get('ndcg@10_skipped_queries', 0))} without a relevant item left out)"]
    if "rmse_grade" in m:
        parts.append(f"grade RMSE {f(m['rmse_grade'])} ({int(m['rmse_grade_n'])} graded pairs)")
    return "; ".join(parts)


def score_main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    for flag, v in (("--batch-size", a.batch_size), ("--limit", a.limit), ("--max-new-tokens", a.max_new_tokens)):
        if v is not None and v < 1:
            raise TaosrError(f"{flag}: must be at least 1, got {v}")
    if a.max_length < 8:
        raise TaosrError(f"--max-length: must be at least 8, got {a.max_length}")
    if os.path.isdir(a.out):
        raise TaosrError(f"--out: {a.out} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(a.out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise TaosrError(f"--out: {parent} is a file, not a directory")
    if not os.path.exists(a.file):
        raise TaosrError(f"{a.file}: no such file")

    from taosr.data.datamodule import RelevanceDataModule
    import dataclasses

    reader = dataclasses.replace(reader_spec(a, a.file), path=None)  # the DataModule names the file
    from taosr.models.factory import export_meta

    # the prompt the model was trained with: --target; --direct reads the label slot of the label prompt;
    # else what the export recorded (a label-only model is prompted as it was trained), else reasoning
    target = a.target or ("label" if a.direct else export_meta(a.model).get("target") or "reasoning")
    dm = RelevanceDataModule(train=a.file, val=None, test=None, reader=reader, max_length=a.max_length,
                             limit_train=a.limit, target=target)
    dm.setup("score")
    examples = dm.splits["train"]
    if not examples:
        raise TaosrError(f"{a.file}: no pairs to score")
    model, tok = load_model(a.model)
    dm.attach_tokenizer(tok)

    t0, c0 = time.perf_counter(), time.process_time()
    rows = score_rows(model, tok, dm, examples, a.direct, a.batch_size, a.max_new_tokens)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    os.makedirs(parent, exist_ok=True)
    write_jsonl(a.out, rows)
    unscored = sum(r["p_tier"] is None for r in rows)
    mode = "direct" if a.direct else "reasoning"
    print(f"scored {len(rows)} pairs ({mode}) in {dt:.1f}s: {len(rows) / dt:.1f} pairs/s "
          f"({cpu:.1f}s of CPU time: {len(rows) / max(cpu, 1e-9):.1f} pairs per CPU-second) -> {a.out}")
    if unscored:
        print(f"{unscored} completions have no label line: no score (null; ranked last)")
    print(summary(rows))
    return 0
