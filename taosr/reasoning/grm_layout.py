"""The GRM's text layout: (query, item, candidate reasoning) with a verdict slot after every step.

    Query understanding: running shoes; brand not nike | ...
    Verdict: right
    Item understanding: running shoes; brand adidas | ...
    Verdict: wrong
    ...

Training (:mod:`taosr.data.grm`) and scoring (:mod:`taosr.rl.grm`) both build their input with
:func:`fit_candidate`, so they see the same tokens. Given a token budget (``data.max_length``) the
candidate's steps are kept whole and the prompt's item fields (then its query) are cut by the rule
the policy prompt follows (:func:`taosr.data.budget.fit_example`) to what the steps leave free, so a
long product description does not push the verdict slots past the budget. An export records its
layout (:data:`LAYOUT_FILE`, and the budget it was trained with when told); :func:`check_layout`
refuses an export of another layout.
"""
from __future__ import annotations

import functools
import json
import os

from taosr.data.budget import fit_example
from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.prompts import encode_prompt, encode_prompts, item_block
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


def _step_lines(steps: dict[str, str]) -> list[str]:
    """The candidate's step lines, in order (each slot prefix follows its line)."""
    return [("\n" if n else "") + render_step(k, steps.get(k, MISSING_STEP)) + "\n" for n, k in enumerate(STEP_KEYS)]


def _steps_ids(tok, steps: dict[str, str], memo: dict | None = None) -> tuple[list[int], list[int]]:
    """The candidate part of the input (each step, then its slot prefix) and each slot's last
    position in it; tokenised apart from the prompt, so its length does not depend on the prompt.
    ``memo``: step lines already tokenised (a rollout group's candidates share most of theirs)."""
    prefix, _, _ = verdict_slot(tok)
    ids, positions = [], []
    for line in _step_lines(steps):
        ids += _memo(memo, ("line", line), lambda: tok(line, add_special_tokens=False).input_ids) + list(prefix)
        positions.append(len(ids) - 1)
    return ids, positions


def candidates_memo(tok, examples, steps_list) -> dict:
    """A memo for :func:`fit_candidate` over these candidates, filled in two batched tokenizer calls:
    every distinct step line, and every distinct prompt (the fitted prompts of those cut to the
    budget are added as :func:`fit_candidate` meets them). The ids are the ones it makes alone."""
    lines = list(dict.fromkeys(line for steps in steps_list for line in _step_lines(steps)))
    texts = list(dict.fromkeys(grm_prompt_text(ex) for ex in examples))
    memo: dict = {}
    if lines:
        memo.update(zip((("line", x) for x in lines), tok(lines, add_special_tokens=False).input_ids))
    memo.update(zip((("prompt", x) for x in texts), encode_prompts(tok, texts)))
    return memo


def _memo(memo: dict | None, key, make):
    """``make()``, once per ``key`` when a memo is given (the ids are never changed in place)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def fit_candidate(tok, ex: Example, steps: dict[str, str], max_length: int | None = None,
                  memo: dict | None = None) -> tuple[list[int], list[int], bool]:
    """(ids, slot positions, whether the prompt was cut) of the GRM input for one candidate.

    With ``max_length``, the steps are kept whole and the prompt (header, query, item) is fitted to
    ``max_length - 1 - len(steps)`` tokens (the 1: the decision token after the last slot, which
    training puts at the input's end) by :func:`taosr.data.budget.fit_example`: the description
    first, then the other item fields, then the query. A candidate whose steps alone leave too
    little room keeps the shortest prompt, and its last slots still lie beyond the budget: the
    caller decides (training counts it, scoring gives those steps no score).

    ``memo``: a dict kept across the candidates of one call (the scorer's rollout batch), so that
    an example's prompt (and its prompt fitted to a budget) and a step line shared by several
    candidates are tokenised once; the ids are the same with or without it."""
    cand, rel = _steps_ids(tok, steps, memo)
    text = grm_prompt_text(ex)
    prompt = _memo(memo, ("prompt", text), lambda: encode_prompt(tok, text))
    cut = False
    if max_length is not None:
        budget = max_length - 1 - len(cand)
        if len(prompt) > budget:
            def n_tokens(e: Example) -> int:
                return len(encode_prompt(tok, grm_prompt_text(e)))

            def fitted() -> tuple[Example, list[int]]:
                short, _ = fit_example(ex, n_tokens, budget)
                return ex, encode_prompt(tok, grm_prompt_text(short))

            # keyed by the example itself, not its text: fit_example cuts each field on its own, and
            # two items can render the same text from different fields (an attribute value holding
            # "; size=..."). The entry holds the example, so its id is not reused while the memo lives.
            prompt, cut = _memo(memo, ("fitted", id(ex), budget), fitted)[1], True
    return prompt + cand, [len(prompt) + p for p in rel], cut


def encode_candidate(tok, ex: Example, steps: dict[str, str], max_length: int | None = None,
                     memo: dict | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the GRM input for one candidate (steps missing from it read ``(missing)``), and
    for each step the position whose next-token distribution holds the verdict, the prompt fitted
    to ``max_length`` (:func:`fit_candidate`; ``memo`` as there). Training and scoring both build
    their input here, piece by piece, so they see the same tokens."""
    ids, positions, _ = fit_candidate(tok, ex, steps, max_length, memo)
    return ids, positions


def slot_fits(position: int, max_length: int | None) -> bool:
    """Whether a verdict slot's decision token (``position + 1``) lies inside ``max_length`` tokens."""
    return max_length is None or position + 1 < max_length


def write_layout(export_dir: str, max_length: int | None = None) -> None:
    """Write the layout file; with ``max_length`` (the training run's ``data.max_length``) the
    scorer fits its inputs to the same budget (:func:`recorded_max_length`)."""
    meta = {"layout": LAYOUT, **({"max_length": int(max_length)} if max_length else {})}
    with open(os.path.join(export_dir, LAYOUT_FILE), "w") as fh:
        json.dump(meta, fh)


def recorded_max_length(model_path: str) -> int | None:
    """The token budget a GRM export was trained with, when its layout file records one."""
    path = os.path.join(model_path, LAYOUT_FILE)
    if not os.path.isfile(path):
        return None
    n = json.load(open(path)).get("max_length")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


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
