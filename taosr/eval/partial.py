"""A ``taosr test`` that is interrupted keeps what it generated: each batch's completions are
appended to ``<run>/eval/test-partial.jsonl`` as they are made, and the same command run again
takes them from there instead of generating them again (a SmolLM2 evaluation of 2000 examples is
half an hour on a CPU). The file is removed when the evaluation ends.

Its first line is a key of what the completions depend on besides the prompt: the model (its
folder's file names, sizes and times, or its hub id), the checkpoint (path, size, time), the
generation settings and the scoring switch; a file with another key is started over. Each later
line is one example: its index, a digest of its prompt's token ids, the completion and, with
``eval_scores``, its tier probabilities and expected tier. A completion is reused only where the
example at that index still has the same prompt digest, so other data, another prompt format or
another tokenizer generates again; the record itself is rebuilt from the current example (its gold
label, query type). Greedy evaluations only: sampled completions would need the random state too.

A multi-process (DDP) evaluation gives each rank a file of its own (``test-partial.rank<R>.jsonl``,
rank R of more than one), and every rank reads every file of the folder: the completions are known
by example index and prompt, not by rank, so a run continues with another number of processes (one
stopped on 2 GPUs and run again on 1, or the other way). Rank 0 removes them all at the end.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from taosr.fingerprints import file_stats

PARTIAL = "test-partial.jsonl"


def partial_name(rank: int = 0, world_size: int = 1) -> str:
    """The file rank ``rank`` of ``world_size`` processes appends to."""
    return PARTIAL if world_size == 1 else f"test-partial.rank{rank}.jsonl"


def _is_partial(name: str) -> bool:
    return name == PARTIAL or (name.startswith("test-partial.rank") and name.endswith(".jsonl"))


def prompt_digest(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """A digest of one prompt's token ids (its unmasked positions: padding does not count)."""
    ids = input_ids[attention_mask.bool()].tolist()
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def _stat_key(path: str | None) -> list:
    """Names, sizes and modification times of a file or a folder's files ([] for a hub id or None)."""
    return [list(s[:3]) for s in file_stats(path)] if path and os.path.exists(path) else []


def partial_key(model: str, ckpt: str | None, settings: dict) -> str:
    """The key of a partial file: the model and checkpoint as they are on disk, and ``settings``."""
    blob = json.dumps({"model": model, "model_files": _stat_key(model), "ckpt": ckpt, "ckpt_file": _stat_key(ckpt),
                       **settings}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


class PartialEval:
    """The completions a run with ``key`` already wrote to the partial files of ``folder`` (:meth:`get`),
    and this process's file they are appended to (:meth:`add`); :meth:`done` removes the files.
    With ``world_size`` > 1, ``barrier`` (every rank's) is passed once all files are read, before
    any rank starts its own file over."""

    def __init__(self, folder: str, key: str, rank: int = 0, world_size: int = 1, barrier=None):
        self.folder, self.key, self.rank = folder, key, rank
        self.path = os.path.join(folder, partial_name(rank, world_size))
        self.kept: dict[int, dict] = {}
        mine: dict[int, dict] = {}
        names = sorted(n for n in os.listdir(folder) if _is_partial(n)) if os.path.isdir(folder) else []
        for name in names:
            rows = self._read(os.path.join(folder, name))
            self.kept.update(rows)
            if name == os.path.basename(self.path):
                mine = rows
        if barrier is not None:
            barrier()
        os.makedirs(folder, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as fh:  # a clean base: the header, its kept lines, no torn line
            fh.write(json.dumps({"key": key}) + "\n")
            for row in mine.values():
                fh.write(json.dumps(row) + "\n")

    def _read(self, path: str) -> dict[int, dict]:
        rows: dict[int, dict] = {}
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        try:
            if json.loads(lines[0]).get("key") != self.key:
                return {}
        except (ValueError, AttributeError):
            return {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
                rows[int(row["index"])] = row
            except (ValueError, KeyError, TypeError):
                break  # a torn last line (an interrupted write): what follows it is not trusted either
        return rows

    def get(self, index: int, digest: str) -> dict | None:
        row = self.kept.get(index)
        return row if row is not None and row.get("prompt") == digest else None

    def add(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()

    def done(self) -> None:
        """Every partial file of the folder removed (by rank 0: call it once all ranks have finished)."""
        if self.rank != 0 or not os.path.isdir(self.folder):
            return
        for name in os.listdir(self.folder):
            if _is_partial(name):
                os.remove(os.path.join(self.folder, name))
