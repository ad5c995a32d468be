"""The one example schema every reader produces and every view consumes.

A row on disk (JSONL) looks like::

    {"id": "ex-1", "query": "running shoes not nike",
     "item": {"title": "Adidas Ultraboost Running Shoes", "brand": "adidas",
              "category": "running shoes", "attributes": {"color": "black"}, "price": 120.0},
     "label": 2, "query_type": "negation",
     "grade": 1.5,                                            # optional raw numeric grade
     "steps": {"query": "...", "item": "...", ...},          # optional gold step texts
     "annotations": {"category": "exact", "judgment": "mismatch"},  # optional gold conclusions
     "provenance": {"teacher": "...", "prompt_version": "reason-v1", ...}}  # optional, kept as is

``validate_row`` turns such a dict into an :class:`Example` or raises a :class:`DataError`
naming the place and the field.
"""
from __future__ import annotations

import codecs
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

from taosr.errors import ConfigError, DataError
from taosr.labels import NAME_TO_TIER, QUERY_TYPES, STEP_KEYS, TIER_NAMES, TIERS

ALLOWED_QUERY_TYPES = QUERY_TYPES + ("other",)


@dataclass
class Item:
    title: str
    brand: str | None = None
    category: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    price: float | None = None
    description: str | None = None  # free text (often thousands of characters); cut first by the length budget


@dataclass
class Example:
    query: str
    item: Item
    label: int
    query_type: str = "other"
    id: str | None = None
    steps: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    grade: float | None = None  # the raw numeric grade a label was read from (label_thresholds, numeric labels)
    provenance: dict[str, Any] | None = None  # who wrote the steps (taosr reason), carried as is

    def to_dict(self) -> dict[str, Any]:
        """The row as written to JSONL; unset optional fields are left out (rows without a
        description or grade are written exactly as before those fields existed)."""
        d = asdict(self)
        if d["item"].get("description") is None:
            del d["item"]["description"]
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
    """A tier 1-4 from a number (``4``, ``4.0``, ``"4"``) or a tier's name (``Excellent``, any case);
    other labels need a label map (the error says how)."""
    if isinstance(value, str) and value.strip().lower() in NAME_TO_TIER:
        return NAME_TO_TIER[value.strip().lower()]
    try:
        f = None if isinstance(value, bool) or value is None else float(value)
    except (TypeError, ValueError):
        f = None
    if f is None or not f.is_integer() or int(f) not in TIERS:
        raise DataError(where, field_name, f"unknown label {value!r}; expected a tier 1-4 or its name "
                        f"({', '.join(TIER_NAMES[t] for t in TIERS)}); map other labels with --label-map "
                        "(data.reader.label_map), e.g. --label-map E=4 S=3 C=2 I=1")
    return int(f)


def validate_row(row: Any, where: str) -> Example:
    """Validate one raw row (a dict) and build an :class:`Example`; ``where`` is ``file:line``."""
    if not isinstance(row, dict):
        hint = " (one JSON object per line, JSON Lines: a JSON array is not read)" if isinstance(row, list) else ""
        raise DataError(where, None, f"row must be a JSON object, got {type(row).__name__}{hint}")
    unknown = set(row) - {"id", "query", "item", "label", "query_type", "steps", "annotations", "grade", "provenance"}
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
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            raise DataError(where, "item.price", f"must be a finite non-negative number, got {price!r}")
        price = float(price)
    extra = set(item_raw) - {"title", "brand", "category", "attributes", "price", "description"}
    if extra:
        raise DataError(where, f"item.{sorted(extra)[0]}", "unknown field")
    item = Item(
        title=title,
        brand=_opt_str(item_raw, "brand", where, "item.brand"),
        category=_opt_str(item_raw, "category", where, "item.category"),
        attributes=attrs,
        price=price,
        description=_opt_str(item_raw, "description", where, "item.description"),
    )
    if "label" not in row:
        raise DataError(where, "label", "is missing")
    label = parse_label(row["label"], where)
    qt = row.get("query_type") or "other"
    if qt not in ALLOWED_QUERY_TYPES:
        raise DataError(where, "query_type", f"unknown query type {qt!r}; expected one of {', '.join(ALLOWED_QUERY_TYPES)}")
    grade = row.get("grade")
    if grade is not None:
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade):
            raise DataError(where, "grade", f"must be a finite number, got {grade!r}")
        grade = float(grade)
    rid = row.get("id")
    prov = row.get("provenance")
    if prov is not None and not isinstance(prov, dict):
        raise DataError(where, "provenance", "must be an object")
    return Example(
        query=query, item=item, label=label, query_type=qt,
        id=None if rid is None else str(rid),
        steps=_step_dict(row, "steps", where),
        annotations=_step_dict(row, "annotations", where),
        grade=grade,
        provenance=prov,
    )


# ----------------------------------------------------------------------------- text files
AUTO_ENCODING = "auto"


def check_encoding(encoding: str | None, key: str = "encoding") -> str:
    """``auto`` or a codec Python knows; a bad name is a one-line ConfigError naming ``key``."""
    enc = encoding or AUTO_ENCODING
    if enc == AUTO_ENCODING:
        return enc
    try:
        codecs.lookup(enc)
    except LookupError:
        raise ConfigError(f"{key}: unknown encoding {enc!r}; use auto, utf-8, utf-8-sig, latin-1 or utf-16") from None
    return enc


def detect_encoding(path: str) -> str:
    """The encoding of a text file: ``utf-8-sig`` / ``utf-16`` by their byte-order mark, else
    ``utf-8`` when the whole file decodes as UTF-8, else ``latin-1`` (which decodes any bytes; public
    relevance sets often ship in it)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        fh.seek(0)
        sample = fh.read(1 << 16)
        if sample.count(b"\x00") > len(sample) // 4:  # every other byte NUL: UTF-16 text without its mark
            raise DataError(path, None, "looks like UTF-16 without a byte-order mark: set the encoding "
                                        "(--encoding utf-16-le or utf-16-be; data.reader.encoding)")
        fh.seek(0)
        dec = codecs.getincrementaldecoder("utf-8")()
        try:
            while chunk := fh.read(1 << 20):
                dec.decode(chunk)
            dec.decode(b"", final=True)
        except UnicodeDecodeError as err:
            fh.seek(0)
            if _mixed_utf8(fh):  # UTF-8 text with some lines that are not: mixed encodings
                raise decode_error(path, "utf-8", err, "line ", mixed=True) from None
            return "latin-1"
    return "utf-8"


def _mixed_utf8(fh) -> bool:
    """Whether some lines are UTF-8 with non-ASCII text while others are not UTF-8 at all (a latin-1
    line is seldom valid UTF-8 as a whole, though two of its bytes may look like a UTF-8 character)."""
    utf8_text = bad = False
    for raw in fh:
        if raw.isascii():
            continue
        try:
            raw.decode("utf-8")
            utf8_text = True
        except UnicodeDecodeError:
            bad = True
        if utf8_text and bad:
            return True
    return False


def resolve_encoding(path: str, encoding: str | None) -> str:
    enc = check_encoding(encoding)
    return detect_encoding(path) if enc == AUTO_ENCODING else enc


def decode_error(path: str, encoding: str, err: UnicodeDecodeError, line_prefix: str = "",
                 mixed: bool = False) -> DataError:
    """A one-line DataError for bytes that are not ``encoding``, naming the first bad line
    (``file:N``, or ``file:line N`` with ``line_prefix="line "`` as CSV rows are named); ``mixed``:
    the rest of the file is UTF-8 (reading it all as latin-1 would garble every other accent)."""
    line = None
    try:
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    raw.decode(encoding)
                except UnicodeDecodeError:
                    line = n
                    break
    except OSError:
        pass
    where = f"{path}:{line_prefix}{line}" if line else path
    if mixed:
        return DataError(where, None, "bytes that are not UTF-8 in a file that is UTF-8 elsewhere (mixed encodings): "
                                      "re-encode that line, or read the whole file as latin-1 with --encoding latin-1 "
                                      "(data.reader.encoding)")
    return DataError(where, None, f"not valid {encoding} text ({err.reason} at byte {err.start}); "
                                  "set the encoding (data.reader.encoding or --encoding: auto, utf-8, latin-1, utf-16)")


def check_data_file(path: str) -> None:
    """A path that can be read as one data file: it exists and is not a directory."""
    if not os.path.exists(path):
        raise DataError(path, None, "file not found")
    if os.path.isdir(path):
        raise DataError(path, None, "is a directory, not a data file")


def iter_jsonl_lines(path: str, encoding: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (``path:line``, parsed JSON or a :class:`DataError`) for every non-blank line: a line
    that is not JSON yields its error, so a reader that skips bad rows can go on after it."""
    check_data_file(path)
    enc = resolve_encoding(path, encoding)
    n = 0
    try:
        with open(path, encoding=enc) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, DataError(where, None, f"invalid JSON ({e.msg} at column {e.colno})")
    except UnicodeDecodeError as e:
        raise decode_error(path, enc, e) from None


def iter_jsonl(path: str, encoding: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (``path:line``, parsed JSON) for every non-blank line; bad JSON raises DataError."""
    for where, row in iter_jsonl_lines(path, encoding):
        if isinstance(row, DataError):
            raise row
        yield where, row


def check_unique_id(ex: Example, where: str, seen: dict[str, str]) -> None:
    """Refuse an id already used in the file, naming both places (``seen``: id -> where)."""
    if ex.id is None:
        return
    if ex.id in seen:
        raise DataError(where, "id", f"duplicate id {ex.id!r} (first at {seen[ex.id]})")
    seen[ex.id] = where


def load_jsonl(path: str) -> list[Example]:
    seen: dict[str, str] = {}
    out = []
    for where, row in iter_jsonl(path):
        ex = validate_row(row, where)
        check_unique_id(ex, where, seen)
        out.append(ex)
    return out


def append_jsonl(fh, rows: Iterable[dict]) -> None:
    """Append ``rows`` as JSON lines to the open file ``fh`` and force them to disk (files written as
    they go, e.g. ``OUT.partial`` of ``taosr sample`` / ``taosr reason``, that a re-run resumes)."""
    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    fh.flush()
    os.fsync(fh.fileno())


def write_json(path: str, obj: Any) -> None:
    """``obj`` as one indented JSON file, written to a temporary name beside ``path`` and renamed (a
    reader never sees half of it): the small records runs keep of themselves."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_jsonl(path: str, rows: Iterable[Example | dict]) -> int:
    """Write rows as JSON lines to a temporary name beside ``path``, then rename: a failed or
    interrupted write never leaves a half-written ``path``."""
    if os.path.isdir(path):
        raise DataError(path, None, "is a directory; give a file path to write")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                d = r.to_dict() if isinstance(r, Example) else r
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n
