"""The one example schema every reader produces and every view consumes.

A row on disk (JSONL) looks like::

    {"id": "ex-1", "query": "running shoes not nike",
     "item": {"title": "Adidas Ultraboost Running Shoes", "brand": "adidas",
              "category": "running shoes", "attributes": {"color": "black"}, "price": 120.0},
     "label": 2, "query_type": "negation",
     "steps": {"query": "...", "item": "...", ...},          # optional gold step texts
     "annotations": {"category": "exact", "judgment": "mismatch"}}  # optional gold conclusions

``validate_row`` turns such a dict into an :class:`Example` or raises a :class:`DataError`
naming the place and the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

from taosr.errors import DataError
from taosr.labels import QUERY_TYPES, STEP_KEYS, TIERS

ALLOWED_QUERY_TYPES = QUERY_TYPES + ("other",)


@dataclass
class Item:
    title: str
    brand: str | None = None
    category: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    price: float | None = None


@dataclass
class Example:
    query: str
    item: Item
    label: int
    query_type: str = "other"
    id: str | None = None
    steps: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}


def _req_str(row: dict, key: str, where: str, name: str | None = None) -> str:
    name = name or key
    if key not in row or row[key] is None:
        raise DataError(where, name, "is missing")
    v = row[key]
    if not isinstance(v, str):
        raise DataError(where, name, f"must be a string, got {type(v).__name__}")
    if not v.strip():
        raise DataError(where, name, "is empty")
    return v.strip()


def _opt_str(row: dict, key: str, where: str, name: str) -> str | None:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if not isinstance(v, (str, int, float)):
        raise DataError(where, name, f"must be a string, got {type(v).__name__}")
    s = str(v).strip()
    return s or None


def _step_dict(row: dict, key: str, where: str) -> dict[str, str] | None:
    v = row.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise DataError(where, key, f"must be an object keyed by step ({', '.join(STEP_KEYS)})")
    out = {}
    for k, s in v.items():
        if k not in STEP_KEYS:
            raise DataError(where, f"{key}.{k}", f"unknown step; expected one of {', '.join(STEP_KEYS)}")
        if not isinstance(s, str) or not s.strip():
            raise DataError(where, f"{key}.{k}", "must be a non-empty string")
        out[k] = s.strip()
    return out or None


def parse_label(value: Any, where: str, field_name: str = "label") -> int:
    if isinstance(value, bool) or value is None:
        raise DataError(where, field_name, f"unknown label {value!r}; expected a tier 1-4")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DataError(where, field_name, f"unknown label {value!r}; expected a tier 1-4") from None
    if not f.is_integer() or int(f) not in TIERS:
        raise DataError(where, field_name, f"unknown label {value!r}; expected a tier 1-4")
    return int(f)


def validate_row(row: Any, where: str) -> Example:
    """Validate one raw row (a dict) and build an :class:`Example`; ``where`` is ``file:line``."""
    if not isinstance(row, dict):
        raise DataError(where, None, f"row must be a JSON object, got {type(row).__name__}")
    unknown = set(row) - {"id", "query", "item", "label", "query_type", "steps", "annotations"}
    if unknown:
        raise DataError(where, sorted(unknown)[0], "unknown field")
    query = _req_str(row, "query", where)
    item_raw = row.get("item")
    if not isinstance(item_raw, dict):
        raise DataError(where, "item", "is missing" if item_raw is None else "must be an object")
    title = _req_str(item_raw, "title", where, "item.title")
    attrs_raw = item_raw.get("attributes") or {}
    if not isinstance(attrs_raw, dict):
        raise DataError(where, "item.attributes", "must be an object of name -> value")
    attrs = {}
    for k, v in attrs_raw.items():
        if not isinstance(v, (str, int, float, bool)):
            raise DataError(where, f"item.attributes.{k}", "must be a string or number")
        attrs[str(k)] = str(v)
    price = item_raw.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)) or math.isnan(price) or price < 0:
            raise DataError(where, "item.price", f"must be a non-negative number, got {price!r}")
        price = float(price)
    extra = set(item_raw) - {"title", "brand", "category", "attributes", "price"}
    if extra:
        raise DataError(where, f"item.{sorted(extra)[0]}", "unknown field")
    item = Item(
        title=title,
        brand=_opt_str(item_raw, "brand", where, "item.brand"),
        category=_opt_str(item_raw, "category", where, "item.category"),
        attributes=attrs,
        price=price,
    )
    if "label" not in row:
        raise DataError(where, "label", "is missing")
    label = parse_label(row["label"], where)
    qt = row.get("query_type") or "other"
    if qt not in ALLOWED_QUERY_TYPES:
        raise DataError(where, "query_type", f"unknown query type {qt!r}; expected one of {', '.join(ALLOWED_QUERY_TYPES)}")
    rid = row.get("id")
    return Example(
        query=query, item=item, label=label, query_type=qt,
        id=None if rid is None else str(rid),
        steps=_step_dict(row, "steps", where),
        annotations=_step_dict(row, "annotations", where),
    )


def iter_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    """Yield (``path:line``, parsed JSON) for every non-blank line; bad JSON raises DataError."""
    import os

    if not os.path.exists(path):
        raise DataError(path, None, "file not found")
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, None, f"invalid JSON ({e.msg} at column {e.colno})") from None


def load_jsonl(path: str) -> list[Example]:
    return [validate_row(row, where) for where, row in iter_jsonl(path)]


def write_jsonl(path: str, rows: Iterable[Example | dict]) -> int:
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            d = r.to_dict() if isinstance(r, Example) else r
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    return n
