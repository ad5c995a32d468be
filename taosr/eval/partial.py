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
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from taosr.fingerprints import file_stats

PARTIAL = "test-partial.jsonl"


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
    """The completions a run with ``key`` already wrote to ``path`` (:meth:`get`), and the file they
    are appended to (:meth:`add`); :meth:`done` removes it."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self.kept: dict[int, dict] = {}
        if os.path.isfile(path):
            self.kept = self._read()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:  # a clean base: the header, the kept lines, no torn line
            fh.write(json.dumps({"key": key}) + "\n")
            for row in self.kept.values():
                fh.write(json.dumps(row) + "\n")

    def _read(self) -> dict[int, dict]:
        rows: dict[int, dict] = {}
        with open(self.path, encoding="utf-8") as fh:
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
        if os.path.exists(self.path):
            os.remove(self.path)
