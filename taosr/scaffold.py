"""Scaffolded sampling of the five-step format (``taosr reason --scaffold``).

A generic or small teacher often never starts the format, drifts into prose or repeats a phrase
until its budget runs out (SmolLM2-135M-Instruct with a one-shot demonstration: 16 of 16 pairs,
every sample a format error). The scaffold writes the format itself and leaves the teacher the
contents, in one ``model.generate`` call with a logits processor (:class:`ScaffoldProcessor`):

1. each step's heading (``Query understanding:``) is forced token by token, then the teacher
   writes that step's line: any tokens but eos and a newline inside a token, until a token that
   ends the line with a newline (allowed once the line has some text), at most ``step_tokens``
   tokens; a line still open after that ends the sample (kept as written: it fails to parse and is
   counted as a format error);
2. after the fifth line, ``Label:`` is forced and the next token is one of the four tiers, drawn
   from the teacher's own distribution over them (temperature and top-p apply as to any token),
   then eos. Every finished sample parses, with a valid tier.

The result is an ordinary completion, chosen from as any other sample (parse, gold tier). It
needs the four tiers to be one token each after ``Label:`` (the tiny presets, SmolLM2 and most
byte-level BPE vocabularies); another tokenizer is refused in one line.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch

from taosr.data.collate import pad_left
from taosr.errors import ConfigError
from taosr.eval.generation import GenerationSpec, decode_completions, hf_generate_ids
from taosr.eval.scores import DIRECT_PREFIX, split_continuations
from taosr.labels import STEP_HEADINGS, STEP_KEYS

_FORCE, _LINE, _TIER, _DONE = range(4)


_TEXTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _token_texts(tokenizer) -> tuple[list[str], list[int]]:
    """Each token's text and the special ids, once per tokenizer (a decode per vocabulary entry)."""
    try:
        hit = _TEXTS.get(tokenizer)
    except TypeError:
        hit = None
    if hit is None or len(hit[0]) != len(tokenizer):
        hit = ([tokenizer.decode([i]) for i in range(len(tokenizer))],
               [i for i in getattr(tokenizer, "all_special_ids", []) if i is not None])
        try:
            _TEXTS[tokenizer] = hit
        except TypeError:
            pass
    return hit


class ScaffoldProcessor:
    """Per row, a small state machine over the tokens generated so far (see the module docstring);
    ``prompt_width``: the (padded) prompt length, after which generated tokens start."""

    def __init__(self, tokenizer, prompt_width: int, step_tokens: int):
        self.width, self.step_tokens, self.eos = prompt_width, step_tokens, tokenizer.eos_token_id
        self.headings = [tokenizer(f"{STEP_HEADINGS[k]}:", add_special_tokens=False).input_ids for k in STEP_KEYS]
        shared, tails = split_continuations(tokenizer, DIRECT_PREFIX)
        if not all(len(t) == 1 for t in tails):
            raise ConfigError("--scaffold: this tokenizer does not write each tier as one token after 'Label:'; "
                              "sample without --scaffold")
        self.label, self.tiers = list(shared), [t[0] for t in tails]
        self.texts, self.special = _token_texts(tokenizer)
        self.masks: dict | None = None  # built at the first call, as wide as the model's scores
        self.rows: list[dict] | None = None

    def _build_masks(self, vocab: int, device) -> dict:
        """Over the model's vocabulary (ids past the tokenizer's are never allowed in a line): the
        tokens that end a line (a newline at the end, none before) and those a line may take with and
        without text written yet (no inner newline, no eos; a line-ending token only after text)."""
        ends = torch.zeros(vocab, dtype=torch.bool)
        inner = torch.ones(vocab, dtype=torch.bool)
        for i, t in enumerate(self.texts[:vocab]):
            body = t.rstrip("\n")
            ends[i] = t.endswith("\n") and "\n" not in body
            inner[i] = "\n" in body
        with_text = ~inner
        with_text[[i for i in {self.eos, *self.special} if 0 <= i < vocab]] = False  # no eos, pad or chat markers
        return {"ends": ends, "with_text": with_text.to(device), "no_text": (with_text & ~ends).to(device),
                "has_text": torch.tensor([bool(t.rstrip("\n").strip()) for t in self.texts[:vocab]]
                                         + [False] * max(0, vocab - len(self.texts)))}

    def max_new_tokens(self) -> int:
        return sum(len(h) for h in self.headings) + 5 * self.step_tokens + len(self.label) + 2

    def _observe(self, row: dict, token: int) -> None:
        phase = row["phase"]
        if phase == _FORCE:
            row["queue"].pop(0)
            if not row["queue"]:
                row.update(phase=_TIER if row["step"] == len(self.headings) else _LINE, count=0, text=False)
        elif phase == _LINE:
            row["count"] += 1
            if self.masks["ends"][token]:
                row["step"] += 1
                last = row["step"] == len(self.headings)
                row.update(phase=_FORCE, queue=list(self.label if last else self.headings[row["step"]]))
            else:
                row["text"] = row["text"] or bool(self.masks["has_text"][token])
                if row["count"] >= self.step_tokens:
                    row["phase"] = _DONE  # the line did not end within its budget
        else:
            row["phase"] = _DONE

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] - self.width
        if self.rows is None or generated == 0:
            self.rows = [{"phase": _FORCE, "queue": list(self.headings[0]), "step": 0} for _ in range(input_ids.shape[0])]
        elif generated > 0:
            for row, token in zip(self.rows, input_ids[:, -1].tolist()):
                self._observe(row, token)
        if self.masks is None:
            self.masks = self._build_masks(scores.shape[-1], scores.device)
        allow = torch.zeros_like(scores, dtype=torch.bool)
        for r, row in enumerate(self.rows):
            phase = row["phase"]
            if phase == _FORCE:
                allow[r, row["queue"][0]] = True
            elif phase == _LINE:
                allow[r] = self.masks["with_text" if row["text"] else "no_text"]
            elif phase == _TIER:
                allow[r, self.tiers] = True
            else:
                allow[r, self.eos] = True
        return scores.masked_fill(~allow, float("-inf"))


def scaffold_samples(model, tokenizer, prompts: Sequence[Sequence[int]], spec: GenerationSpec,
                     step_tokens: int = 48) -> list[str]:
    """``spec.num_return_sequences`` scaffolded completions per prompt (prompt-major), sampled with
    ``spec``'s temperature and top-p (greedy without sampling); ``step_tokens``: one line's budget."""
    batch = pad_left([list(p) for p in prompts], tokenizer.pad_token_id)
    proc = ScaffoldProcessor(tokenizer, batch["input_ids"].shape[1], step_tokens)
    dev = next(model.parameters()).device
    from dataclasses import replace

    run = replace(spec, max_new_tokens=proc.max_new_tokens())
    out = hf_generate_ids(model, tokenizer, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), run,
                          logits_processor=[proc])
    return decode_completions(tokenizer, out)
