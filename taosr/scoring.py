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

Rows are appended to ``OUT.partial`` chunk by chunk (its settings in ``OUT.partial.json``; progress
every 30 s); a re-run with the same settings continues after the last whole chunk (the same output
as an uninterrupted run), other settings or another file start over. The complete file is written
under a temporary name and renamed, and the partial files removed. Prints pairs/s (the
scoring loop: prompts, generation, forward passes; not loading), also per second of this process's
CPU time (what a shared machine's wall clock hides) and, since every row has a gold
label, macro F1 of the argmax tier, NDCG@10 of the expected tier and, when rows carry a numeric
``grade``, the grade RMSE (:mod:`taosr.eval.ranking`).
"""
from __future__ import annotations

import math
import os
import time


from taosr.cliargs import ArgumentParser, add_reader_options, options_given, reader_spec
from taosr.errors import ConfigError, TaosrError
from taosr.reasoning.targets import TARGETS
from taosr.schema import append_jsonl, write_json, write_jsonl


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
    p.add_argument("--max-new-tokens", type=int, default=96, help="reasoning mode: tokens generated per pair "
                                                                   "(--direct generates none)")
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


def chunk_size(direct: bool, batch_size: int) -> int:
    """Pairs scored together (direct: a larger pool, sorted by length); the partial file grows by chunks."""
    return batch_size if not direct else max(batch_size, 1024)


def score_rows(model, tok, dm, examples: list, direct: bool, batch_size: int, max_new_tokens: int,
               start: int = 0, on_chunk=None) -> list[dict]:
    """One output row per example of ``examples[start:]`` (in order); see the module docstring for the
    fields. ``on_chunk`` receives each chunk's rows as soon as they are scored."""
    from taosr.eval.generation import GenerationSpec, decode_completions, generate_ids, make_record
    from taosr.eval.scores import DIRECT_PREFIX, LabelSlotCapture, prompt_rows, tier_scores

    dev = next(model.parameters()).device
    out: list[dict] = []
    spec = GenerationSpec(max_new_tokens=max_new_tokens)
    size = chunk_size(direct, batch_size)
    for s in range(start, len(examples), size):
        chunk = list(enumerate(examples[s: s + size], start=s))
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
        if on_chunk is not None:
            on_chunk(out[len(out) - len(chunk):])
    return out


# ----------------------------------------------------------------------------- resumable output
FILE_OPTIONS = ("items", "queries", "attributes")  # reader options naming a file joined to the pairs


def _settings(a, target: str) -> dict:
    """What the rows depend on: a partial file made with other settings is not continued. Files (the
    pairs and the joined tables) and the model are known by their contents, not their paths, so a
    copied or moved tree continues."""
    from taosr.fingerprints import content_fingerprint
    from taosr.sampling import model_fingerprint

    keep = {k: v for k, v in vars(a).items() if k not in ("out", "limit", "model", "file", "target")}
    keep.update({k: content_fingerprint(keep[k]) for k in FILE_OPTIONS if keep.get(k) and os.path.exists(keep[k])})
    return {**keep, "file": content_fingerprint(a.file), "model": model_fingerprint(a.model), "target": target}


def _settings_before_2026_12_04(a, settings: dict) -> dict:
    """``settings`` as taosr recorded them before 2026-12-04 (the files by path, the pairs file
    absolute, the model by its file times): a partial file of that time is continued where it was
    written."""
    from taosr.fingerprints import file_times_fingerprint

    model = file_times_fingerprint(a.model) if os.path.isdir(a.model) else a.model
    return {**settings, **{k: getattr(a, k) for k in FILE_OPTIONS}, "file": os.path.abspath(a.file), "model": model}


def resume_rows(part: str, settings: dict, examples: list, size: int, also: dict | None = None) -> list[dict]:
    """The whole chunks of ``OUT.partial`` that a run with these ``settings`` (or ``also``: the same
    settings as recorded by an older taosr) scored on these examples (a torn last line and a chunk
    cut short are dropped; other settings or other rows: none)."""
    import json

    meta = part + ".json"
    if not (os.path.exists(part) and os.path.exists(meta)):
        return []
    try:
        with open(meta, encoding="utf-8") as fh:
            recorded = json.load(fh)
        same = any(recorded == json.loads(json.dumps(x, default=str)) for x in (settings, also) if x is not None)
    except ValueError:
        same = False
    if not same:
        print(f"taosr: {part}: made with other settings; scoring from the start")
        return []
    rows = []
    with open(part, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except ValueError:
                break
            i = len(rows)
            ex = examples[i] if i < len(examples) else None
            if ex is None or (row.get("id"), row.get("query"), row.get("title")) != (ex.id, ex.query, ex.item.title):
                print(f"taosr: {part}: row {i + 1} is not this file's pair {i + 1}; scoring from the start")
                return []
            rows.append(row)
    return rows[: len(rows) // size * size]


def summary(rows: list[dict]) -> str:
    """Macro F1 (argmax tier), NDCG@10 (expected tier), with grades the grade RMSE and, for
    reasoning completions, how many break the format (the ``format_error`` field of each row)."""
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
    reasoned = [r for r in rows if "format_error" in r]  # --reasoning: a completion that breaks the format is named
    if reasoned:
        bad = sum(bool(r["format_error"]) for r in reasoned)
        parts.append(f"format errors {bad} of {len(reasoned)} completions ({bad / len(reasoned):.0%})")
    return "; ".join(parts)


def score_main(argv: list[str]) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.direct and "max_new_tokens" in options_given(p, argv):
        raise TaosrError("--max-new-tokens: --direct generates nothing (it reads 'Label:' right after the prompt); "
                         "leave --max-new-tokens out or score with --reasoning")
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
    from taosr.models.factory import export_meta, note_chat_template, prompt_target

    # the prompt the model was trained with: --target; --direct reads the label slot of the label prompt;
    # else what the export recorded (a label-only model is prompted as it was trained), else reasoning
    meta = export_meta(a.model)
    target = prompt_target(a.model, a.target or ("label" if a.direct else None))
    # with or without the tokenizer's chat template as the export was trained (data.use_chat_template, recorded
    # in its taosr_export.json); None (the tokenizer's default) for other models
    chat = meta.get("use_chat_template")
    dm = RelevanceDataModule(train=a.file, val=None, test=None, reader=reader, max_length=a.max_length,
                             limit_train=a.limit, target=target, use_chat_template=chat)
    dm.setup("score")
    examples = dm.splits["train"]
    if not examples:
        raise TaosrError(f"{a.file}: no pairs to score")
    model, tok = load_model(a.model)
    note_chat_template(a.model, tok, chat)
    dm.attach_tokenizer(tok)

    # written as it goes (OUT.partial, whole chunks, with its settings in OUT.partial.json); a re-run
    # with the same settings continues after the last whole chunk
    os.makedirs(parent, exist_ok=True)
    part, size, settings = a.out + ".partial", chunk_size(a.direct, a.batch_size), _settings(a, target)
    done = resume_rows(part, settings, examples, size, also=_settings_before_2026_12_04(a, settings))
    if done:
        print(f"taosr: {part}: continuing after {len(done)} of {len(examples)} pairs scored")
    with open(part, "w", encoding="utf-8") as fh:
        append_jsonl(fh, done)
    write_json(part + ".json", settings)
    t0, c0 = time.perf_counter(), time.process_time()
    progress = {"rows": 0, "said": t0}

    def keep(chunk: list[dict]) -> None:
        with open(part, "a", encoding="utf-8") as fh:
            append_jsonl(fh, chunk)
        progress["rows"] += len(chunk)
        now = time.perf_counter()
        if now - progress["said"] >= 30:  # a long run says how far it is
            print(f"taosr: scored {len(done) + progress['rows']} of {len(examples)} pairs "
                  f"({progress['rows'] / (now - t0):.1f} pairs/s)", flush=True)
            progress["said"] = now

    new_rows = score_rows(model, tok, dm, examples, a.direct, a.batch_size, a.max_new_tokens, start=len(done),
                          on_chunk=keep)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = done + new_rows
    write_jsonl(a.out, rows)
    for f in (part, part + ".json"):
        os.remove(f)
    unscored = sum(r["p_tier"] is None for r in rows)
    mode = "direct" if a.direct else "reasoning"
    n = len(new_rows)
    print(f"scored {n} pairs ({mode}) in {dt:.1f}s: {n / max(dt, 1e-9):.1f} pairs/s "
          f"({cpu:.1f}s of CPU time: {n / max(cpu, 1e-9):.1f} pairs per CPU-second) -> {a.out}"
          + (f"; {len(done)} pairs kept from {part}" if done else ""))
    if unscored:
        print(f"{unscored} completions have no label line: no score (null; ranked last)")
    print(summary(rows))
    return 0
