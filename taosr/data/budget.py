"""Fitting a prompt (and its target) into the model's token budget, by one documented rule.

Rule (``data.max_length`` tokens for prompt + target; an evaluation or rollout prompt alone gets
the whole budget):

1. the target (gold reasoning, a DPO sample) is kept whole when the prompt can shrink enough;
2. the item's description (free text, often thousands of characters) is cut first, to the largest
   ``D >= MIN_FIELD_CHARS`` characters that fits; the other fields stay whole;
3. if the description at ``MIN_FIELD_CHARS`` is not enough (or there is none), the prompt shrinks by
   cutting its other item fields (title, brand, category, attribute values) to at most ``C``
   characters each (plus ``...``), with ``C`` the largest that fits;
4. if the item fields at ``MIN_FIELD_CHARS`` are not enough, the query is cut the same way;
5. whatever still does not fit (a target longer than the budget) is cut from the end of the target.

A row without a description goes straight from 1 to 3, as before descriptions existed.

Every row cut is counted (``RelevanceDataModule.truncated``) and reported once per split, so a
long row is never trained on, or evaluated, silently cut.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from taosr.schema import Example

MIN_FIELD_CHARS = 16
ELLIPSIS = "..."


def _cut(text: str | None, cap: int) -> str | None:
    if text is None or len(text) <= cap:
        return text
    return text[:cap].rstrip() + ELLIPSIS


def shorten(ex: Example, item_cap: int | None, query_cap: int | None = None,
            description_cap: int | None = None) -> Example:
    """A copy of ``ex`` whose item fields (and, with ``query_cap``, query) are cut to that many
    characters; the description is cut to ``description_cap`` (default: ``item_cap``).
    ``item_cap=None`` leaves the other item fields whole."""
    it = ex.item
    dcap = description_cap if description_cap is not None else item_cap
    item = replace(it, description=_cut(it.description, dcap))
    if item_cap is not None:
        item = replace(item, title=_cut(it.title, item_cap), brand=_cut(it.brand, item_cap),
                       category=_cut(it.category, item_cap),
                       attributes={k: _cut(v, item_cap) for k, v in it.attributes.items()})
    return replace(ex, item=item, query=_cut(ex.query, query_cap) if query_cap else ex.query)


def _largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Largest c in [lo, hi] with fits(c) (fits is monotone: smaller c fits at least as well)."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_example(ex: Example, n_tokens: Callable[[Example], int], budget: int) -> tuple[Example, bool]:
    """(``ex`` or a shortened copy whose prompt takes at most ``budget`` tokens, whether it was cut).

    ``n_tokens(example)`` is the prompt's token count. When even the shortest form does not fit,
    the shortest form is returned (the caller cuts the rest by rule 5)."""
    if n_tokens(ex) <= budget:
        return ex, False
    it = ex.item
    if it.description and len(it.description) > MIN_FIELD_CHARS:
        dcap = _largest_fitting(MIN_FIELD_CHARS, len(it.description),
                                lambda d: n_tokens(shorten(ex, None, description_cap=d)) <= budget)
        if dcap is not None:
            return shorten(ex, None, description_cap=dcap), True
    longest_item = max([len(it.title), len(it.brand or ""), len(it.category or "")]
                       + [len(v) for v in it.attributes.values()])
    cap = _largest_fitting(MIN_FIELD_CHARS, max(MIN_FIELD_CHARS, longest_item),
                           lambda c: n_tokens(shorten(ex, c, description_cap=MIN_FIELD_CHARS)) <= budget)
    if cap is not None:
        return shorten(ex, cap, description_cap=MIN_FIELD_CHARS), True
    qcap = _largest_fitting(MIN_FIELD_CHARS, max(MIN_FIELD_CHARS, len(ex.query)),
                            lambda c: n_tokens(shorten(ex, MIN_FIELD_CHARS, c)) <= budget)
    return shorten(ex, MIN_FIELD_CHARS, qcap or MIN_FIELD_CHARS), True
