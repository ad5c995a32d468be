"""Scores from the label distribution: P(tier) at the label slot of a completion.

Search systems rank with a relevance model, so besides the tier they need a score per
(query, product) pair. TaoSR1 deploys through the model's distribution over the four tiers at the
``Label:`` slot (CumPT: cumulative probability thresholds). This module computes it:

1. the *label prefix* of a completion: its text up to and including the colon of the label line
   (:func:`label_prefix`, from :func:`taosr.reasoning.format.parse_reasoning`'s ``label_span``);
2. the four continuations ``" 1"`` .. ``" 4"`` (the model writes ``Label: N``): the completion
   prefix + continuation is tokenized the way training tokenizes a completion (no special
   tokens, after the prompt ids) and each continuation's log-probability is the sum over its
   tokens after the tokens the four share (:func:`split_continuations`; BPE merges across the
   boundary are handled because the shared part is measured on the token ids, not the text);
3. fast path: when each continuation is one token after the shared prefix (true for the tiny
   presets with their 2048-token vocabulary and for SmolLM2, whose digits are single tokens after
   a space token; checked on each completion's own tokens, remembered per tokenizer and prefix
   text; :func:`tier_token_ids` is the per-tokenizer answer for ``Label:``), one row gives all four
   from the next-token logits; otherwise four rows, one per continuation;
   during greedy evaluation :class:`LabelSlotCapture` reads the same logits from the generation
   step that wrote the label digit, so on CPU most completions need no forward pass at all (the
   CUDA-graph decoder takes no logits processors: on CUDA every completion takes the forward pass);
4. the four log-probabilities are renormalised over the tiers (:func:`tier_distribution`), and
   from P come the expected tier ``sum_t t * P(t)`` and the cumulative scores
   ``P(tier >= t)`` for t = 2, 3, 4 (:func:`scores_from_probs`).

Rows are left padded with position ids counted from the first real token, so a row's logits do
not depend on its neighbours' lengths; only the positions that are scored go through the output
head when the model accepts ``logits_to_keep``. Everything runs under ``no_grad`` on the model's
device (float32 log-softmax), in eval mode (the model's mode is restored).
"""
from __future__ import annotations

import inspect
import math
import weakref
from typing import Sequence

import torch

from taosr.labels import TIERS
from taosr.reasoning.format import parse_reasoning

TIER_VALUES = tuple(sorted(TIERS))  # (1, 2, 3, 4): column k of P is tier k + 1
CONTINUATIONS = tuple(f" {t}" for t in TIER_VALUES)
DIRECT_PREFIX = "Label:"


# ----------------------------------------------------------------------------- pure math
def tier_distribution(logp: torch.Tensor) -> torch.Tensor:
    """(N, 4) log-probabilities of the continuations " 1".." 4" -> (N, 4) P(tier) renormalised
    over the four tiers (mass the model puts on other tokens is dropped), in float64: in float32 a
    confident item's expected tier rounds to 3.9999 for items whose P(4) differ, and the tie would
    rank them by file order (NDCG@10 moved by up to 0.001 with the order of a held-out file)."""
    if logp.dim() != 2 or logp.shape[-1] != len(TIER_VALUES):
        raise ValueError(f"expected (N, 4) log-probabilities, got shape {tuple(logp.shape)}")
    return torch.softmax(logp.double(), dim=-1)


def expected_tier(p: torch.Tensor) -> torch.Tensor:
    """(N, 4) P(tier) -> (N,) expected tier sum_t t * P(t), in [1, 4]."""
    return p @ torch.tensor(TIER_VALUES, dtype=p.dtype, device=p.device)


def cumulative_scores(p: torch.Tensor) -> torch.Tensor:
    """(N, 4) P(tier) -> (N, 3) P(tier >= t) for t = 2, 3, 4 (CumPT-style scores: a deployment
    threshold on P(tier >= t) decides whether an item reaches tier t or better)."""
    tail = torch.flip(torch.cumsum(torch.flip(p, [-1]), -1), [-1])  # column k: P(tier >= k + 1)
    return tail[:, 1:]


def scores_from_probs(p: torch.Tensor) -> list[dict]:
    """Per row: ``p_tier`` (tiers 1..4), ``score`` (expected tier), ``p_ge`` ({2,3,4: P(tier >= t)})
    and ``pred`` (argmax tier; the lower tier on an exact tie)."""
    exp, cum, arg = expected_tier(p), cumulative_scores(p), p.argmax(-1)
    return [{"p_tier": [float(x) for x in p[i]], "score": float(exp[i]),
             "p_ge": {t: float(cum[i, t - 2]) for t in (2, 3, 4)}, "pred": TIER_VALUES[int(arg[i])]}
            for i in range(p.shape[0])]


# ----------------------------------------------------------------------------- text and tokens
def label_prefix(text: str) -> str | None:
    """The completion up to and including the colon of its label line (None: no label line)."""
    span = parse_reasoning(text).label_span
    if span is None:
        return None
    start, end = span
    colon = text.index(":", start, end)  # the label line matched ``Heading : content``
    return text[: colon + 1]


def split_continuations(tokenizer, prefix: str) -> tuple[list[int], list[list[int]]]:
    """(ids the four continuations share, the ids of each continuation after them) for the
    completion text ``prefix`` followed by " 1".." 4", tokenized as a completion (no special
    tokens)."""
    enc = [tokenizer(prefix + c, add_special_tokens=False).input_ids for c in CONTINUATIONS]
    n = 0
    while all(len(e) > n for e in enc) and len({e[n] for e in enc}) == 1:
        n += 1
    tails = [e[n:] for e in enc]
    if any(not t for t in tails):
        raise ValueError(f"tokenizer makes a tier continuation of {prefix[-20:]!r} empty")
    return enc[0][:n], tails


_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MEMO_SIZE = 4096


def _continuations(tokenizer, prefix: str) -> tuple[list[int], list[list[int]]]:
    """:func:`split_continuations`, remembered per tokenizer and prefix text (the direct mode's
    prefix is always ``Label:``, so it is tokenized once; a generated reasoning is tokenized
    exactly each time it is new). The memo holds at most :data:`_MEMO_SIZE` prefixes per tokenizer."""
    try:
        memo = _MEMO.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo
        return split_continuations(tokenizer, prefix)
    hit = memo.get(prefix)
    if hit is None:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        hit = memo[prefix] = split_continuations(tokenizer, prefix)
    return hit


_TIER_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tier_token_ids(tokenizer) -> list[int] | None:
    """The ids of " 1".." 4" when each is one token after ``Label:`` (the fast path's tokens), else
    None; checked once per tokenizer and cached."""
    try:
        if tokenizer in _TIER_IDS:
            return _TIER_IDS[tokenizer]
    except TypeError:
        pass
    shared, tails = split_continuations(tokenizer, DIRECT_PREFIX)
    ids = [t[0] for t in tails] if all(len(t) == 1 for t in tails) else None
    try:
        _TIER_IDS[tokenizer] = ids
    except TypeError:
        pass
    return ids


class LabelSlotCapture:
    """A ``model.generate`` logits processor that keeps, at every decoding step, the scores of the
    four tier tokens (it changes nothing). After greedy generation, the step at which a completion's
    label digit was produced holds the next-token logits after prompt + the completion up to
    ``Label:``, which is what the fast path's forward pass computes: :func:`tier_scores` takes P(tier)
    from there (no second pass) when the generated tokens are the prefix's canonical tokens.
    Renormalising over the four tiers makes the full-vocabulary normalisation (and any processor
    that only touches other tokens, such as a minimum length on eos) irrelevant."""

    def __init__(self, token_ids: Sequence[int]):
        self.token_ids = list(token_ids)
        self.steps: list[torch.Tensor] = []

    @classmethod
    def for_tokenizer(cls, tokenizer, model=None) -> "LabelSlotCapture | None":
        """A capture for ``tokenizer``'s tier tokens; None when a tier is not one token, or when
        ``model``'s generation config changes scores before a user processor sees them (``generate``
        runs its own processors first: a repetition penalty would reshape P(tier), so such models
        take the forward pass instead)."""
        ids = tier_token_ids(tokenizer)
        if ids is None or (model is not None and alters_scores(getattr(model, "generation_config", None))):
            return None
        return cls(ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores[:, self.token_ids].float())
        return scores

    def logits(self) -> torch.Tensor | None:
        """(B, steps, 4) tier-token scores on the CPU; None when nothing was captured."""
        return torch.stack(self.steps, 1).cpu() if self.steps else None


# generation-config fields (and their neutral values) that make ``generate`` change the scores
SCORE_CHANGING_FIELDS = (
    ("repetition_penalty", 1.0), ("encoder_repetition_penalty", 1.0), ("no_repeat_ngram_size", 0),
    ("bad_words_ids", None), ("suppress_tokens", None), ("begin_suppress_tokens", None), ("sequence_bias", None),
    ("forced_bos_token_id", None), ("forced_eos_token_id", None), ("min_new_tokens", None), ("min_length", 0))


def alters_scores(cfg) -> bool:
    """Whether a generation config makes ``generate`` change greedy scores (penalties, bans, biases)."""
    if cfg is None:
        return False
    return any((getattr(cfg, name, None) not in (None, default)) for name, default in SCORE_CHANGING_FIELDS)


def prompt_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The prompt ids of each row of a (left or right) padded batch, padding removed."""
    return [row[m.bool()].tolist() for row, m in zip(input_ids.cpu(), attention_mask.cpu())]


# ----------------------------------------------------------------------------- model
def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def _score_rows(model, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """For each (ids, targets) row: the next-token log-probabilities (float32, CPU, one row per
    target) at the last ``len(targets)`` positions of ``ids`` (position j predicts token j + 1), so
    a target list ``t`` is scored on ``ids = base + t[:-1]``."""
    dev = next(model.parameters()).device
    keep_ok = _accepts(model, "logits_to_keep")
    out: list[torch.Tensor | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        T = max(len(rows[i][0]) for i in chunk)
        k = max(len(rows[i][1]) for i in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        att = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, i in enumerate(chunk):
            seq = rows[i][0]
            ids[r, T - len(seq):] = torch.tensor(seq)
            att[r, T - len(seq):] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        kw = {"logits_to_keep": k} if keep_ok else {}
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), position_ids=pos.to(dev),
                       use_cache=False, **kw).logits[:, -k:]
        logp = torch.log_softmax(logits.float(), -1).cpu()
        for r, i in enumerate(chunk):
            targets = rows[i][1]
            sl = logp[r, k - len(targets):] if targets else logp[r, :0]
            out[i] = sl
    return out  # type: ignore[return-value]


@torch.no_grad()
def label_logprobs(model, tokenizer, prompts: Sequence[Sequence[int]], prefixes: Sequence[str],
                   batch_size: int = 32, fast: bool = True) -> torch.Tensor:
    """(N, 4) log-probabilities of " 1".." 4" after prompt ids + completion ``prefix`` (the text up
    to and including ``Label:``). ``fast=False`` scores every completion as four rows (the
    reference the one-row fast path is tested against)."""
    if len(prompts) != len(prefixes):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
    rows: list[tuple[list[int], list[int]]] = []
    plan: list[tuple[int, int | None]] = []  # (first row, None: fast row | tier-major 4 rows)
    tier_ids: list[list[int]] = []
    for p, pre in zip(prompts, prefixes):
        shared, tails = _continuations(tokenizer, pre) if fast else split_continuations(tokenizer, pre)
        base = list(p) + shared
        if fast and all(len(t) == 1 for t in tails):
            plan.append((len(rows), None))
            tier_ids.append([t[0] for t in tails])
            rows.append((base, [0]))  # the next-token slot after the shared prefix
        else:
            plan.append((len(rows), 4))
            tier_ids.append([])
            for t in tails:
                # scored positions: the one before each tail token
                rows.append((base + t[:-1], list(t)))
    if not rows:
        return torch.zeros((0, len(TIER_VALUES)))
    was_training = model.training
    model.eval()
    try:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        logps = _score_rows(model, rows, pad, batch_size)
    finally:
        if was_training:
            model.train()
    out = torch.empty((len(plan), len(TIER_VALUES)))
    for n, (first, four) in enumerate(plan):
        if four is None:
            out[n] = logps[first][0, tier_ids[n]]
        else:
            for k in range(4):
                lp, targets = logps[first + k], rows[first + k][1]
                out[n, k] = lp.gather(1, torch.tensor(targets)[:, None]).sum()
    return out


def tier_scores(model, tokenizer, prompts: Sequence[Sequence[int]], completions: Sequence[str | None],
                batch_size: int = 32, fast: bool = True, generated: torch.Tensor | None = None,
                capture: LabelSlotCapture | None = None) -> list[dict | None]:
    """Per completion: :func:`scores_from_probs`'s dict at its label slot, or None when the
    completion has no label line (or is None). ``completions`` are texts; for label-only scoring
    pass :data:`DIRECT_PREFIX`.

    With ``generated`` (the completions' token ids, one row each) and the ``capture`` that watched
    their greedy generation, a completion whose tokens up to ``Label:`` are that text's own tokens
    and whose tier continuations are single tokens takes P(tier) from the captured step; the others
    get a forward pass."""
    prefixes = [label_prefix(c) if isinstance(c, str) else None for c in completions]
    out: list[dict | None] = [None] * len(completions)
    probs: dict[int, torch.Tensor] = {}
    caught = capture.logits() if capture is not None else None
    if caught is not None and generated is not None and caught.shape[0] == generated.shape[0] == len(completions):
        gen = generated.cpu()
        for i, pre in enumerate(prefixes):
            if pre is None:
                continue
            shared, tails = _continuations(tokenizer, pre)
            n = len(shared)
            if ([t[0] for t in tails] == capture.token_ids and all(len(t) == 1 for t in tails)
                    and n < caught.shape[1] and gen[i, :n].tolist() == shared):
                probs[i] = tier_distribution(caught[i, n][None])[0]
    todo = [i for i, p in enumerate(prefixes) if p is not None and i not in probs]
    if todo:
        logp = label_logprobs(model, tokenizer, [prompts[i] for i in todo], [prefixes[i] for i in todo],
                              batch_size=batch_size, fast=fast)
        probs.update(zip(todo, tier_distribution(logp)))
    if probs:
        keys = sorted(probs)
        for i, sc in zip(keys, scores_from_probs(torch.stack([probs[i] for i in keys]))):
            out[i] = sc
    return out


def record_fields(score: dict | None, grade=None) -> dict:
    """The fields an evaluation record gets: ``p_tier`` (tiers 1..4) and ``score`` (expected tier),
    both None when the completion has no label line (ranked below every scored item), and ``grade``."""
    if score is None:
        return {"p_tier": None, "score": None, "grade": grade}
    return {"p_tier": score["p_tier"], "score": score["score"], "grade": grade}


def is_missing(score) -> bool:
    """True for a score that ranks last: None or NaN."""
    return score is None or (isinstance(score, float) and math.isnan(score))
