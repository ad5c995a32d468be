"""Read back the training history a run logged, whatever the logger: a CSVLogger's ``metrics.csv``
or an offline W&B run's ``run-*.wandb`` file (a W&B run synced online keeps its local copy too).

``taosr compare`` uses it to report the training signals behind each arm's result (rewards, the
share of groups with no reward spread, SRPO's critical-step counts and GRM/verifier disagreement)
next to the held-out metrics.

The ``.wandb`` file is W&B's local transaction log: a 7-byte header (``:W&B``, a 2-byte magic, a
version byte), then 32 KiB blocks of records, each with a 7-byte header (checksum, 2-byte
little-endian length, type: 1 full, 2 first, 3 middle, 4 last piece) and a protobuf ``Record``
payload; ``history`` records carry one logged row each. This version of wandb ships no reader for
it, so a file this reader cannot parse gives None (the caller leaves the figures out) rather than
an error.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import struct

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
WANDB_STEP = "trainer/global_step"  # the step Lightning's WandbLogger logs with each row (a CSV row's ``step``)


def _wandb_records(path: str):
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B run file")
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind not in (FULL, FIRST, MIDDLE, LAST):
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos - HEADER}")
        buf += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            yield buf
            buf = b""


def _number(text: str) -> float | None:
    try:
        v = json.loads(text)
    except ValueError:
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def wandb_history(path: str) -> list[dict[str, float]]:
    """The numeric values of every ``history`` row of one ``run-*.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for payload in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            v = _number(item.value_json)
            if v is not None:
                row[key] = v
        rows.append(row)
    return rows


def csv_history(path: str) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def run_history(run_root: str) -> list[dict[str, float]] | None:
    """Every logged row of the run in ``run_root``: its CSV versions' and offline W&B runs' rows (a
    fit resumed adds a version or a run: a leg), oldest leg first (by when each file was last
    written); None when there is no history or it cannot be read. A step logged by more than one leg
    is read from the latest of them: a resume redoes the steps after its checkpoint (a hard kill
    leaves the earlier leg's rows of them), a CSVLogger beside W&B logs the same rows in both, and a
    fit resumed after switching between offline W&B and ``WANDB_MODE=disabled`` (a CSV leg) has one
    leg of each kind. A W&B row without a step, where there are CSVs, cannot be told from a CSV
    row's twin and is left out."""
    csvs = glob.glob(os.path.join(run_root, "*", "version_*", "metrics.csv"))
    runs = glob.glob(os.path.join(run_root, "wandb", "*run-*", "run-*.wandb"))
    try:
        legs = [(os.path.getmtime(p), p, csv_history(p), "step") for p in csvs]
        legs += [(os.path.getmtime(p), p, [r for r in wandb_history(p) if not csvs or WANDB_STEP in r], WANDB_STEP)
                 for p in runs]
    except Exception:  # noqa: BLE001 - an unreadable or foreign-format log: no history, not a failure
        return None
    later: set[float] = set()  # the steps logged by the legs after this one
    kept = []
    for _, _, rows, key in sorted(legs, reverse=True):
        kept.append([r for r in rows if r.get(key) is None or r[key] not in later])
        later |= {r[key] for r in rows if r.get(key) is not None}
    rows = [r for leg in reversed(kept) for r in leg]
    return rows or None


def mean_of(rows: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the rows that logged it (NaN when none did)."""
    vals = [r[key] for r in rows if key in r and not math.isnan(r[key])]
    return sum(vals) / len(vals) if vals else float("nan")


def change_over(rows: list[dict[str, float]], key: str, share: float = 1 / 3) -> float:
    """How much ``key`` moved over a fit: its mean over the last ``share`` of the rows that logged it
    minus its mean over the first ``share`` (at least one row each), in step order; NaN with fewer
    than two such rows. ``run_history``'s rows are in step order already (a resume's redone steps
    are read once); rows are sorted by their step where every one has it."""
    got = [r for r in rows if key in r and not math.isnan(r[key])]
    steps = [r.get("step", r.get(WANDB_STEP)) for r in got]
    if all(s is not None for s in steps):
        got = [r for _, r in sorted(zip(steps, got), key=lambda pair: pair[0])]
    if len(got) < 2:
        return float("nan")
    k = max(1, int(len(got) * share))
    return mean_of(got[-k:], key) - mean_of(got[:k], key)
