"""Ranking metrics on prediction records (pure): NDCG@10 per query and the grade RMSE.

A record carries ``query``, ``gold`` (tier 1-4), ``score`` (the expected tier from
:mod:`taosr.eval.scores`; None or NaN when the completion had no label line), ``p_tier`` (P of
tiers 1..4, or None) and, when the data has one, a numeric ``grade`` (the raw graded label).

- ``ndcg@10``: the records of each query (same ``query`` text) are ranked by ``score``, highest
  first; a missing score ranks below every scored record, and records without a score are ordered
  worst first (lowest gold tier first: the input order, which is often sorted by relevance, must
  not rank for a model that gave no score); ties between scores keep the input order (a stable
  sort), so the figure is deterministic. NaN when no record has a score. Gains are graded: ``2 ** (tier - 1) - 1``
  (tier 1 -> 0, 2 -> 1, 3 -> 3, 4 -> 7) with the usual ``1 / log2(rank + 1)`` discount. A query's
  NDCG is DCG@10 / ideal DCG@10; the mean is over the queries whose ideal DCG is positive (some
  gold above tier 1): ``ndcg@10_queries`` counts them, ``ndcg@10_skipped_queries`` the others.
  Only computed when some record has a ``score`` key (evaluation with ``eval_scores``).
- ``rmse_grade``: only when records carry a numeric ``grade``. The expected tier is mapped back to
  the raw scale through the tiers' mean raw grades over the evaluated graded records:
  ``expected grade = sum_t P(t) * m_t`` with ``m_t`` the mean ``grade`` of the records whose gold
  tier is t (a tier no graded record has takes the mean of the nearest tier that has one, the lower
  on a tie). Records without ``p_tier`` (no label line) are left out; ``rmse_grade_n`` counts the
  records used.
"""
from __future__ import annotations

import math
from collections import defaultdict

from taosr.labels import TIERS

TIER_VALUES = tuple(sorted(TIERS))


def gain(tier: int) -> float:
    """Graded gain of a gold tier: 2 ** (tier - 1) - 1 (tier 1, Irrelevant, gains nothing)."""
    return float(2 ** (int(tier) - 1) - 1)


def _missing(score) -> bool:
    """None or NaN (a Python float or a numpy/torch scalar: ``float(x) != float(x)``)."""
    return score is None or float(score) != float(score)


def rank_order(scores: list, golds: list[int] | None = None) -> list[int]:
    """Indices by score, highest first; missing scores (None/NaN) last, among themselves by
    ascending ``golds`` when given (worst first); ties in input order."""
    def key(i):
        if _missing(scores[i]):
            return (True, float(golds[i]) if golds is not None else 0.0)
        return (False, -scores[i])
    return sorted(range(len(scores)), key=key)


def dcg(gains: list[float], k: int = 10) -> float:
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains[:k]))


def ndcg_at_k(golds: list[int], scores: list, k: int = 10) -> float | None:
    """NDCG@k of one query's records (None when the ideal DCG is 0: no gold above tier 1)."""
    ideal = dcg(sorted((gain(g) for g in golds), reverse=True), k)
    if ideal <= 0:
        return None
    order = rank_order(scores, golds)
    return dcg([gain(golds[i]) for i in order], k) / ideal


def ndcg_metrics(records: list[dict], k: int = 10) -> dict[str, float]:
    """``ndcg@k`` (mean over queries with a positive ideal DCG), ``ndcg@k_queries`` and
    ``ndcg@k_skipped_queries``; {} when no record has a ``score`` key, NaN when none has a score."""
    if not any("score" in r for r in records):
        return {}
    if all(_missing(r.get("score")) for r in records):  # nothing was scored: there is no ranking to measure
        return {f"ndcg@{k}": float("nan"), f"ndcg@{k}_queries": 0.0, f"ndcg@{k}_skipped_queries": 0.0}
    groups: dict[str, list[dict]] = defaultdict(list)
    for i, r in enumerate(records):
        if not isinstance(r.get("query"), str):  # records of no query would rank as one query "None"
            raise ValueError(f"ndcg@{k}: record {i} has no query text (got {r.get('query')!r}); "
                             "records are ranked per query")
        groups[r["query"]].append(r)
    vals, skipped = [], 0
    for rs in groups.values():
        v = ndcg_at_k([int(r["gold"]) for r in rs], [r.get("score") for r in rs], k)
        if v is None:
            skipped += 1
        else:
            vals.append(v)
    return {f"ndcg@{k}": sum(vals) / len(vals) if vals else float("nan"),
            f"ndcg@{k}_queries": float(len(vals)), f"ndcg@{k}_skipped_queries": float(skipped)}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def tier_grade_means(records: list[dict]) -> dict[int, float] | None:
    """Mean raw ``grade`` per gold tier over the graded records (a tier without any takes the
    nearest tier's, the lower on a tie); None when no record is graded."""
    by: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if _is_number(r.get("grade")):
            by[int(r["gold"])].append(float(r["grade"]))
    if not by:
        return None
    means = {t: sum(v) / len(v) for t, v in by.items()}
    return {t: means[t] if t in means else means[min(means, key=lambda s: (abs(s - t), s))] for t in TIER_VALUES}


def grade_rmse(records: list[dict], means: dict[int, float] | None = None) -> dict[str, float]:
    """``rmse_grade`` and ``rmse_grade_n`` over graded records with a ``p_tier``; {} without grades.
    ``means`` (tier -> raw grade) defaults to :func:`tier_grade_means` of ``records``."""
    means = means if means is not None else tier_grade_means(records)
    if means is None:
        return {}
    errs = []
    for r in records:
        p = r.get("p_tier")
        if _is_number(r.get("grade")) and p is not None:
            pred = sum(pt * means[t] for pt, t in zip(p, TIER_VALUES))
            errs.append((pred - float(r["grade"])) ** 2)
    return {"rmse_grade": math.sqrt(sum(errs) / len(errs)) if errs else float("nan"), "rmse_grade_n": float(len(errs))}


def ranking_metrics(records: list[dict], means: dict[int, float] | None = None) -> dict[str, float]:
    """NDCG@10 and (with grades) the grade RMSE of a group of records."""
    return {**ndcg_metrics(records), **grade_rmse(records, means)}
