"""``taosr sample``: offline pass@N sampling from a policy export.

For every prompt of a split: N sampled completions, each parsed (label, format error) and
checked (correct, step verdicts against annotations), plus the prompt's pass rate. ``--target``
is the policy's training target (``data.target``): it sets the prompt and how completions are
parsed; without it, the target the export's ``taosr_export.json`` records (as ``taosr score``,
:func:`taosr.models.factory.prompt_target`), else ``reasoning``; a ``label`` policy's samples have no
steps (step verdicts all null). One JSON
line per prompt, self-contained (the example is embedded), so DPO pair building, rejection
sampling and diverse sampling can read it without the original data::

    {"index": 0, "split": "train", "pass_rate": 0.5, "example": {...},
     "samples": [{"text": "...", "pred": 3, "correct": true, "format_error": false,
                  "step_verdicts": {"query": 1.0, ...}}, ...],
     "sampler": {"model": "...", "model_fingerprint": "...", "n": 8, "temperature": 1.0, ...}}

The output is written as it goes and a re-run continues where it stopped (:data:`RESUME_RULE`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Collection

import torch

from taosr.callbacks.progress import env_interval, progress_line
from taosr.cliargs import (ArgumentParser, add_reader_options, add_share_options, options_given, reader_flags_given,
                           reader_spec, refuse_greedy_settings, share_settings)
from taosr.data.synth import FIELD_SHARES
from taosr.errors import DataError, TaosrError
from taosr.fingerprints import content_fingerprint, file_times_fingerprint
from taosr.eval.generation import GenerationSpec, decode_completions, make_record
from taosr.reasoning.targets import TARGETS
from taosr.rl.engines.hf import HFEngine
from taosr.schema import append_jsonl


def sample_split(model, tokenizer, dm, split: str, spec: GenerationSpec, batch_size: int = 16,
                 limit: int | None = None, skip: Collection[int] = (),
                 on_batch: Callable[[list[dict]], None] | None = None, extra: dict | None = None) -> list[dict]:
    """Sample every prompt of ``split`` (the first ``limit``) except the indices in ``skip``;
    ``on_batch`` receives each batch's rows as soon as they are done (to write them as it goes);
    ``extra`` keys are added to every row (``taosr sample`` records its settings under ``sampler``)."""
    extra = extra or {}
    dm.attach_tokenizer(tokenizer)
    rows = dm.splits[split][:limit] if limit else dm.splits[split]
    todo = [i for i in range(len(rows)) if i not in skip]
    out = []
    engine = HFEngine()  # each prompt prefilled once, its N samples decoded on a preallocated cache
    for s in range(0, len(todo), batch_size):
        chunk = [(i, rows[i]) for i in todo[s: s + batch_size]]
        batch = dm.collate_prompts(chunk)
        dev = next(model.parameters()).device
        ids = engine.generate(model, tokenizer, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), spec)
        texts = decode_completions(tokenizer, ids)
        n = spec.num_return_sequences
        done = []
        for j, (i, ex) in enumerate(chunk):
            recs = [make_record(ex, t, i, target=dm.target) for t in texts[j * n:(j + 1) * n]]
            samples = [{"text": r["reasoning"], "pred": r["pred"], "correct": r["pred"] == ex.label,
                        "format_error": r["format_error"], "step_verdicts": r["step_verdicts"]} for r in recs]
            done.append({"index": i, "split": split, "pass_rate": sum(x["correct"] for x in samples) / n,
                         "example": ex.to_dict(), "samples": samples, **extra})
        out += done
        if on_batch is not None:
            on_batch(done)
    return out


# ----------------------------------------------------------------------------- resumable output
def partial_path(out: str) -> str:
    return out + ".partial"


def read_sample_lines(path: str) -> dict[int, dict]:
    """Rows of a samples file (final or partial) by prompt index. A last line cut short by a crash
    (no newline, or not JSON) is dropped; a bad line before it is an error naming the line."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    rows: dict[int, dict] = {}
    for n, raw in enumerate(lines, 1):
        last = n == len(lines)  # text after the final newline: a torn line (or nothing)
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict) or not isinstance(row.get("index"), int) or "samples" not in row:
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            if last:
                continue
            raise DataError(f"{path}:{n}", None, "not a `taosr sample` line; use another --out or delete the file") from None
        if last:
            continue
        rows[row["index"]] = row
    return rows


CONTENT = "sha256:"  # a model_fingerprint of a folder's contents (before 2026-12-04: of its file times)


def model_fingerprint(name_or_path: str) -> str:
    """What identifies the policy: for a folder, ``sha256:`` and the digest of its files
    (:func:`content_fingerprint`); otherwise the hub id or preset name."""
    return CONTENT + content_fingerprint(name_or_path) if os.path.isdir(name_or_path) else name_or_path


def same_model(recorded, name_or_path: str) -> bool:
    """Whether a recorded :func:`model_fingerprint` names the model at ``name_or_path`` now (one
    recorded before 2026-12-04, of file times, is compared by that rule: such files stay resumable
    where they were)."""
    if not os.path.isdir(name_or_path) or (isinstance(recorded, str) and recorded.startswith(CONTENT)):
        return recorded == model_fingerprint(name_or_path)
    return recorded == file_times_fingerprint(name_or_path)


def resume_mismatch(done: dict[int, dict], rows: list, split: str, sampler: dict) -> str | None:
    """Why rows already in the file cannot be kept for this run (None: they can): another model or
    sampling settings, another split, or another prompt at an index (other data). A policy folder is
    known by its content (``model_fingerprint``, :func:`same_model`), not by the path it was given as
    (a moved tree)."""
    def rest(s: dict) -> dict:
        return {k: v for k, v in s.items() if k not in ("model", "model_fingerprint")}

    model: dict = {}  # recorded fingerprint -> whether it names this run's model (each checked once)
    for i, row in sorted(done.items()):
        theirs = row.get("sampler") if isinstance(row.get("sampler"), dict) else {}
        fp = theirs.get("model_fingerprint")
        if fp is not None and fp not in model:
            model[fp] = same_model(fp, sampler["model"])
        diff = [k for k in dict.fromkeys([*rest(sampler), *rest(theirs)]) if theirs.get(k) != sampler.get(k)]
        if fp is None or not model[fp]:
            diff.insert(0, "model_fingerprint")
        if diff:
            return f"prompt {i} was sampled with other settings ({', '.join(diff)})"
        if row.get("split") != split:
            return f"prompt {i} is from split {row.get('split')!r}, not {split!r}"
        if i >= len(rows) or row.get("example") != rows[i].to_dict():
            return f"prompt {i} is not this data's prompt at that index (other --data or synth settings)"
    return None


def _save_rng(path: str, n_rows: int) -> None:
    state = {"rows": n_rows, "cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore_rng(path: str, n_rows: int) -> bool:
    if not os.path.exists(path):
        return False
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # a torn state file: resume without it
        return False
    if state.get("rows") != n_rows:
        return False
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") and torch.cuda.is_available():
        from taosr.callbacks.checkpoint import set_cuda_rng_states

        set_cuda_rng_states(state["cuda"])
    return True


RESUME_RULE = """\
Output is written as it goes: one JSON line per prompt, appended to OUT.partial batch by batch
(each batch in one write, flushed to disk), and renamed to OUT when every prompt is done. A re-run
with the same --out continues: prompts already in OUT or OUT.partial are kept and not sampled again,
a line cut short by a crash is dropped, and the random state saved after each batch is restored, so
an interrupted run ends with the same file as an uninterrupted one. When OUT already holds every
prompt asked for, nothing is recomputed. Rows are kept only if they were sampled by the same model
(same export files), with the same --n, --temperature, --top-p, --max-new-tokens, --seed and --target, from
the same prompts; otherwise the command says so and samples again from the start (OUT is replaced
only when the new file is complete)."""


SYNTH_OPTIONS = ("synth_n_train", "synth_n_val", "synth_n_test", "synth_seed",
                 *(f"synth_{name}" for name in FIELD_SHARES), "data_dir")  # --data synth only


def sample_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="taosr sample", description="Offline pass@N sampling from a policy export.",
                                epilog=RESUME_RULE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="policy export folder (or HF id / preset)")
    p.add_argument("--out", required=True, help="output JSONL (resumable: see below)")
    p.add_argument("--data", default="synth", help="'synth' (embedded default) or a data file (read with the "
                                                   "reader flags below, as in taosr data convert)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--target", default=None, choices=TARGETS.names(),
                   help="the policy's training target (data.target): its prompt and how its output is parsed; "
                        "default: the one the export records (taosr_export.json), else reasoning")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (then --n 1 and no --top-p)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-n-train", type=int, default=3000, help="size of the synthetic train split (as in the "
                                                                   "config; --data synth only, as every --synth-* option and --data-dir)")
    p.add_argument("--synth-n-val", type=int, default=200)
    p.add_argument("--synth-n-test", type=int, default=400)
    p.add_argument("--synth-seed", type=int, default=0)
    add_share_options(p, prefix="synth-")
    p.add_argument("--data-dir", default=".cache/taosr/data", help="cache of the synthetic data")
    add_reader_options(p)
    a = p.parse_args(argv)
    given = options_given(p, argv)

    # Every value is checked before any work (data, model, sampling).
    flags = reader_flags_given(a)
    if a.data == "synth" and flags:
        raise TaosrError(f"{flags[0]}: reader flags apply to a data file; give it with --data FILE")
    if a.data != "synth":
        for dest in SYNTH_OPTIONS:
            if dest in given:
                raise TaosrError(f"--{dest.replace('_', '-')}: applies to the synthetic data (--data synth), not to "
                                 f"--data {a.data}; leave it out")
    for flag, v, low in (("--n", a.n, 1), ("--batch-size", a.batch_size, 1), ("--max-new-tokens", a.max_new_tokens, 1),
                         ("--limit", a.limit, 1), ("--synth-n-train", a.synth_n_train, 1),
                         ("--synth-n-val", a.synth_n_val, 0), ("--synth-n-test", a.synth_n_test, 0)):
        if v is not None and v < low:
            raise TaosrError(f"{flag}: must be at least {low}, got {v}")
    shares = share_settings(a, prefix="synth-")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise TaosrError(f"--temperature: must be a number >= 0, got {a.temperature}")
    if not (0 < a.top_p <= 1):
        raise TaosrError(f"--top-p: must be in (0, 1], got {a.top_p}")
    refuse_greedy_settings(given, a.temperature, a.n)
    for path in (a.out, partial_path(a.out)):
        if os.path.isdir(path):
            raise TaosrError(f"--out: {path} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(a.out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise TaosrError(f"--out: {parent} is a file, not a directory")

    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import export_meta, load_for_inference, note_chat_template, prompt_target

    paths = {"train": a.data if a.split == "train" else None, "val": a.data if a.split == "val" else None,
             "test": a.data if a.split == "test" else None}
    if a.split != "train":
        paths["train"] = a.data
    reader = None
    if a.data != "synth":
        import dataclasses

        reader = dataclasses.replace(reader_spec(a, a.data), path=None)  # the DataModule names the file
    # prompted as the export was trained: with or without the tokenizer's chat template (data.use_chat_template,
    # recorded in its taosr_export.json; None, the tokenizer's default, for other models)
    chat = export_meta(a.model).get("use_chat_template")
    target = prompt_target(a.model, a.target)  # --target, else what the export recorded (as in taosr score)
    dm = RelevanceDataModule(view="sft", target=target, synth=SynthConfig(n_train=a.synth_n_train, n_val=a.synth_n_val,
                                                                n_test=a.synth_n_test, seed=a.synth_seed, **shares),
                             data_dir=a.data_dir,
                             reader=reader, use_chat_template=chat, **paths)
    dm.setup("fit")
    rows = dm.splits[a.split][:a.limit] if a.limit else dm.splits[a.split]
    if not rows:
        raise TaosrError(f"--split {a.split}: no prompts to sample in {a.data}")

    part, rng_path = partial_path(a.out), partial_path(a.out) + ".rng"
    sampler = {"model": a.model, "model_fingerprint": model_fingerprint(a.model), "n": a.n,
               "temperature": a.temperature, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens, "seed": a.seed}
    if target != "reasoning":  # recorded only when not the default: older files stay resumable
        sampler["target"] = target
    final = read_sample_lines(a.out)
    partial = read_sample_lines(part)
    done = {**final, **partial}
    why = resume_mismatch(done, rows, a.split, sampler)
    if why:
        print(f"taosr: {a.out if not partial else part}: {why}; sampling again from the start")
        final, partial, done = {}, {}, {}
    todo = [i for i in range(len(rows)) if i not in done]
    if not todo:
        _finish(a.out, done, (part, rng_path), rewrite=bool(partial) or len(final) != len(done))
        print(f"{a.out}: already holds all {len(rows)} prompts x {a.n}; nothing to sample")
        _summary(list(done.values()), a.n, a.out)
        return 0

    os.makedirs(parent, exist_ok=True)
    for row in done.values():  # the policy's path as given now (the same content: resume_mismatch)
        row["sampler"] = sampler
    _write_all(part, done)  # a clean base: what is done, without a torn last line
    torch.manual_seed(a.seed)
    model, tok = load_for_inference(a.model, corpus=dm.corpus)  # on the GPU in bf16 where there is one
    note_chat_template(a.model, tok, chat)
    if done:
        print(f"taosr: continuing {a.out}: {len(done)} of {len(rows)} prompts already sampled")
        if not _restore_rng(rng_path, len(done)):
            print(f"taosr: {part}: no saved random state for {len(done)} prompts; the remaining samples are drawn "
                  f"from --seed {a.seed} (they differ from an uninterrupted run's)")
    spec = GenerationSpec(max_new_tokens=a.max_new_tokens, do_sample=True, temperature=a.temperature,
                          top_p=a.top_p, num_return_sequences=a.n)
    t0 = time.perf_counter()
    new: list[dict] = []
    every, said = env_interval(), [t0]
    with open(part, "a", encoding="utf-8") as fh:
        def keep(batch_rows: list[dict]) -> None:
            append_jsonl(fh, batch_rows)
            new.extend(batch_rows)
            _save_rng(rng_path, len(done) + len(new))
            now = time.perf_counter()
            if now - said[0] >= every and len(done) + len(new) < len(rows):  # a long run says how far it is
                print("taosr: " + progress_line("sample", "prompt", len(done) + len(new), len(rows), now - t0,
                                                len(new)), flush=True)
                said[0] = now

        try:
            sample_split(model, tok, dm, a.split, spec, a.batch_size, a.limit, skip=set(done), on_batch=keep,
                         extra={"sampler": sampler})
        except KeyboardInterrupt:
            print(f"taosr: interrupted: {len(done) + len(new)} of {len(rows)} prompts kept in {part}; "
                  "run the same command again to continue", file=sys.stderr)
            return 130
    everything = {**done, **{r["index"]: r for r in new}}
    _finish(a.out, everything, (part, rng_path))
    print(f"sampled {len(new)} prompts x {a.n} in {time.perf_counter() - t0:.1f}s -> {a.out}")
    _summary(list(everything.values()), a.n, a.out)
    return 0


def _finish(out: str, rows: dict[int, dict], leftovers: tuple[str, ...], rewrite: bool = True) -> None:
    """Write the complete file (unless it already is) and remove the partial file and random state."""
    if rewrite:
        _write_all(out, rows)
    for path in leftovers:
        if os.path.exists(path):
            os.remove(path)


def _write_all(path: str, rows: dict[int, dict]) -> None:
    """All rows by index, to a temporary name renamed over ``path`` (never half-written)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            append_jsonl(fh, [rows[i] for i in sorted(rows)])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _summary(rows: list[dict], n: int, out: str) -> None:
    rates = [r["pass_rate"] for r in rows]
    mixed = sum(0 < x < 1 for x in rates)
    print(f"{out}: {len(rows)} prompts x {n}; mean pass@1 {sum(rates) / len(rates):.3f}; prompts with mixed outcomes "
          f"{mixed}; never correct {sum(x == 0 for x in rates)}; always correct {sum(x == 1 for x in rates)}")
