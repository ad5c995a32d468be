"""Generative stepwise reward model (GRM): a causal LM judge.

It reads (query, item, candidate reasoning) and writes one verdict line per step::

    Query understanding: right
    Item understanding: wrong
    ...

Its soft score for step k is P(right) / (P(right) + P(wrong)) at the *decision token* of line k
— the first token where the verdict text and the same text with step k flipped tokenise
differently (a tokenizer may split " right" into several pieces) — read in one teacher-forced
pass over exactly the tokens training saw (earlier verdict lines filled with "right", so every
step is judged on its own). Training is SFT on the ``grm`` view of the DataModule
(:mod:`taosr.data.grm`) with the loss on the decision tokens.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from taosr.data.schema import Example
from taosr.labels import STEP_HEADINGS, STEP_KEYS
from taosr.prompts import item_block
from taosr.reasoning.format import ParsedReasoning, render_step

RIGHT, WRONG = "right", "wrong"
GRM_HEADER = "Judge each reasoning step as right or wrong."


def grm_prompt_text(ex: Example, parsed_steps: dict[str, str]) -> str:
    """The GRM's input: the policy's view of the pair plus the candidate's steps."""
    lines = [GRM_HEADER, f"Query: {ex.query}", item_block(ex), "Candidate:"]
    lines += [render_step(k, parsed_steps.get(k, "(missing)")) for k in STEP_KEYS]
    lines.append("Verdicts:")
    return "\n".join(lines) + "\n"


def verdict_text(verdicts: dict[str, bool]) -> str:
    return "\n".join(f"{STEP_HEADINGS[k]}: {RIGHT if verdicts[k] else WRONG}" for k in STEP_KEYS)


@functools.lru_cache(maxsize=256)
def verdict_layout(tok, pattern: tuple[bool, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    """For verdicts ``pattern`` (one bool per step): the verdict text's token ids, the index of each
    step's decision token, and each step's (right token, wrong token) at that index."""
    def ids_of(p):
        return tok(verdict_text(dict(zip(STEP_KEYS, p))), add_special_tokens=False).input_ids

    ids = ids_of(pattern)
    decisions, pairs = [], []
    for i in range(len(STEP_KEYS)):
        flipped = list(pattern)
        flipped[i] = not flipped[i]
        other = ids_of(tuple(flipped))
        j = next((n for n, (a, b) in enumerate(zip(ids, other)) if a != b), None)
        if j is None:
            raise ValueError(f"GRM tokenizer: the verdicts {RIGHT!r} and {WRONG!r} tokenise identically")
        decisions.append(j)
        pairs.append((ids[j], other[j]) if pattern[i] else (other[j], ids[j]))
    return tuple(ids), tuple(decisions), tuple(pairs)


def parse_verdicts(text: str) -> dict[str, bool | None]:
    """Hard verdicts from generated GRM text (None where a line is missing or unreadable)."""
    out: dict[str, bool | None] = {k: None for k in STEP_KEYS}
    for line in text.split("\n"):
        for k in STEP_KEYS:
            head = STEP_HEADINGS[k] + ":"
            if line.strip().startswith(head):
                word = line.split(":", 1)[1].strip().lower()
                out[k] = True if word.startswith(RIGHT) else False if word.startswith(WRONG) else None
    return out


class GRMScorer:
    """Batched soft step scores from a GRM export (any causal LM folder taosr can load)."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.verdict_ids, self.decisions, self.pairs = verdict_layout(tokenizer, (True,) * len(STEP_KEYS))
        self.pair_ids = torch.tensor(self.pairs)  # (K, 2): each step's (right, wrong) decision token

    @classmethod
    def load(cls, model_path: str, batch_size: int = 32, corpus=None) -> "GRMScorer":
        """Load a frozen GRM from an export folder (or any path/preset the factory accepts)."""
        from taosr.models.factory import ModelSpec, load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=model_path), corpus=corpus)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, tok, batch_size)

    def _encode(self, ex: Example, steps: dict[str, str]) -> tuple[list[int], list[int]]:
        """Token ids of prompt + all-right verdicts (tokenised as in training), and the positions whose
        next token is a step's decision token."""
        tok = self.tok
        ids = tok(grm_prompt_text(ex, steps), add_special_tokens=False).input_ids
        if tok.bos_token_id is not None and not getattr(tok, "chat_template", None):
            ids = [tok.bos_token_id] + ids
        positions = [len(ids) + j - 1 for j in self.decisions]
        return ids + list(self.verdict_ids), positions

    @torch.no_grad()
    def score(self, examples: Sequence[Example], parsed: Sequence[ParsedReasoning]) -> torch.Tensor:
        """(N, K) P(right) per step; NaN for steps missing from the completion."""
        return self.score_steps(examples, [p.steps for p in parsed])

    @torch.no_grad()
    def score_steps(self, examples: Sequence[Example], steps_list: Sequence[dict[str, str]]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self._score(examples, steps_list)
        finally:
            if was_training:
                self.model.train()

    def _score(self, examples, steps_list) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        out = torch.full((len(examples), len(STEP_KEYS)), float("nan"))
        for s in range(0, len(examples), self.batch_size):
            enc = [self._encode(ex, st) for ex, st in zip(examples[s:s + self.batch_size], steps_list[s:s + self.batch_size])]
            # Left padding: every row ends with the same verdict tokens, so only the last `keep`
            # positions need logits (not batch x length x vocab).
            T, keep = max(len(i) for i, _ in enc), len(self.verdict_ids) + 1
            ids = torch.full((len(enc), T), self.tok.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for r, (i, _) in enumerate(enc):
                ids[r, T - len(i):], att[r, T - len(i):] = torch.tensor(i), 1
            pos_ids = (att.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos_ids.to(dev),
                                logits_to_keep=keep).logits.float()
            pair_ids = self.pair_ids.to(logits.device)
            for r, (i, pos) in enumerate(enc):
                at = logits[r, [p - (len(i) - keep) for p in pos]]  # (K, V)
                out[s + r] = torch.softmax(at.gather(1, pair_ids), -1)[:, 0].cpu()
        for n, st in enumerate(steps_list):
            for k, key in enumerate(STEP_KEYS):
                if key not in st:
                    out[n, k] = math.nan
        return out
