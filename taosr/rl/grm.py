"""Generative stepwise reward model (GRM): a causal LM judge.

It reads (query, item, candidate reasoning) and writes one verdict line per step::

    Query understanding: right
    Item understanding: wrong
    ...

Its soft score for step k is P(right) / (P(right) + P(wrong)) at the verdict token of line k,
read in one teacher-forced forward pass (the earlier verdict lines are filled with "right", so
every step is judged on its own). Training is plain SFT on the ``grm`` view of the DataModule
(:mod:`taosr.data.grm`).
"""
from __future__ import annotations

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
        r = self.tok(" " + RIGHT, add_special_tokens=False).input_ids
        w = self.tok(" " + WRONG, add_special_tokens=False).input_ids
        if r[0] == w[0]:
            raise ValueError("GRM tokenizer: 'right' and 'wrong' share their first token")
        self.right_id, self.wrong_id = r[0], w[0]

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
        """Token ids of prompt + all-right verdicts, and the positions whose next token is a verdict."""
        tok = self.tok
        ids = tok(grm_prompt_text(ex, steps), add_special_tokens=False).input_ids
        if tok.bos_token_id is not None and not getattr(tok, "chat_template", None):
            ids = [tok.bos_token_id] + ids
        positions = []
        for i, k in enumerate(STEP_KEYS):
            head = ("\n" if i else "") + STEP_HEADINGS[k] + ":"
            ids += tok(head, add_special_tokens=False).input_ids
            positions.append(len(ids) - 1)
            ids += [self.right_id]
        return ids, positions

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
            T = max(len(i) for i, _ in enc)
            ids = torch.full((len(enc), T), self.tok.pad_token_id, dtype=torch.long)
            att = torch.zeros_like(ids)
            for r, (i, _) in enumerate(enc):
                ids[r, : len(i)], att[r, : len(i)] = torch.tensor(i), 1
            logits = self.model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float()
            for r, (_, pos) in enumerate(enc):
                pair = logits[r, pos][:, [self.right_id, self.wrong_id]]
                out[s + r] = torch.softmax(pair, -1)[:, 0].cpu()
        for n, st in enumerate(steps_list):
            for k, key in enumerate(STEP_KEYS):
                if key not in st:
                    out[n, k] = math.nan
        return out
