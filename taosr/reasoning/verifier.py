"""Offline, annotation-based step verifier (the paper's offline verification), pure.

A step is *covered* when the example has a gold conclusion for it. A covered step is right (1.0)
when the completion has the step and its conclusion equals the gold one after normalisation;
for the query and item steps (``category; fact; fact``) the first element must match exactly
and the remaining facts as a set (order-insensitive). Uncovered steps get ``None``
(the GRM judges them); a covered step missing from a malformed completion gets 0.0.

The verifier checks what the annotation states. An annotation that is a bare conclusion
(``exact``) checks the conclusion only: the step's evidence (``hammer vs sofa => exact``) may be
anything. An annotation that is a whole decision step, evidence first (``hammer vs hammer; tools vs
tools => exact``), checks the evidence too: the step must state the same evidence parts (a set:
their order is free) before its ``=>``, so a right conclusion reached from wrong evidence is wrong.
"""
from __future__ import annotations

import torch

from taosr.labels import STEP_KEYS
from taosr.reasoning.format import ParsedReasoning, conclusion, evidence

FACT_STEPS = ("query", "item")


def _facts(text: str) -> tuple[str, frozenset]:
    """(category, the set of facts): order-insensitive; a fact written twice counts once (the facts
    are right; a stricter multiset rule changed a handful of rollout rewards and, through them, the
    quick start's SRPO run: held-out macro F1 0.783 -> 0.763 on one seed, see docs/NOTES.md)."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    return (parts[0] if parts else ""), frozenset(parts[1:])


def step_matches(key: str, predicted: str, gold: str, *, check_evidence: bool = False) -> bool:
    """Whether ``predicted``'s conclusion equals ``gold``'s; with ``check_evidence``, also its
    evidence when ``gold`` states evidence (``... => conclusion``; a bare gold conclusion checks
    the conclusion only)."""
    p, g = conclusion(predicted), conclusion(gold)
    if key in FACT_STEPS:
        same = _facts(p) == _facts(g)
    else:
        same = p == g
    if same and check_evidence:
        want = evidence(gold)
        return want is None or evidence(predicted) == want
    return same


def verify_steps(parsed: ParsedReasoning, annotations: dict[str, str] | None) -> dict[str, float | None]:
    ann = annotations or {}
    out: dict[str, float | None] = {}
    for k in STEP_KEYS:
        if k not in ann:
            out[k] = None
        elif k not in parsed.steps:
            out[k] = 0.0
        else:
            out[k] = 1.0 if step_matches(k, parsed.steps[k], ann[k], check_evidence=True) else 0.0
    return out


def verifier_coverage(verdicts_list: list[dict[str, float | None]]) -> float:
    total = sum(len(v) for v in verdicts_list)
    return sum(x is not None for v in verdicts_list for x in v.values()) / total if total else 0.0


def step_verdicts_to_tensor(verdicts_list: list[dict[str, float | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, 5) float with NaN where uncovered, covered (N, 5) bool) in step order."""
    vals = torch.tensor([[float("nan") if v.get(k) is None else float(v[k]) for k in STEP_KEYS]
                         for v in verdicts_list], dtype=torch.float32).reshape(-1, len(STEP_KEYS))
    return vals, ~torch.isnan(vals)
