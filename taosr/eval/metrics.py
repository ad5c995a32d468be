"""Evaluation metrics on prediction records (pure).

A record: ``gold`` (1-4), ``pred`` (1-4 or None when unparseable), ``format_error``,
``query_type`` and ``step_verdicts`` (step -> 1.0/0.0/None from the verifier).

- ``macro_f1``: mean F1 over the tiers that occur in gold or predictions (a tier absent from both
  is left out of the mean rather than counted as 0 or 1); its ``f1/<tier>`` is NaN, not 0;
- an unparseable prediction is wrong for every metric: for the tier F1s it is an extra class that
  is never gold, for Good F1 it counts as the opposite of the gold goodness;
- ``good_f1``: binary F1 with Good = tiers 4 and 3 as the positive class;
- ``step_accuracy``: mean verdict over annotated (covered) steps;
- ``hallucination_rate`` (discriminative hallucination): among records whose five steps are all
  covered by annotations, the share whose steps are all right but whose label is wrong;
- ranking (``ndcg@10``, ``rmse_grade``): see :mod:`taosr.eval.ranking` (only for records with a
  ``score`` / a ``grade``).
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torchmetrics.functional.classification import binary_f1_score, multiclass_f1_score

from taosr.eval.ranking import ranking_metrics, tier_grade_means
from taosr.labels import GOOD_TIERS, LONG_TAIL_TYPES, STEP_KEYS, TIER_NAMES

TIER_ORDER = (4, 3, 2, 1)


def _f1s(gold: list[int], pred: list[int | None]) -> tuple[dict[int, float], float]:
    g = torch.tensor(gold)
    p = torch.tensor([0 if x is None else int(x) for x in pred])
    per = multiclass_f1_score(p, g, num_classes=5, average=None, zero_division=0.0)
    present = [t for t in TIER_ORDER if (g == t).any() or (p == t).any()]
    per_tier = {t: float(per[t]) if t in present else float("nan") for t in TIER_ORDER}  # absent: no F1
    macro = sum(per_tier[t] for t in present) / len(present) if present else float("nan")
    return per_tier, macro


def _good_f1(gold: list[int], pred: list[int | None]) -> float:
    g = torch.tensor([int(x in GOOD_TIERS) for x in gold])
    p = torch.tensor([int(x in GOOD_TIERS) if x is not None else 1 - int(y in GOOD_TIERS) for x, y in zip(pred, gold)])
    return float(binary_f1_score(p, g, zero_division=0.0))


def _group_metrics(recs: list[dict]) -> dict[str, float]:
    gold = [int(r["gold"]) for r in recs]
    pred = [r.get("pred") for r in recs]
    per_tier, macro = _f1s(gold, pred)
    out = {"n": float(len(recs)),
           "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(recs),
           "macro_f1": macro, "good_f1": _good_f1(gold, pred),
           "format_error_rate": sum(bool(r.get("format_error")) for r in recs) / len(recs)}
    out.update({f"f1/{TIER_NAMES[t]}": per_tier[t] for t in TIER_ORDER})
    hits, per_step = [], defaultdict(list)
    full, halluc = 0, 0
    for r in recs:
        v = r.get("step_verdicts") or {}
        covered = [k for k in STEP_KEYS if v.get(k) is not None]
        for k in covered:
            hits.append(float(v[k]))
            per_step[k].append(float(v[k]))
        if len(covered) == len(STEP_KEYS):
            full += 1
            if all(v[k] >= 0.5 for k in STEP_KEYS) and r.get("pred") != r["gold"]:
                halluc += 1
    out["step_accuracy"] = sum(hits) / len(hits) if hits else float("nan")
    for k in STEP_KEYS:
        out[f"step_accuracy/{k}"] = sum(per_step[k]) / len(per_step[k]) if per_step[k] else float("nan")
    out["hallucination_rate"] = halluc / full if full else float("nan")
    return out


def compute_metrics(records: list[dict]) -> dict[str, float]:
    """Overall metrics, ``by_type/<type>/<metric>`` and ``long_tail/<metric>``; with scored records
    also the ranking metrics of :mod:`taosr.eval.ranking` (``ndcg@10``, ``ndcg@10_queries``,
    ``ndcg@10_skipped_queries``, and ``rmse_grade``/``rmse_grade_n`` when records carry grades;
    the raw-grade mapping is computed once over all records and used for every slice)."""
    if not records:
        return {}
    means = tier_grade_means(records)  # one raw-grade mapping for every slice

    def group(rs: list[dict]) -> dict[str, float]:
        return {**_group_metrics(rs), **ranking_metrics(rs, means)}

    out = group(records)
    by_type: dict[str, list] = defaultdict(list)
    for r in records:
        by_type[r.get("query_type") or "other"].append(r)
    for qt, rs in sorted(by_type.items()):
        out.update({f"by_type/{qt}/{k}": v for k, v in group(rs).items()})
    tail = [r for r in records if r.get("query_type") in LONG_TAIL_TYPES]
    if tail:
        out.update({f"long_tail/{k}": v for k, v in group(tail).items()})
    return out


def confusion_matrix(records: list[dict]) -> tuple[list[list[int]], list[int]]:
    """(4x4 counts gold rows 4..1 x predicted cols 4..1, unparseable count per gold tier)."""
    pos = {t: i for i, t in enumerate(TIER_ORDER)}
    m = [[0] * 4 for _ in range(4)]
    bad = [0] * 4
    for r in records:
        g = pos[int(r["gold"])]
        if r.get("pred") in pos:
            m[g][pos[r["pred"]]] += 1
        else:
            bad[g] += 1
    return m, bad


def format_table(metrics: dict[str, float], keys=("macro_f1", "good_f1", "accuracy", "step_accuracy",
                                                  "format_error_rate", "hallucination_rate")) -> str:
    """Markdown table: overall, then each query type, then the pooled long tail."""
    types = sorted({k.split("/")[1] for k in metrics if k.startswith("by_type/")})
    rows = [("overall", "")] + [(t, f"by_type/{t}/") for t in types]
    if any(k.startswith("long_tail/") for k in metrics):
        rows.append(("long tail", "long_tail/"))

    def fmt(x):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    lines = ["| slice | n | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, pre in rows:
        n = metrics.get(pre + "n")
        lines.append(f"| {name} | {int(n) if n is not None else ''} | " + " | ".join(fmt(metrics.get(pre + k)) for k in keys) + " |")
    return "\n".join(lines)
