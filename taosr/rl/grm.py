"""Generative stepwise reward model (GRM): a causal LM judge.

It reads (query, item, candidate reasoning) with a verdict slot after every step::

    Query understanding: running shoes; brand not nike | ...
    Verdict: right
    Item understanding: running shoes; brand adidas | ...
    Verdict: wrong
    ...

Its soft score for step k is P(right) / (P(right) + P(wrong)) at slot k's *decision token* — the
first token where ``Verdict: right`` and ``Verdict: wrong`` tokenise differently (a tokenizer may
split " right" into several pieces). The decision token itself is never part of the input: after
slot k's prefix (``Verdict:``) the input goes straight on to step k+1, and training puts the
verdict in the *targets* at that position. So the model is causal in the steps, like a
process reward model that reads a tag after every step: the verdict on step k reads the query, the
item and steps 1..k only, never a later step or another verdict. Two rollouts of one prompt that
agree up to step k get the same score for step k, so scores centred over a group are not noise on
shared text. One forward pass scores every step of a batch of candidates.

Training is SFT on the ``grm`` view of the DataModule (:mod:`taosr.data.grm`) with the loss on the
decision tokens only.

Inputs are fitted to a token budget exactly as in training (:func:`~taosr.reasoning.grm_layout.fit_candidate`:
the steps whole, the item fields cut to what they leave free): ``max_length`` given to the scorer, else
the one the export records (``taosr_grm.json``), else ``data.max_length``'s default (at most the
model's ``max_position_embeddings``: never past the positions it has). A
candidate whose verdict slots still lie beyond the budget (its steps alone nearly fill it) is scored
on the fitted prefix: the steps whose slot fits get a score, the others NaN (no GRM verdict, as for
an uncovered step; the examiner gives them ``uncovered_value``), counted in :attr:`GRMScorer.cut`
and said once per scorer. Nothing is refused: one overlong rollout does not stop an SRPO run.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from taosr.labels import STEP_KEYS
from taosr.models.kvcache import cache_kwargs, output_cache
from taosr.reasoning.format import ParsedReasoning
from taosr.reasoning.grm_layout import (LAYOUT, LAYOUT_FILE, MISSING_STEP, RIGHT, WRONG, candidates_memo,  # noqa: F401
                                       check_layout, encode_candidate, recorded_max_length, slot_fits, verdict_slot,
                                       write_layout)
from taosr.schema import Example

def head_logits(config, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the LM head's rows ``weight`` (``bias``) at ``hidden``, with what a model's own
    forward applies to its logits: Granite's ``logits_scaling`` (divides), Cohere's ``logit_scale``
    (multiplies), Gemma 2's ``final_logit_softcapping`` (tanh). Without them a Granite GRM scored
    P(right) 0.879 where its own logits said 0.562 (training reads the real logits)."""
    logits = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias).float()
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    return logits


def default_max_length(model) -> int:
    """``data.max_length``'s default, at most the model's ``max_position_embeddings``: the budget of
    a GRM export that records none (``taosr_grm.json``)."""
    import inspect

    from taosr.data.datamodule import RelevanceDataModule

    n = inspect.signature(RelevanceDataModule.__init__).parameters["max_length"].default
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(n, limit) if isinstance(limit, int) and limit > 0 else n


def _prefix(enc: tuple[list[int], list[int]], fits: list[bool]) -> tuple[list[int], list[int]]:
    """An input cut after its last slot that fits (slots come in order, so those that fit are the
    first ones); the slots beyond it point at that last one (their scores are dropped). No slot
    fits: an empty input."""
    ids, positions = enc
    last = max((p for p, ok in zip(positions, fits) if ok), default=None)
    if last is None:
        return [], [0] * len(positions)
    return ids[:last + 1], [p if ok else last for p, ok in zip(positions, fits)]


class GRMScorer:
    """Batched soft step scores from a GRM export (any causal LM folder taosr can load).

    ``max_length``: the token budget inputs are fitted to (the GRM's training ``data.max_length``);
    None: the DataModule's default ``data.max_length`` (what every shipped config trains with),
    at most the model's ``max_position_embeddings`` (no fitting without a model)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        if max_length is None and model is not None:
            max_length = default_max_length(model)
        self.max_length = max_length
        self.cut = 0  # candidates scored on a prefix: some verdict slot beyond max_length
        _, right, wrong = verdict_slot(tokenizer)
        self.pair_ids = torch.tensor([right, wrong])

    @classmethod
    def load(cls, model_path: str, batch_size: int = 32, corpus=None, max_length: int | None = None) -> "GRMScorer":
        """Load a frozen GRM from an export folder written by GRM training (``max_length``: by default
        the budget the export records)."""
        from taosr.models.factory import ModelSpec, load_model_and_tokenizer

        check_layout(model_path)
        model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=model_path), corpus=corpus)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, tok, batch_size, max_length or recorded_max_length(model_path))

    def _encode(self, ex: Example, steps: dict[str, str], memo: dict | None = None) -> tuple[list[int], list[int]]:
        return encode_candidate(self.tok, ex, steps, self.max_length, memo)

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
        # The decoder's last hidden states at the K slot positions times the LM head's two rows (right,
        # wrong): batch x K x 2 logits, not batch x length x vocab, then what the model's own forward
        # does to its logits (head_logits).
        dev = next(self.model.parameters()).device
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        pair = self.pair_ids.to(head.weight.device)
        w = head.weight[pair]
        b = head.bias[pair] if getattr(head, "bias", None) is not None else None
        # A group's candidates often repeat one another: each distinct input is scored once. Candidates
        # of one example share its prompt: their batch runs it once and the rows continue from its
        # cache. Examples go longest candidate first, so that a batch's rows have similar lengths. The
        # memo holds each distinct prompt and step line, tokenised in one batched call each.
        memo = candidates_memo(self.tok, examples, steps_list)
        enc = [self._encode(ex, st, memo) for ex, st in zip(examples, steps_list)]
        # Slots whose decision token lies beyond max_length were never trained on: each such input is
        # cut after its last slot that fits and those steps get NaN; an input with none is not run.
        fits = [[slot_fits(p, self.max_length) for p in e[1]] for e in enc]
        n_cut = sum(not all(f) for f in fits)
        if n_cut:
            if not self.cut:
                print(f"taosr: GRM scoring: a candidate's verdict slots lie beyond max_length={self.max_length} "
                      "tokens even with its item fields cut: its steps past it get no GRM score (NaN; counted "
                      "in GRMScorer.cut)")
            self.cut += n_cut
            enc = [e if all(f) else _prefix(e, f) for e, f in zip(enc, fits)]
        index: dict[tuple, int] = {}
        uniq, owner, which = [], [], []  # distinct inputs, the example each belongs to; each candidate's input
        for n, e in enumerate(enc):
            key = (tuple(e[0]), tuple(e[1]))
            if key not in index:
                index[key] = len(uniq)
                uniq.append(e)
                owner.append(id(examples[n]))
            which.append(index[key])
        members: dict[int, list[int]] = {}
        for u, o in enumerate(owner):
            members.setdefault(o, []).append(u)
        order = [u for m in sorted(members.values(), key=lambda m: -max(len(uniq[u][0]) for u in m)) for u in m
                 if uniq[u][0]]  # (an input with no slot inside max_length is not run: all NaN)
        scores = torch.full((len(uniq), len(STEP_KEYS)), float("nan"))
        for s in range(0, len(order), self.batch_size):
            part = order[s:s + self.batch_size]
            h = self._slot_states(decoder, [uniq[u] for u in part], [owner[u] for u in part], dev)  # (B, K, H)
            logits = head_logits(self.model.config, h, w, b)  # (B, K, 2)
            scores[torch.tensor(part)] = torch.softmax(logits, -1)[..., 0].cpu()
        out = scores[torch.tensor(which, dtype=torch.long)] if enc else torch.full((0, len(STEP_KEYS)), float("nan"))
        for n, st in enumerate(steps_list):
            for k, key in enumerate(STEP_KEYS):
                if key not in st or not fits[n][k]:
                    out[n, k] = math.nan
        return out

    def _slot_states(self, decoder, batch: list[tuple[list[int], list[int]]], owners: list[int], dev) -> torch.Tensor:
        """The decoder's last hidden states at each row's K verdict slots: (B, K, H). Rows with the
        same owner (example) share their common prefix up to their first slot: it runs once, left
        padded, and every row continues from its cache with the rest of its tokens, right padded."""
        groups: dict[int, list[int]] = {}
        for r, o in enumerate(owners):
            groups.setdefault(o, []).append(r)
        shared, row_group = [], [0] * len(batch)
        for g, rows in enumerate(groups.values()):
            first = batch[rows[0]][0]
            n = min(batch[r][1][0] for r in rows)  # never past a row's first slot: its state is read below
            for r in rows:
                ids = batch[r][0]
                n = next((j for j in range(n) if ids[j] != first[j]), n)
                row_group[r] = g
            shared.append(first[:n])
        P = max(len(x) for x in shared)
        p_ids = torch.full((len(shared), P), self.tok.pad_token_id, dtype=torch.long)
        p_att = torch.zeros_like(p_ids)
        for g, x in enumerate(shared):  # left padding
            p_ids[g, P - len(x):], p_att[g, P - len(x):] = torch.tensor(x, dtype=torch.long), 1
        p_pos = (p_att.cumsum(-1) - 1).clamp(min=0)
        out = decoder(input_ids=p_ids.to(dev), attention_mask=p_att.to(dev), position_ids=p_pos.to(dev), use_cache=True)
        cache = output_cache(out)
        inv = torch.tensor(row_group, dtype=torch.long)
        cache.batch_select_indices(inv.to(dev))
        rest = [batch[r][0][len(shared[row_group[r]]):] for r in range(len(batch))]
        T = max(len(x) for x in rest)
        ids = torch.full((len(batch), T), self.tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        at = torch.zeros((len(batch), len(STEP_KEYS)), dtype=torch.long)
        for r, x in enumerate(rest):  # right padding after the shared prefix
            ids[r, :len(x)], att[r, :len(x)] = torch.tensor(x, dtype=torch.long), 1
            at[r] = torch.tensor(batch[r][1]) - len(shared[row_group[r]])
        lens = torch.tensor([len(shared[g]) for g in row_group])
        pos = lens[:, None] + torch.arange(T)[None, :]
        hidden = decoder(input_ids=ids.to(dev), attention_mask=torch.cat([p_att[inv], att], 1).to(dev),
                         position_ids=pos.to(dev), use_cache=True, **cache_kwargs(decoder, cache)).last_hidden_state
        return hidden.gather(1, at.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
