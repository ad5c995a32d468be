"""Joining labelled pairs with a products file and a queries file.

Public relevance sets ship the judged pairs apart from the product metadata (ESCI: examples +
products; WANDS: label + product + query files; Home Depot: pairs + descriptions + attributes), so
a pair carries only keys (``product_id``, ``query_id``) and the text comes from the other files.

Rules (:class:`Joiner`):

* A lookup file is read whole into ``key -> row``; keys are compared as trimmed strings (``7``,
  ``7.0`` and ``"7"`` are one key). A row without a key, or with a key seen before, is an error
  naming both rows; with ``on_error="skip"`` the first row of a key is kept and the others are
  counted in a note.
* Fields present in the pairs file win; the products (queries) file fills in the fields the pair
  leaves empty. Attributes merge by name, the pair's value winning.
* A pair whose key has no row is counted and reported (``N of M pairs have no row in FILE``); it is
  kept when the pairs file still gives the field the key was for (``item.title`` / ``query``),
  otherwise it is a row error (raised, or skipped and counted with ``on_error="skip"``).
* Lookup rows that no pair joined are counted in a note.

A third lookup, an **attributes file in long format** (one row per product and attribute: Home
Depot's ``attributes.csv`` holds ``product_uid, name, value``), is read into ``key -> {name: value}``
(:func:`build_attribute_table`): a row without a key or a name is an error (or, skipped, counted),
a row without a value adds nothing, and several values of one name for one product are kept
together, joined by ``"; "`` in file order. Its attributes fill in those the pair and the products
file leave unset; a pair without attributes is counted in the notes, never an error.

Item fields come from one flat record by a column map (:func:`item_fields`): ``item.title``,
``item.brand``, ``item.category``, ``item.description``, ``item.price``, ``item.attributes.NAME``,
and ``item.attributes`` for one column packing many attributes as ``name:value|name:value`` or a
JSON object (:func:`parse_packed`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from taosr.errors import DataError

ITEM_FIELDS = ("item.title", "item.brand", "item.category", "item.description", "item.price")
ATTRIBUTE_PREFIX = "item.attributes."
PACKED_ATTRIBUTES = "item.attributes"
QUERY_FIELDS = ("query", "query_type")
# the column a products / queries file's field is read from when its column map does not name one
ITEM_DEFAULT_COLUMNS = {**{t: t[5:] for t in ITEM_FIELDS}, PACKED_ATTRIBUTES: "attributes"}  # item.title -> title
QUERY_DEFAULT_COLUMNS = {t: t for t in QUERY_FIELDS}
# fields a column map may leave out with an empty column (FIELD=): not read at all, not even from
# the column of their default name; the title, the query, the label and the keys are always read
OPTIONAL_FIELDS = ITEM_FIELDS[1:] + (PACKED_ATTRIBUTES, "query_type")
_INTEGRAL = re.compile(r"-?\d+\.0+")


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def mapped_column(cmap: dict[str, str], target: str, default: str) -> str | None:
    """The column ``target`` is read from: the map's, else ``default``; None where the map leaves
    the field out (``FIELD=``, an empty column)."""
    col = cmap.get(target, default)
    return None if isinstance(col, str) and not col.strip() else col


def norm_key(v: Any) -> str | None:
    """A join key as a trimmed string (``7.0`` and ``"7.0"`` -> ``"7"``: integer keys read or written as
    floats, as in Home Depot's attributes file); None when missing."""
    if is_missing(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    text = str(v).strip()
    if _INTEGRAL.fullmatch(text):  # "100001.0" (an integer key written from a float column) -> "100001"
        text = text.split(".", 1)[0]
    return text


_CURRENCY = re.compile(r"^\s*(?:[$€£¥]|USD|EUR|GBP)?\s*(.*?)\s*(?:[$€£¥]|USD|EUR|GBP)?\s*$", re.IGNORECASE)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def parse_price(v: Any) -> float | None:
    """A price as a number: a number, or text like ``12.5``, ``$12.99``, ``1,299.00 USD`` (a currency
    sign or code and thousands commas dropped); None for anything else (``N/A``, ``12,99`` is
    ambiguous)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = _CURRENCY.match(str(v))
    text = m.group(1) if m else str(v)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        return float(text)  # inf / nan pass: the row's validation refuses them by name (item.price must be finite)
    except ValueError:
        return None


def _name_cut(part: str) -> int:
    """Where a packed attribute's name ends: its first ``:`` or ``=`` (-1: neither)."""
    return min((i for i in (part.find(":"), part.find("=")) if i >= 0), default=-1)


def parse_packed(value: Any, where: str, column: str) -> dict[str, str]:
    """Attributes packed in one cell: ``name:value|name:value`` (WANDS ``product_features``),
    ``name=value; name=value`` (``;`` separates where no ``|`` does) or a JSON object; empty values
    are dropped, a part without a name and ``:`` or ``=`` is a DataError."""
    if isinstance(value, dict):
        pairs = value.items()
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(where, column, f"packed attributes look like JSON but are not ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(where, column, "packed attributes must be a JSON object of name -> value")
            pairs = obj.items()
        else:
            pairs = []
            parts = text.split("|")
            if len(parts) == 1 and all(_name_cut(p) > 0 for p in text.split(";") if p.strip()):
                parts = text.split(";")  # name=value; name=value (a value with a `;` in a lone name:value stays whole)
            for part in parts:
                if not part.strip():
                    continue
                cut = _name_cut(part)
                name, val = (part[:cut], part[cut + 1:]) if cut >= 0 else (part, "")
                if cut < 0 or not name.strip():
                    raise DataError(where, column, f"packed attribute {part.strip()[:60]!r} is not NAME:VALUE "
                                                   "(expected name:value|name:value, name=value; name=value or a JSON "
                                                   "object; an empty cell is no attributes)")
                pairs.append((name, val))
    out = {}
    for name, val in pairs:
        if isinstance(val, (dict, list)):
            raise DataError(where, column, f"packed attribute {name!r} must be a string or number")
        if not is_missing(val):
            out[str(name).strip()] = str(val).strip()
    return out


def item_fields(rec: dict, cmap: dict[str, str], where: str,
                default: Callable[[str], str] = lambda target: target) -> dict[str, Any]:
    """The nested ``item`` dict (before validation) of one flat record; a field not in ``cmap``
    is read from the column ``default(field)``. Named attributes win over packed ones."""
    item: dict[str, Any] = {}
    for target in ITEM_FIELDS:
        col = mapped_column(cmap, target, default(target))
        if col is None:
            continue
        v = rec.get(col)
        if is_missing(v):
            continue
        if target == "item.price":
            price = parse_price(v)
            if price is None:
                raise DataError(where, col, f"price {v!r} is not a number (an empty cell is no price; --skip-invalid "
                                            "skips the pair)")
            v = price
        item[target[5:]] = v
    attrs: dict[str, Any] = {}
    packed = mapped_column(cmap, PACKED_ATTRIBUTES, default(PACKED_ATTRIBUTES))  # unmapped: its default column
    v = rec.get(packed) if packed is not None else None
    if not is_missing(v):
        attrs.update(parse_packed(v, where, packed))
    for target, col in cmap.items():
        if target.startswith(ATTRIBUTE_PREFIX):
            v = rec.get(col)
            if not is_missing(v):
                attrs[target[len(ATTRIBUTE_PREFIX):]] = v
    if attrs:
        item["attributes"] = attrs
    return item


@dataclass
class Table:
    """One lookup file read into ``key -> (where, record)``, with its counts."""
    path: str
    key_column: str
    rows: dict[str, tuple[str, dict]] = field(default_factory=dict)
    n_rows: int = 0
    keyless: list[str] = field(default_factory=list)     # where of rows without a key (on_error=skip)
    duplicates: list[str] = field(default_factory=list)  # "key at where (first at where)" (on_error=skip)
    bad: list[str] = field(default_factory=list)         # rows that are not objects / not JSON (on_error=skip)
    used: set[str] = field(default_factory=set)          # keys some pair joined
    columns: list | None = None                          # the file's header (CSV / Parquet), rows may keep fewer

    def notes(self, what: str) -> list[str]:
        out = []
        if self.keyless:
            out.append(f"ignored {len(self.keyless)} {what} rows of {self.path} without {self.key_column} "
                       f"(first: {self.keyless[0]})")
        if self.duplicates:
            out.append(f"ignored {len(self.duplicates)} {what} rows of {self.path} with a duplicate {self.key_column}, "
                       f"kept the first row of each key (first: {self.duplicates[0]})")
        if self.bad:
            out.append(f"ignored {len(self.bad)} bad {what} rows of {self.path} (first: {self.bad[0]})")
        return out


def _refuser(on_error: str) -> Callable[[DataError, list, str], None]:
    """``refuse(err, bucket, note)``: raise ``err`` (``on_error="raise"``), or count ``note`` in ``bucket``."""
    def refuse(err: DataError, bucket: list[str], note: str) -> None:
        if on_error == "raise":
            raise err
        bucket.append(note)
    return refuse


def _keyed_records(records: Iterable[tuple[str, Any]], t: Table, refuse) -> Iterator[tuple[str, dict, str]]:
    """``(where, record, key)`` of the records that are objects with a key in ``t.key_column``;
    counts every record in ``t.n_rows`` and refuses the others (a line that is not JSON, not an
    object, no key)."""
    for where, rec in records:
        t.n_rows += 1
        if isinstance(rec, DataError) or not isinstance(rec, dict):
            err = rec if isinstance(rec, DataError) else DataError(where, None, "row must be an object")
            refuse(err, t.bad, str(err))
            continue
        key = norm_key(rec.get(t.key_column))
        if key is None:
            refuse(DataError(where, t.key_column, f"is missing (the join key of {t.path})"), t.keyless, where)
            continue
        yield where, rec, key


def build_table(records: Iterable[tuple[str, Any]], path: str, key_column: str, on_error: str = "raise") -> Table:
    """Read ``(where, record)`` pairs into a :class:`Table` keyed by ``key_column``. A record that is
    a :class:`DataError` (a line that is not JSON) or not an object, a missing key or a duplicate
    key raises; with ``on_error="skip"`` it is counted instead (the first row of a key is kept)."""
    t = Table(path=path, key_column=key_column, columns=getattr(records, "columns", None))
    refuse = _refuser(on_error)
    for where, rec, key in _keyed_records(records, t, refuse):
        if key in t.rows:
            first = t.rows[key][0]
            refuse(DataError(where, key_column, f"duplicate key {key!r} (first at {first})"), t.duplicates,
                   f"{key!r} at {where}, first at {first}")
            continue
        t.rows[key] = (where, rec)
    return t


def build_attribute_table(records: Iterable[tuple[str, Any]], path: str, key_column: str, name_column: str,
                          value_column: str, on_error: str = "raise") -> Table:
    """Read a long-format attributes file (``key, name, value`` per row) into a :class:`Table`
    whose record per key is ``{name: value}``. A record that is not an object, or has no key or
    no name, raises; with ``on_error="skip"`` it is counted. Values of one name repeated for a key
    are joined by ``"; "`` (each distinct value once, in file order)."""
    t = Table(path=path, key_column=key_column)
    refuse = _refuser(on_error)
    values: dict[str, dict[str, list[str]]] = {}
    first: dict[str, str] = {}
    for where, rec, key in _keyed_records(records, t, refuse):
        name = rec.get(name_column)
        if is_missing(name):
            refuse(DataError(where, name_column, f"is missing (the attribute name in {path})"), t.bad,
                   f"{where}: no {name_column}")
            continue
        first.setdefault(key, where)
        attrs = values.setdefault(key, {})
        value = rec.get(value_column)
        if is_missing(value):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        vals = attrs.setdefault(str(name).strip(), [])
        if str(value).strip() not in vals:
            vals.append(str(value).strip())
    t.rows = {k: (first[k], {n: "; ".join(v) for n, v in attrs.items() if v}) for k, attrs in values.items()}
    return t


@dataclass
class _Side:
    """One lookup (items or queries) and how pairs fared against it."""
    table: Table
    pair_column: str  # the key column in the pairs file
    what: str         # "product" / "query"
    n_pairs: int = 0
    missing: int = 0
    first_missing: str | None = None

    def lookup(self, flat: dict, where: str) -> tuple[str, dict] | None:
        self.n_pairs += 1
        key = norm_key(flat.get(self.pair_column))
        hit = self.table.rows.get(key) if key is not None else None
        if hit is None:
            self.missing += 1
            if self.first_missing is None:
                self.first_missing = f"{'key ' + repr(key) if key is not None else 'no key'} at {where}"
            return None
        self.table.used.add(key)
        return hit

    def notes(self) -> list[str]:
        t = self.table
        out = [f"{self.n_pairs - self.missing} of {self.n_pairs} pairs joined a row of {t.path} by {self.pair_column}; "
               f"{len(t.rows) - len(t.used)} of {len(t.rows)} {self.what} rows joined no pair"]
        if self.missing:
            out.append(f"{self.missing} of {self.n_pairs} pairs have no row in {t.path} (first: {self.first_missing})")
        return t.notes(self.what) + out


class Joiner:
    """Fills a pair's nested row (``{"query": ..., "item": {...}}``, before validation) from the
    products and queries tables; see the module doc for the rules."""

    def __init__(self, items: Table | None = None, item_key: str | None = None,
                 items_column_map: dict[str, str] | None = None, queries: Table | None = None,
                 query_key: str | None = None, queries_column_map: dict[str, str] | None = None,
                 attributes: Table | None = None, attributes_key: str | None = None):
        self.items = _Side(items, item_key, "product") if items is not None else None
        self.queries = _Side(queries, query_key, "query") if queries is not None else None
        self.attributes = _Side(attributes, attributes_key, "product") if attributes is not None else None
        self.items_map = {k: v for k, v in (items_column_map or {}).items() if k != "key"}
        self.queries_map = {k: v for k, v in (queries_column_map or {}).items() if k != "key"}

    def apply(self, row: dict, flat: dict, where: str) -> dict:
        # every lookup first, so each file's counts cover every pair
        item_hit = self.items.lookup(flat, where) if self.items is not None else None
        query_hit = self.queries.lookup(flat, where) if self.queries is not None else None
        attr_hit = self.attributes.lookup(flat, where) if self.attributes is not None else None
        if self.items is not None:
            item = row.setdefault("item", {})
            if item_hit is None:
                if is_missing(item.get("title")):
                    raise DataError(where, self.items.pair_column,
                                    f"{_key_text(flat, self.items.pair_column)} has no row in {self.items.table.path} "
                                    "and the pairs file gives no item.title")
            else:
                pwhere, prec = item_hit
                # unmapped fields read the column named like the field (title, brand, ...)
                fill = item_fields(prec, self.items_map, pwhere, default=ITEM_DEFAULT_COLUMNS.__getitem__)
                for k, v in fill.items():
                    if k == "attributes":
                        item["attributes"] = {**v, **(item.get("attributes") or {})}
                    elif is_missing(item.get(k)):
                        item[k] = v
        if attr_hit is not None and attr_hit[1]:
            item = row.setdefault("item", {})
            item["attributes"] = {**attr_hit[1], **(item.get("attributes") or {})}
        if self.queries is not None:
            if query_hit is None:
                if is_missing(row.get("query")):
                    raise DataError(where, self.queries.pair_column,
                                    f"{_key_text(flat, self.queries.pair_column)} has no row in {self.queries.table.path} "
                                    "and the pairs file gives no query")
            else:
                for target in QUERY_FIELDS:
                    col = mapped_column(self.queries_map, target, QUERY_DEFAULT_COLUMNS[target])
                    v = query_hit[1].get(col) if col is not None else None
                    if is_missing(row.get(target)) and not is_missing(v):
                        row[target] = v.strip() if isinstance(v, str) else v
        return row

    def notes(self) -> list[str]:
        out = [n for side in (self.items, self.queries, self.attributes) if side is not None for n in side.notes()]
        for side, cmap, defaults, flag, example in (
                (self.items, self.items_map, ITEM_DEFAULT_COLUMNS, "--items-column-map", "item.attributes.NAME=COLUMN"),
                (self.queries, self.queries_map, QUERY_DEFAULT_COLUMNS, "--queries-column-map", "query_type=COLUMN")):
            if side is None or not side.table.columns:  # a JSONL file has no header
                continue
            # a field's default column is read unless the map names another; one it leaves out (FIELD=) is
            # accounted for, not a column to suggest mapping
            read = {side.table.key_column, *cmap.values(),
                    *(c for f, c in defaults.items() if f not in cmap or mapped_column(cmap, f, c) is None)}
            unread = [str(c) for c in side.table.columns if c not in read]
            if unread:
                # a column named like a field (product_description): suggest that field
                like = next((f"{f}={c}" for c in unread for f in defaults
                             if f.startswith("item.") and f not in cmap and f.split(".")[-1] in c.lower()), example)
                out.append(f"{len(unread)} column{'s' if len(unread) > 1 else ''} of {side.table.path} "
                           f"{'are' if len(unread) > 1 else 'is'} not read: {', '.join(unread)} "
                           f"(map one with {flag} FIELD=COLUMN, e.g. {like})")
        return out


def _key_text(flat: dict, column: str) -> str:
    key = norm_key(flat.get(column))
    return f"key {key!r}" if key is not None else f"no {column}"
