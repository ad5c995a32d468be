"""Relevance tiers and the five reasoning steps: the vocabulary every module shares."""
from __future__ import annotations

TIERS = (4, 3, 2, 1)
TIER_NAMES = {4: "excellent", 3: "related", 2: "mismatch", 1: "irrelevant"}
NAME_TO_TIER = {v: k for k, v in TIER_NAMES.items()}
GOOD_TIERS = frozenset({4, 3})

# (key, heading) in the order the model must write them.
STEPS = (
    ("query", "Query understanding"),
    ("item", "Item understanding"),
    ("category", "Category match"),
    ("attribute", "Attribute match"),
    ("judgment", "Judgment"),
)
STEP_KEYS = tuple(k for k, _ in STEPS)
STEP_HEADINGS = {k: h for k, h in STEPS}

QUERY_TYPES = ("category", "brand", "attribute", "negation", "alternative", "qa", "knowledge")
LONG_TAIL_TYPES = ("negation", "alternative", "qa", "knowledge")

CATEGORY_MATCH_VALUES = ("exact", "sibling", "accessory", "different")
ATTRIBUTE_MATCH_VALUES = ("satisfied", "unstated", "violated", "n/a")


def tier_name(tier: int) -> str:
    return TIER_NAMES[int(tier)]
