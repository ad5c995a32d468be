"""Readers for JSONL / CSV / Parquet with a column map and a label map.

Flat rows are mapped into the nested schema (``item.title``, ``item.attributes.color`` ...) and
validated by :func:`taosr.schema.validate_row`, so every format reports errors the same way:
``file:line N`` (JSONL, CSV with the header as line 1) or ``file:row N`` (Parquet), the field and
what is wrong. With ``on_error="skip"`` bad rows are skipped and every skip is recorded.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from taosr.schema import Example, iter_jsonl, validate_row
from taosr.errors import DataError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
TARGETS = ("id", "query", "label", "query_type", "item.title", "item.brand", "item.category", "item.price")


@dataclass
class ReaderSpec:
    path: str
    format: str | None = None
    column_map: dict[str, str] | None = None
    label_map: dict[str, int] | None = None
    label_thresholds: list[float] | None = None
    query_type: str | None = None
    on_error: str = "raise"
    limit: int | None = None


@dataclass
class ReadResult:
    path: str
    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def infer_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DataError(path, None, f"unknown file type {ext!r}; use .jsonl, .csv, .tsv or .parquet (or set format)")
    return FORMATS[ext]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def map_label(raw: Any, spec: ReaderSpec, where: str, column: str) -> Any:
    if _missing(raw):
        raise DataError(where, column, "label is missing")
    if spec.label_map:
        key = str(raw).strip()
        if key not in spec.label_map:
            try:  # numeric cells read as floats: 1.0 -> "1"
                key = str(int(float(key))) if float(key).is_integer() else key
            except ValueError:
                pass
        if key not in spec.label_map:
            raise DataError(where, column, f"unknown label {raw!r}; label_map knows {sorted(spec.label_map)}")
        return spec.label_map[key]
    if spec.label_thresholds:
        t = spec.label_thresholds
        if len(t) != 3 or not (t[0] < t[1] < t[2]):
            raise DataError(spec.path, "label_thresholds", "need three ascending thresholds t1 < t2 < t3")
        try:
            x = float(raw)
        except (TypeError, ValueError):
            raise DataError(where, column, f"graded label {raw!r} is not a number") from None
        return 4 if x >= t[2] else 3 if x >= t[1] else 2 if x >= t[0] else 1
    return raw


def flat_to_row(flat: dict[str, Any], spec: ReaderSpec, where: str) -> dict[str, Any]:
    """Map one flat record to the nested schema dict (before validation)."""
    cmap = spec.column_map or {}
    get = lambda target: flat.get(cmap.get(target, target))  # noqa: E731
    row: dict[str, Any] = {}
    item: dict[str, Any] = {}
    for target in TARGETS:
        v = get(target)
        if _missing(v):
            continue
        if target == "label":
            continue
        if target.startswith("item."):
            item[target[5:]] = v
        else:
            row[target] = v
    attrs = {}
    for target, col in cmap.items():
        if target.startswith("item.attributes."):
            v = flat.get(col)
            if not _missing(v):
                attrs[target[len("item.attributes."):]] = v
    if attrs:
        item["attributes"] = attrs
    if "price" in item:
        try:
            item["price"] = float(item["price"])
        except (TypeError, ValueError):
            raise DataError(where, cmap.get("item.price", "item.price"), f"price {item['price']!r} is not a number") from None
    row["item"] = item
    row["label"] = map_label(get("label"), spec, where, cmap.get("label", "label"))
    if spec.query_type and "query_type" not in row:
        row["query_type"] = spec.query_type
    return row


def _check_columns(columns: list[str], spec: ReaderSpec) -> None:
    for target, col in (spec.column_map or {}).items():
        if col not in columns:
            raise DataError(spec.path, col, f"column mapped to {target!r} is not in the file; columns: {', '.join(map(str, columns))}")


def _iter_flat(spec: ReaderSpec, fmt: str) -> Iterator[tuple[str, Any]]:
    if fmt == "jsonl":
        yield from iter_jsonl(spec.path)
        return
    import pandas as pd

    if fmt == "csv":
        sep = "\t" if spec.path.lower().endswith(".tsv") else ","
        df = pd.read_csv(spec.path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
        base, label = 2, "line"
    else:
        df = pd.read_parquet(spec.path)
        base, label = 1, "row"
    _check_columns(list(df.columns), spec)
    for n, rec in enumerate(df.to_dict(orient="records")):
        yield f"{spec.path}:{label} {n + base}", rec


def read_examples(spec: ReaderSpec) -> ReadResult:
    if spec.on_error not in ("raise", "skip"):
        raise DataError(spec.path, "on_error", f"must be 'raise' or 'skip', got {spec.on_error!r}")
    if not os.path.exists(spec.path):
        raise DataError(spec.path, None, "file not found")
    fmt = spec.format or infer_format(spec.path)
    res = ReadResult(path=spec.path)
    plain = fmt == "jsonl" and not spec.column_map and not spec.label_map and not spec.label_thresholds
    checked = False
    for where, raw in _iter_flat(spec, fmt):
        if spec.limit and len(res.examples) >= spec.limit:
            break
        try:
            if plain:
                if spec.query_type and isinstance(raw, dict) and "query_type" not in raw:
                    raw = {**raw, "query_type": spec.query_type}
                ex = validate_row(raw, where)
            else:
                if not isinstance(raw, dict):
                    raise DataError(where, None, "row must be an object")
                if fmt == "jsonl" and not checked:
                    _check_columns(list(raw), spec)
                    checked = True
                ex = validate_row(flat_to_row(raw, spec, where), where)
        except DataError as e:
            if spec.on_error == "raise" or e.where == spec.path:
                raise
            res.skipped.append(str(e))
            continue
        res.examples.append(ex)
    return res


def load_examples(path_or_spec: str | ReaderSpec) -> list[Example]:
    spec = path_or_spec if isinstance(path_or_spec, ReaderSpec) else ReaderSpec(path=path_or_spec)
    return read_examples(spec).examples
