"""Where two arms of a ``taosr compare`` disagree, example by example (pure, over prediction files).

A paired difference of macro F1 says *that* one arm beats another; the examples one arm gets right
and the other wrong say *where*. Every run of a comparison is scored on the same evaluation set, so
its prediction records (``<run>/heldout/eval/test-predictions.jsonl``, one per example, written by
``taosr test``) pair up by example id. For two arms and a seed, :func:`flip_counts` counts the
examples both got right, only one got right, or neither, overall and per query type;
:func:`flipped_steps` sets the mean step verdicts (:func:`step_means`) of the examples one arm
alone got right against the other's (which reasoning step went wrong); :func:`stable_flips` ranks the examples by how many seeds
one arm got right that the other did not (a systematic difference rather than sampling noise).
``notebooks/compare_study.ipynb`` shows them.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

from taosr.errors import ConfigError
from taosr.labels import LONG_TAIL_TYPES, STEP_KEYS

PREDICTIONS = os.path.join("heldout", "eval", "test-predictions.jsonl")
OUTCOMES = ("both right", "a only", "b only", "both wrong")


def predictions_path(out: str, arm: str, seed: int | None) -> str:
    """A compare run's prediction file: ``<out>/<arm>/seed<S>/...``; the start and baselines, scored
    once (``seed`` None), ``<out>/<arm>/...``."""
    root = os.path.join(out, arm) if seed is None else os.path.join(out, arm, f"seed{seed}")
    return os.path.join(root, PREDICTIONS)


def scored_seeds(out: str, arm: str) -> list[int]:
    """The seeds of ``arm`` under a compare folder that have a prediction file, in order."""
    folder = os.path.join(out, arm)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    seeds = [int(n[4:]) for n in names if n.startswith("seed") and n[4:].lstrip("-").isdigit()]
    return sorted(s for s in seeds if os.path.isfile(predictions_path(out, arm, s)))


def read_predictions(path: str) -> dict[str, dict]:
    """The records of a prediction file by example id (``id``, else ``index``); a missing file, a bad
    line or a repeated id is an error naming the file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: prediction file not found (is that run scored? `taosr compare --report-only` "
                          "says where each run stands)")
    out: dict[str, dict] = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                key = str(r["id"] if r.get("id") is not None else r["index"])
                r["gold"]
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{path}:{n}: not a prediction record ({type(err).__name__}: {err})") from None
            if key in out:
                raise ConfigError(f"{path}:{n}: example {key!r} appears twice")
            out[key] = r
    return out


def is_right(record: Mapping) -> bool:
    """The predicted tier is the gold one (a format error, no tier, is wrong)."""
    return record.get("pred") is not None and int(record["pred"]) == int(record["gold"])


def _shared(a: Mapping[str, dict], b: Mapping[str, dict]) -> list[str]:
    ids = [k for k in a if k in b]
    if len(ids) != len(a) or len(ids) != len(b):
        raise ConfigError(f"the two prediction sets are not of the same examples ({len(a)} and {len(b)} records, "
                          f"{len(ids)} shared): were they scored on the same evaluation set?")
    return ids


def outcome(ra: Mapping, rb: Mapping) -> str:
    """One of :data:`OUTCOMES` for an example's records from arm a and arm b."""
    x, y = is_right(ra), is_right(rb)
    return "both right" if x and y else "a only" if x else "b only" if y else "both wrong"


def flip_counts(a: Mapping[str, dict], b: Mapping[str, dict]) -> dict[str, Counter]:
    """``{slice: Counter(outcome -> examples)}`` for the slices ``overall``, ``long_tail`` and each
    query type (the slices of :func:`taosr.eval.metrics.compute_metrics`)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for k in _shared(a, b):
        o = outcome(a[k], b[k])
        qt = a[k].get("query_type") or "other"
        out["overall"][o] += 1
        out[qt][o] += 1
        if qt in LONG_TAIL_TYPES:
            out["long_tail"][o] += 1
    return dict(out)


def step_means(records: Iterable[Mapping]) -> dict[str, float]:
    """Mean verdict per reasoning step (1 right, 0 wrong; soft GRM scores as they are) over the
    records that have one for that step; NaN where none has."""
    sums, counts = defaultdict(float), defaultdict(int)
    for r in records:
        for k, v in (r.get("step_verdicts") or {}).items():
            if v is not None and k in STEP_KEYS:
                sums[k] += float(v)
                counts[k] += 1
    return {k: sums[k] / counts[k] if counts[k] else float("nan") for k in STEP_KEYS}


def flipped_steps(a: Mapping[str, dict], b: Mapping[str, dict], which: str = "b only") -> dict[str, dict[str, float]]:
    """On the examples of outcome ``which`` (``"b only"``: b right, a wrong), each arm's
    :func:`step_means`: the step where a's mean falls below b's is where a's reasoning went wrong."""
    if which not in OUTCOMES:
        raise ValueError(f"which must be one of {OUTCOMES}, got {which!r}")
    ids = [k for k in _shared(a, b) if outcome(a[k], b[k]) == which]
    return {"a": step_means(a[k] for k in ids), "b": step_means(b[k] for k in ids), "n": len(ids)}


def stable_flips(a_by_seed: Mapping[int, Mapping[str, dict]], b_by_seed: Mapping[int, Mapping[str, dict]]) -> list[dict]:
    """Per example over the seeds both arms have: how many seeds each got it right; sorted by
    ``b_right - a_right`` (most in b's favour first), then by id. A row: id, query_type, gold,
    a_right, b_right, seeds."""
    seeds = [s for s in a_by_seed if s in b_by_seed]
    if not seeds:
        return []
    tally: dict[str, list[int]] = {}
    first: dict[str, dict] = {}
    for s in seeds:
        for k in _shared(a_by_seed[s], b_by_seed[s]):
            t = tally.setdefault(k, [0, 0])
            t[0] += is_right(a_by_seed[s][k])
            t[1] += is_right(b_by_seed[s][k])
            first.setdefault(k, a_by_seed[s][k])
    rows = [{"id": k, "query_type": first[k].get("query_type"), "gold": first[k]["gold"], "a_right": ar,
             "b_right": br, "seeds": len(seeds)} for k, (ar, br) in tally.items()]
    rows.sort(key=lambda r: (-(r["b_right"] - r["a_right"]), r["id"]))
    return rows
