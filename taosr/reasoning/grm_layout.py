"""The GRM's text layout: (query, item, candidate reasoning) with a verdict slot after every step.

    Query understanding: running shoes; brand not nike | ...
    Verdict: right
    Item understanding: running shoes; brand adidas | ...
    Verdict: wrong
    ...

Training (:mod:`taosr.data.grm`) and scoring (:mod:`taosr.rl.grm`) both build their input with
:func:`encode_candidate`, so they see the same tokens. An export records its layout
(:data:`LAYOUT_FILE`); :func:`check_layout` refuses an export of another layout.
"""
from __future__ import annotations

import functools
import json
import os

from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.prompts import encode_prompt, item_block
from taosr.reasoning.format import render_step
from taosr.schema import Example

RIGHT, WRONG = "right", "wrong"
GRM_HEADER = "Judge each reasoning step as right or wrong."
VERDICT_HEADING = "Verdict"
MISSING_STEP = "(missing)"
# Written into a GRM export by GRM training; GRMScorer.load refuses an export of another layout.
LAYOUT = "interleaved-v1"
LAYOUT_FILE = "taosr_grm.json"


def grm_prompt_text(ex: Example) -> str:
    """The GRM's input before the candidate's steps: the policy's view of the pair."""
    return "\n".join([GRM_HEADER, f"Query: {ex.query}", item_block(ex), "Candidate:"]) + "\n"


@functools.lru_cache(maxsize=16)
def verdict_slot(tok) -> tuple[tuple[int, ...], int, int]:
    """(slot prefix ids, right token, wrong token): the tokens of ``Verdict: right`` up to the first
    one that differs from ``Verdict: wrong``, and the two differing tokens."""
    r = tok(f"{VERDICT_HEADING}: {RIGHT}", add_special_tokens=False).input_ids
    w = tok(f"{VERDICT_HEADING}: {WRONG}", add_special_tokens=False).input_ids
    j = next((n for n, (a, b) in enumerate(zip(r, w)) if a != b), None)
    if j is None:
        raise ValueError(f"GRM tokenizer: the verdicts {RIGHT!r} and {WRONG!r} tokenise identically")
    return tuple(r[:j]), r[j], w[j]


def encode_candidate(tok, ex: Example, steps: dict[str, str]) -> tuple[list[int], list[int]]:
    """Token ids of the GRM input for one candidate (steps missing from it read ``(missing)``), and
    for each step the position whose next-token distribution holds the verdict. Training and
    scoring both build their input here, piece by piece, so they see the same tokens."""
    ids = encode_prompt(tok, grm_prompt_text(ex))
    prefix, _, _ = verdict_slot(tok)
    positions = []
    for n, k in enumerate(STEP_KEYS):
        line = ("\n" if n else "") + render_step(k, steps.get(k, MISSING_STEP)) + "\n"
        ids += tok(line, add_special_tokens=False).input_ids + list(prefix)
        positions.append(len(ids) - 1)
    return ids, positions


def write_layout(export_dir: str) -> None:
    with open(os.path.join(export_dir, LAYOUT_FILE), "w") as fh:
        json.dump({"layout": LAYOUT}, fh)


def check_layout(model_path: str) -> None:
    """A GRM export written by another GRM layout scores garbage here: refuse it in one line."""
    path = os.path.join(model_path, LAYOUT_FILE)
    if os.path.isdir(model_path) and os.path.exists(path):
        found = json.load(open(path)).get("layout")
        if found != LAYOUT:
            raise ConfigError(f"{path}: GRM layout {found!r}, this taosr reads {LAYOUT!r}; "
                             "retrain the GRM with `taosr fit --config configs/grm.yaml`")
    elif os.path.isdir(model_path) and os.path.exists(os.path.join(model_path, "config.json")):
        raise ConfigError(f"{model_path}: not a taosr GRM export (no {LAYOUT_FILE}); "
                         "train one with `taosr fit --config configs/grm.yaml`")
