"""Readers for JSONL / CSV / Parquet with a column map and a label map.

Flat rows are mapped into the nested schema (``item.title``, ``item.attributes.color`` ...) and
validated by :func:`taosr.schema.validate_row`, so every format reports errors the same way:
``file:line N`` (JSONL, CSV with the header as line 1) or ``file:row N`` (Parquet), the field and
what is wrong. With ``on_error="skip"`` bad rows (a bad value, a line that is not JSON, a duplicate
id) are skipped and every skip is recorded; errors about the file or the options still stop.

Text files are read in ``encoding`` (default ``auto``: UTF-8 / UTF-16 by their byte-order mark,
UTF-8 when the file decodes as UTF-8, else latin-1). A ``.tsv`` file is tab-separated, and so is a
``.csv`` file whose header line holds tabs and no commas (WANDS ships its files so).

Item metadata and query text may come from separate files joined on a key (``items`` /
``item_key`` / ``items_column_map``, ``queries`` / ``query_key`` / ``queries_column_map``, and an
attributes file in long format, ``attributes`` / ``attributes_key`` (default: ``item_key``) /
``attributes_column_map`` (``key``, ``name``, ``value``); the
rules are in :mod:`taosr.data.join`): fields in the pairs file win, the joined file fills in,
and every pair without a row (and every lookup row no pair joined) is counted in ``ReadResult.notes``.

A numeric label read without a label map (graded labels with ``label_thresholds``, or plain
numbers) is kept as ``Example.grade`` next to the tier.

:class:`ReaderSpec` is the one type for reader options: ``taosr data check`` fills it from its
flags, the DataModule's ``data.reader`` section is one (its ``path`` comes from
``data.train`` / ``data.val`` / ``data.test``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from taosr.data.join import (ATTRIBUTE_PREFIX, ITEM_DEFAULT_COLUMNS, ITEM_FIELDS, OPTIONAL_FIELDS, PACKED_ATTRIBUTES,
                             QUERY_DEFAULT_COLUMNS, Joiner, build_attribute_table, build_table, is_missing, item_fields,
                             mapped_column)
from taosr.errors import ConfigError, DataError
from taosr.labels import TIERS
from taosr.schema import (ALLOWED_QUERY_TYPES, AUTO_ENCODING, Example, check_data_file, check_encoding, check_unique_id,
                          decode_error, iter_jsonl_lines, resolve_encoding, validate_row)

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
TARGETS = ("id", "query", "label", "query_type") + ITEM_FIELDS + (PACKED_ATTRIBUTES,)
ITEMS_TARGETS = ("key",) + ITEM_FIELDS + (PACKED_ATTRIBUTES,)  # a products file's column map
QUERIES_TARGETS = ("key", "query", "query_type")                # a queries file's column map
ATTRIBUTES_TARGETS = ("key", "name", "value")                   # a long-format attributes file's column map


@dataclass
class ReaderSpec:
    """How a data file is read. ``path`` is the file (the DataModule sets it per split)."""
    path: str | None = None
    format: str | None = None
    encoding: str = "auto"
    column_map: dict[str, str] | None = None
    label_map: dict[str, int] | None = None
    label_thresholds: list[float] | None = None
    query_type: str | None = None
    on_error: str = "raise"
    limit: int | None = None
    items: str | None = None                        # a products file joined to the pairs on item_key
    item_key: str | None = None                     # the pairs file's column holding the product key
    items_column_map: dict[str, str] | None = None  # the products file's map (key=COL, item.title=COL ...)
    queries: str | None = None                      # a queries file joined to the pairs on query_key
    query_key: str | None = None                    # the pairs file's column holding the query key
    queries_column_map: dict[str, str] | None = None  # the queries file's map (key=COL, query=COL, query_type=COL)
    attributes: str | None = None                   # a long-format attributes file (product, name, value per row)
    attributes_key: str | None = None               # the pairs file's column holding its product key (default: item_key)
    attributes_column_map: dict[str, str] | None = None  # its map: key=COL name=COL value=COL (default name, value)

    def validate(self, option: Callable[[str], str] = lambda name: name) -> "ReaderSpec":
        """Check every option before any row is read; ``option(field)`` names it in errors (a
        config key such as ``data.reader.label_map`` or a flag such as ``--label-map``)."""
        if self.format is not None and self.format not in ("jsonl", "csv", "parquet"):
            raise ConfigError(f"{option('format')}: {self.format!r} is unknown; expected jsonl, csv or parquet")
        check_encoding(self.encoding, option("encoding"))
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"{option('on_error')}: must be 'raise' or 'skip', got {self.on_error!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ConfigError(f"{option('limit')}: must be at least 1 (or unset), got {self.limit!r}")
        if self.query_type is not None and self.query_type not in ALLOWED_QUERY_TYPES:
            raise ConfigError(f"{option('query_type')}: unknown query type {self.query_type!r}; "
                              f"expected one of {', '.join(ALLOWED_QUERY_TYPES)}")
        _check_map(self.column_map, TARGETS, True, option("column_map"))
        for file, key, cmap, targets, attrs, what in (
                ("items", "item_key", "items_column_map", ITEMS_TARGETS, True, "the product key"),
                ("queries", "query_key", "queries_column_map", QUERIES_TARGETS, False, "the query key")):
            path, key_col, m = getattr(self, file), getattr(self, key), getattr(self, cmap)
            if path is None:
                if key_col is not None or m is not None:
                    raise ConfigError(f"{option(key if key_col is not None else cmap)}: set only with "
                                      f"{option(file)} (the file to join)")
                continue
            if not isinstance(path, str) or not path.strip():
                raise ConfigError(f"{option(file)}: must be a file path, got {path!r}")
            if not isinstance(key_col, str) or not key_col.strip():
                raise ConfigError(f"{option(key)}: required with {option(file)}: the pairs file's column "
                                  f"holding {what}")
            _check_map(m, targets, attrs, option(cmap))
        if self.attributes is None:
            for name in ("attributes_key", "attributes_column_map"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{option(name)}: set only with {option('attributes')} (the file to join)")
        else:
            if not isinstance(self.attributes, str) or not self.attributes.strip():
                raise ConfigError(f"{option('attributes')}: must be a file path, got {self.attributes!r}")
            key_col = self.attributes_key if self.attributes_key is not None else self.item_key
            if not isinstance(key_col, str) or not key_col.strip():
                raise ConfigError(f"{option('attributes_key')}: required with {option('attributes')} (or "
                                  f"{option('item_key')}): the pairs file's column holding the product key")
            _check_map(self.attributes_column_map, ATTRIBUTES_TARGETS, False, option("attributes_column_map"))
        if self.label_map is not None and self.label_thresholds is not None:
            raise ConfigError(f"{option('label_map')}: set a label map or label thresholds, not both")
        if self.label_map is not None:
            if not self.label_map:
                raise ConfigError(f"{option('label_map')}: is empty")
            fixed = {}
            for raw, tier in self.label_map.items():
                fixed[str(raw)] = _tier(tier, f"{option('label_map')}: {raw}={tier}")
            self.label_map = fixed
        if self.label_thresholds is not None:
            t = list(self.label_thresholds)
            if len(t) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in t) \
                    or not t[0] < t[1] < t[2]:
                raise ConfigError(f"{option('label_thresholds')}: need three ascending finite thresholds t1 < t2 < t3, "
                                  f"got {self.label_thresholds!r}")
            self.label_thresholds = [float(x) for x in t]
        return self


def _check_map(cmap: Any, targets: tuple[str, ...], attributes: bool, name: str) -> None:
    """A column map's fields are known and each maps to a column name, or to none (``FIELD=``: left
    out) where the field is optional (:data:`taosr.data.join.OPTIONAL_FIELDS`)."""
    if cmap is None:
        return
    if not isinstance(cmap, dict):
        raise ConfigError(f"{name}: must be a map of FIELD=COLUMN, got {type(cmap).__name__}")
    for target, col in cmap.items():
        named_attr = attributes and isinstance(target, str) and target.startswith(ATTRIBUTE_PREFIX) \
            and len(target) > len(ATTRIBUTE_PREFIX)
        if target not in targets and not named_attr:
            extra = f" or {ATTRIBUTE_PREFIX}NAME" if attributes else ""
            raise ConfigError(f"{name}: {target!r} is not a field; expected one of {', '.join(targets)}{extra} "
                              "(FIELD=COLUMN)")
        if not isinstance(col, str) or (not col.strip() and target not in OPTIONAL_FIELDS):
            optional = ", ".join(t for t in OPTIONAL_FIELDS if t in targets)
            leave = f" (only {optional} may be left out, with FIELD= and no column)" if optional else ""
            raise ConfigError(f"{name}: {target!r} maps to no column{leave}")


def _tier(value: Any, what: str) -> int:
    """A tier 1-4 from an int or a numeric string ("4"); anything else is a ConfigError."""
    try:
        f = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        f = float("nan")
    if not math.isfinite(f) or not f.is_integer() or int(f) not in TIERS:
        raise ConfigError(f"{what}: a tier must be 1, 2, 3 or 4")
    return int(f)


@dataclass
class ReadResult:
    path: str
    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # other things counted and reported (not rows skipped)


def infer_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DataError(path, None, f"unknown file type {ext!r}; use .jsonl, .csv, .tsv or .parquet (or set format)")
    return FORMATS[ext]


_missing = is_missing


def map_label(raw: Any, spec: ReaderSpec, where: str, column: str) -> Any:
    if _missing(raw):
        raise DataError(where, column, "label is missing")
    if spec.label_map:
        key = str(raw).strip()
        if key not in spec.label_map:
            try:  # numeric cells read as floats: 1.0 -> "1"
                key = str(int(float(key))) if float(key).is_integer() else key
            except (ValueError, OverflowError):
                pass
        if key not in spec.label_map:
            raise DataError(where, column, f"unknown label {raw!r}; label_map knows {sorted(spec.label_map)}")
        return spec.label_map[key]
    if spec.label_thresholds:
        t = spec.label_thresholds
        try:
            x = float(raw)
        except (TypeError, ValueError):
            raise DataError(where, column, f"graded label {raw!r} is not a number") from None
        if not math.isfinite(x):  # "NaN" is an unlabelled pair, never tier 1
            raise DataError(where, column, f"graded label {raw!r} is missing or not a finite number")
        return 4 if x >= t[2] else 3 if x >= t[1] else 2 if x >= t[0] else 1
    return raw


def raw_grade(raw: Any, spec: ReaderSpec) -> float | None:
    """The numeric grade behind a label (``Example.grade``): the raw number when no label map is
    used (graded labels cut by ``label_thresholds``, or plain numbers); None otherwise."""
    if spec.label_map or isinstance(raw, bool) or _missing(raw):
        return None
    try:
        x = float(raw)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def flat_to_row(flat: dict[str, Any], spec: ReaderSpec, where: str, joiner: Joiner | None = None) -> dict[str, Any]:
    """Map one flat record to the nested schema dict (before validation), filling it from the
    products / queries files through ``joiner`` when given."""
    cmap = spec.column_map or {}
    row: dict[str, Any] = {}
    for target in ("id", "query", "query_type"):
        col = mapped_column(cmap, target, target)
        v = flat.get(col) if col is not None else None
        if not _missing(v):
            row[target] = v
    # the title not mapped: its dotted column (item.title), else `title`; other fields only by their dotted name
    row["item"] = item_fields(flat, cmap, where,
                              default=lambda t: "title" if t == "item.title" and t not in flat else t)
    raw = flat.get(cmap.get("label", "label"))
    row["label"] = map_label(raw, spec, where, cmap.get("label", "label"))
    grade = raw_grade(raw, spec)
    if grade is not None:
        row["grade"] = grade
    if joiner is not None:
        joiner.apply(row, flat, where)
    if spec.query_type and "query_type" not in row:
        row["query_type"] = spec.query_type
    return row


def _check_columns(columns: list[str], required: dict[str, str], path: str, unmapped: tuple[str, ...] = ()) -> None:
    """Every column in ``required`` (option -> column) is in the file, else one DataError naming both.
    ``unmapped``: the options in ``required`` read from a column of their default name (the error
    then says how to name another column)."""
    for target, col in required.items():
        if col in columns or (target in unmapped and _short(target) in columns):
            continue
        names = ', '.join(map(str, columns))
        if target in unmapped:
            alt = f" or {_short(target)!r}" if _short(target) != target else ""
            raise DataError(path, None, f"no column {col!r}{alt} for {target} (columns: {names}); name yours with "
                                        f"--column-map {target}=COLUMN (data.reader.column_map)")
        raise DataError(path, col, f"column mapped to {target!r} is not in the file; columns: {names}")


def read_parquet(path: str, keep: frozenset[str] | None = None):
    """``pandas.read_parquet`` with one-line errors for a file that is not Parquet; with ``keep``
    only those of its columns are read, and the file's whole header is ``df.attrs["header"]``."""
    import pandas as pd

    try:
        if keep is None:
            return pd.read_parquet(path)
        import pyarrow.parquet as pq

        header = list(pq.read_schema(path).names)
        df = pd.read_parquet(path, columns=[c for c in header if c in keep])
        df.attrs["header"] = header
        return df
    except (OSError, ValueError, ImportError) as e:  # pyarrow's ArrowInvalid is a ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(path, None, f"not a readable Parquet file ({first[:160]})") from None


def _csv_separator(path: str, encoding: str) -> str:
    """Tab for ``.tsv``, and for a ``.csv`` whose header line has tabs and no commas; else comma."""
    if path.lower().endswith(".tsv"):
        return "\t"
    try:
        with open(path, encoding=encoding, errors="replace") as fh:
            head = fh.readline()
    except OSError:
        return ","
    return "\t" if "\t" in head and "," not in head else ","


def _csv_header(names: list[str]) -> list[str]:
    """A CSV header's column names as pandas gives them: an empty name is ``Unnamed: N`` (its
    position), a repeated one ``NAME.1``, ``NAME.2`` ... (so no column hides another)."""
    out: list[str] = []
    for i, name in enumerate(names):
        name = name if name.strip() else f"Unnamed: {i}"
        base, n = name, 0
        while name in out:
            n += 1
            name = f"{base}.{n}"
        out.append(name)
    return out


def _csv_records(path: str, encoding: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """The header and the ``(file:line N, record)`` of every row, read with :mod:`csv`: ``N`` is the
    line each record starts on (blank lines and quoted fields that span lines counted), a row with
    more fields than the header is its DataError (raised or skipped and counted by the caller) unless
    the extra fields are empty (a trailing separator), a shorter one has empty fields, blank lines
    are no rows. A quoted field never closed (the rest of the file would be that field) is raised,
    naming its line. (pandas, read before, took a first row one field too long as an index column
    and shifted every column of the file by one, and counted lines without blank ones.)"""
    import csv
    import io
    import sys

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a product description may exceed the 128 KiB default
    sep = _csv_separator(path, encoding)
    try:
        with open(path, encoding=encoding, newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e, "line ") from None
    reader = csv.reader(io.StringIO(text), delimiter=sep, strict=False)
    out: list[tuple[str, Any]] = []
    try:
        first = next(reader, None)
        if first is None:
            raise DataError(path, None, "empty file: no header line and no rows")
        header = _csv_header(first)
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            where = f"{path}:line {start}"
            if not row:
                continue
            if len(row) > len(header):
                if any(f.strip() for f in row[len(header):]):
                    out.append((where, DataError(where, None, f"{len(row)} fields where the header has "
                                                              f"{len(header)} (a separator inside an unquoted "
                                                              "field?): not a row of this file")))
                    continue
                row = row[:len(header)]  # a trailing separator: its empty fields are no data
            out.append((where, {c: (row[i] if i < len(row) else "") for i, c in enumerate(header)}))
    except csv.Error as e:  # e.g. a NUL byte
        raise DataError(f"{path}:line {reader.line_num}", None, f"not valid CSV ({str(e)[:160]})") from None
    if out and isinstance(out[-1][1], dict) and any("\n" in str(v) for v in out[-1][1].values()):
        where = out[-1][0]  # the last record spans lines: is its quote ever closed?
        rest = "".join(text.splitlines(keepends=True)[int(where.rsplit(" ", 1)[1]) - 1:])
        try:
            list(csv.reader(io.StringIO(rest), delimiter=sep, strict=True))
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise DataError(where, None, "not valid CSV: a quoted field that starts here is never closed") from None
    return header, out


def iter_records(path: str, fmt: str, encoding: str, required: dict[str, str],
                 unmapped: tuple[str, ...] = (), keep: frozenset[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(``file:line N`` / ``file:row N``, flat record) of one file; the ``required`` columns
    (option -> column; ``unmapped``: see :func:`_check_columns`) are checked first: a CSV / Parquet
    file now, a JSONL file against its first object when it is read. With ``keep`` a record holds
    only those columns (a lookup file's unread columns, e.g. long bullet points, are never kept);
    ``columns`` is still the file's whole header."""
    if fmt == "jsonl":
        records = _jsonl_records(path, encoding, required, unmapped)
        return records if keep is None else ((w, _project(r, keep)) for w, r in records)
    if fmt == "csv":
        header, records = _csv_records(path, resolve_encoding(path, encoding))
        _check_columns(header, required, path, unmapped)
        if keep is not None:
            records = [(w, _project(r, keep)) for w, r in records]
        return _Records(iter(records), header)
    df = read_parquet(path, keep)
    header = df.attrs.get("header", list(df.columns))
    if keep is not None:
        df = df[[c for c in df.columns if c in keep]]
    _check_columns(header, required, path, unmapped)
    return _Records(((f"{path}:row {n + 1}", rec) for n, rec in enumerate(df.to_dict(orient="records"))), header)


def _project(rec: Any, keep: frozenset[str]) -> Any:
    """A record's ``keep`` columns (anything else, e.g. a row's DataError, as it is)."""
    return {k: v for k, v in rec.items() if k in keep} if isinstance(rec, dict) else rec


class _Records:
    """The records of a CSV / Parquet file, with its header (``columns``)."""

    def __init__(self, records: Iterator[tuple[str, Any]], columns: list[str]):
        self._records, self.columns = records, columns

    def __iter__(self):
        return self._records


def _jsonl_records(path: str, encoding: str, required: dict[str, str],
                   unmapped: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    checked = False
    for where, rec in iter_jsonl_lines(path, encoding):
        if not checked and isinstance(rec, dict):
            _check_columns(list(rec), required, path, unmapped)
            checked = True
        yield where, rec


def _pairs_required(spec: ReaderSpec, header: bool = True) -> tuple[dict[str, str], tuple[str, ...]]:
    """The pairs file's required columns (option -> column) and the options among them read from
    a column of their default name: the label always, the query unless a queries file gives it,
    the title unless a products file may (checked against that file by :func:`_check_title_source`)."""
    cmap = spec.column_map or {}
    req = {t: c for t, c in cmap.items() if mapped_column(cmap, t, t) is not None}  # FIELD= is no column
    for name in ("item_key", "query_key", "attributes_key"):
        if getattr(spec, name) is not None:
            req[name] = getattr(spec, name)
    if not header:  # JSONL rows may each leave keys out: only the mapped columns are checked (on the first row)
        return req, ()
    needed = ["label"] + (["query"] if spec.queries is None else []) + (["item.title"] if spec.items is None else [])
    unmapped = tuple(t for t in needed if t not in cmap)
    for t in unmapped:
        req[t] = t  # a flat pairs file's default column is the field's dotted name (item.title)
    return req, unmapped


def _short(target: str) -> str:
    """``item.title`` -> ``title``: the column a flat file may name an item field by."""
    return target[5:] if target.startswith("item.") else target


def _check_title_source(spec: ReaderSpec, pairs_columns: list[str] | None, joiner: Joiner | None) -> None:
    """With a products file and no title column in the pairs file, the products file must have one."""
    if joiner is None or joiner.items is None or pairs_columns is None or infer_format(spec.items) == "jsonl":
        return  # a JSONL products file has no header: its rows may each leave keys out
    cmap = spec.column_map or {}
    if cmap.get("item.title", "item.title") in pairs_columns or ("item.title" not in cmap and "title" in pairs_columns):
        return
    col = joiner.items_map.get("item.title", ITEM_DEFAULT_COLUMNS["item.title"])
    table = joiner.items.table
    first = next(iter(table.rows.values()), None)
    if first is not None and col not in first[1]:
        raise DataError(spec.items, None, f"no column {col!r} for item.title in the products file (columns: "
                                          f"{', '.join(map(str, table.columns or first[1]))}) nor in {spec.path}; name it with "
                                          f"--items-column-map item.title=COLUMN (data.reader.items_column_map)")


def read_table(path: str, key_column: str, cmap: dict[str, str] | None, encoding: str = "auto",
               on_error: str = "raise", defaults: dict[str, str] | None = None):
    """A products / queries file read into a :class:`taosr.data.join.Table` keyed by ``key_column``
    (the map's ``key`` column, else the pairs file's key name); the mapped columns must exist.
    With ``defaults`` (field -> the column an unmapped field is read from) a row keeps only the
    columns a join reads: the key, the mapped columns and the defaults of unmapped fields.

    A file is parsed once per process for the same options while it is unchanged (size and
    modification time): the train, val and test splits of a DataModule join the same products
    file. Each call gets its own ``used`` set, so every split's join counts are its own."""
    check_data_file(path)
    cmap = cmap or {}
    key_col = cmap.get("key", key_column)
    required = tuple(sorted({"key": key_col, **{t: c for t, c in cmap.items()
                                                if t != "key" and mapped_column(cmap, t, t) is not None}}.items()))
    keep = None if defaults is None else frozenset(
        {c for _, c in required} | {c for t, c in defaults.items() if t not in cmap})
    st = os.stat(path)
    table = _parsed_table(path, st.st_size, st.st_mtime_ns, key_col, required, encoding, on_error, keep)
    return dataclasses.replace(table, used=set())


@functools.lru_cache(maxsize=4)
def _parsed_table(path: str, size: int, mtime_ns: int, key_col: str, required: tuple, encoding: str, on_error: str,
                  keep: frozenset[str] | None = None):
    return build_table(iter_records(path, infer_format(path), encoding, dict(required), keep=keep), path, key_col,
                       on_error)


def read_attribute_table(path: str, key_column: str, cmap: dict[str, str] | None, encoding: str = "auto",
                         on_error: str = "raise"):
    """A long-format attributes file read into ``key -> {name: value}`` (:func:`taosr.data.join.build_attribute_table`):
    its columns are the map's ``key`` (else the pairs file's key name), ``name`` and ``value``
    (else ``name`` and ``value``). Parsed once per process while unchanged, as :func:`read_table`."""
    check_data_file(path)
    cmap = cmap or {}
    cols = (cmap.get("key", key_column), cmap.get("name", "name"), cmap.get("value", "value"))
    st = os.stat(path)
    table = _parsed_attribute_table(path, st.st_size, st.st_mtime_ns, cols, encoding, on_error)
    return dataclasses.replace(table, used=set())


@functools.lru_cache(maxsize=2)
def _parsed_attribute_table(path: str, size: int, mtime_ns: int, cols: tuple[str, str, str], encoding: str, on_error: str):
    required = dict(zip(("key", "name", "value"), cols))
    return build_attribute_table(iter_records(path, infer_format(path), encoding, required, keep=frozenset(cols)),
                                 path, *cols, on_error=on_error)


def make_joiner(spec: ReaderSpec) -> Joiner | None:
    """The :class:`Joiner` of ``spec``'s products, queries and attributes files (None when it joins none)."""
    if spec.items is None and spec.queries is None and spec.attributes is None:
        return None
    items = queries = attributes = None
    if spec.items is not None:
        items = read_table(spec.items, spec.item_key, spec.items_column_map, spec.encoding, spec.on_error,
                           ITEM_DEFAULT_COLUMNS)
    if spec.queries is not None:
        queries = read_table(spec.queries, spec.query_key, spec.queries_column_map, spec.encoding, spec.on_error,
                             QUERY_DEFAULT_COLUMNS)
    attributes_key = spec.attributes_key or spec.item_key
    if spec.attributes is not None:
        attributes = read_attribute_table(spec.attributes, attributes_key, spec.attributes_column_map, spec.encoding,
                                          spec.on_error)
    return Joiner(items, spec.item_key, spec.items_column_map, queries, spec.query_key, spec.queries_column_map,
                  attributes, attributes_key)


def _label_kind(v: Any) -> str | None:
    if _missing(v):
        return None
    try:
        float(v)
        return "numeric"
    except (TypeError, ValueError):
        return "text"


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while rows are read: each row allocates many objects and none
    form cycles, yet the collector's full passes took a third of a 200k-row read's CPU time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_examples(spec: ReaderSpec) -> ReadResult:
    spec.validate()
    if spec.path is None:
        raise ConfigError("reader: no path given")
    check_data_file(spec.path)
    fmt = spec.format or infer_format(spec.path)
    plain = fmt == "jsonl" and not spec.column_map and not spec.label_map and not spec.label_thresholds \
        and spec.items is None and spec.queries is None and spec.attributes is None
    required, unmapped = ({}, ()) if plain else _pairs_required(spec, header=fmt != "jsonl")
    # a text file's encoding is detected once here (a full read) and given to the reader as chosen
    encoding = resolve_encoding(spec.path, spec.encoding) if fmt != "parquet" else spec.encoding
    records = iter_records(spec.path, fmt, encoding, required, unmapped)
    joiner = make_joiner(spec)  # after the pairs file's columns were checked (CSV / Parquet)
    columns = getattr(records, "columns", None)
    _check_title_source(spec, columns, joiner)
    flat_keys: dict = {}  # a JSONL file's "columns": the keys of its flat rows, in order
    with _collector_paused():
        res = read_records(records, spec, plain=plain, joiner=joiner, flat_keys=flat_keys)
    if encoding == "latin-1" and check_encoding(spec.encoding) == AUTO_ENCODING:
        res.notes.append(f"{spec.path} is not UTF-8: read as latin-1 (--encoding / data.reader.encoding chooses another)")
    if columns is None:  # JSONL: the keys of its flat rows (a nested row's unknown field is an error)
        columns = list(flat_keys)
    unread = _unread_columns(columns, spec, required)
    if unread:
        cmap = spec.column_map or {}  # `brand` for item.brand (only the title has a short name), where not mapped
        short = [c for c in unread if f"item.{c}" in ITEM_FIELDS and f"item.{c}" not in cmap]
        example = f"item.{short[0]}={short[0]}" if short else "item.attributes.NAME=COLUMN"
        res.notes.append(f"{len(unread)} column{'s' if len(unread) > 1 else ''} of {spec.path} "
                         f"{'are' if len(unread) > 1 else 'is'} not read: {', '.join(map(str, unread))} "
                         f"(map one with --column-map FIELD=COLUMN, e.g. {example})")
    return res


def _unread_columns(columns: list, spec: ReaderSpec, required: dict[str, str]) -> list:
    """The pairs file's columns that neither the column map, the join keys nor a default field name reads."""
    read = {"id", "query", "query_type", "label", "title", PACKED_ATTRIBUTES, *ITEM_FIELDS, *required.values()}
    return [c for c in columns if c not in read and not str(c).startswith(ATTRIBUTE_PREFIX)]


def read_records(records: Iterator[tuple[str, Any]], spec: ReaderSpec, plain: bool = False,
                 joiner: Joiner | None = None, flat_keys: dict | None = None) -> ReadResult:
    """Examples from ``(where, record)`` pairs of the pairs file ``spec.path``: nested rows as they
    are (``plain``), else flat records mapped by ``spec`` and joined by ``joiner``. Bad rows raise,
    or with ``on_error="skip"`` are skipped and counted; the join's counts go to ``notes``.
    ``flat_keys`` collects the keys of the flat (not nested) rows, in order."""
    res = ReadResult(path=spec.path)
    label_col = (spec.column_map or {}).get("label", "label")
    # hash of the casefolded (query, title) -> (where, label) of its first row: a 64-bit hash, not copies of
    # every text (~375 MB at 1M rows); a collision would only miscount a repeat (p ~ n^2 / 2^65)
    seen_pairs: dict[int, tuple[str, int]] = {}
    repeats, conflicts = 0, []
    first_of_kind: dict[str, tuple[str, Any]] = {}  # numeric / text -> (where, raw label): mixed columns
    ids: dict[str, str] = {}
    for where, raw in records:
        if spec.limit and len(res.examples) >= spec.limit:
            break
        try:
            if isinstance(raw, DataError):  # a line that is not JSON
                raise raw
            if isinstance(raw, dict):
                kind = _label_kind(raw.get(label_col))
                if kind is not None:
                    first_of_kind.setdefault(kind, (where, raw.get(label_col)))
            if flat_keys is not None and isinstance(raw, dict) and "item" not in raw:
                flat_keys.update(dict.fromkeys(raw))
            if plain and isinstance(raw, dict) and "item" not in raw:
                ex = validate_row(flat_to_row(raw, spec, where, joiner), where)  # a flat JSONL row: columns by name
            elif plain:
                if spec.query_type and isinstance(raw, dict) and "query_type" not in raw:
                    raw = {**raw, "query_type": spec.query_type}
                ex = validate_row(raw, where)
            else:
                if not isinstance(raw, dict):
                    raise DataError(where, None, "row must be an object")
                if isinstance(raw.get("item"), dict):  # a taosr row: its steps, grade ... would be lost
                    raise DataError(spec.path, "item", f"{where} is a taosr row (nested item), read as it is: "
                                                       "drop the column map, label map and joins for this file")
                ex = validate_row(flat_to_row(raw, spec, where, joiner), where)
            check_unique_id(ex, where, ids)
            pair = hash((ex.query.casefold(), ex.item.title.casefold()))
            if pair in seen_pairs:
                repeats += 1
                if seen_pairs[pair][1] != ex.label:
                    conflicts.append(f"{where} says {ex.label}, {seen_pairs[pair][0]} said {seen_pairs[pair][1]}")
            else:
                seen_pairs[pair] = (where, ex.label)
        except DataError as e:
            if e.where == spec.path:  # the file or its columns, not a row: skipping cannot help
                raise
            e = _with_mixed_hint(e, label_col, first_of_kind, spec)
            if spec.on_error == "raise":
                raise e from None
            res.skipped.append(str(e))
            continue
        res.examples.append(ex)
    if joiner is not None:
        res.notes.extend(joiner.notes())
    if repeats:
        res.notes.append(f"{repeats} rows repeat an earlier row's query and item title, {len(conflicts)} of them with "
                         f"another label" + (f" (first: {conflicts[0]})" if conflicts else ""))
    return res


def _with_mixed_hint(e: DataError, label_col: str, first_of_kind: dict[str, tuple[str, Any]],
                     spec: ReaderSpec) -> DataError:
    """A label error in a column that holds both numbers and text says so where a label map or
    thresholds read one kind only (without them tier numbers and tier names mix freely, and the
    hint pointed away from the fault: `04`, ` EXCELLENT `, an empty label)."""
    if e.field != label_col or len(first_of_kind) < 2 or not (spec.label_map or spec.label_thresholds) \
            or "label is missing" in e.message:
        return e
    (w1, v1), (w2, v2) = first_of_kind["numeric"], first_of_kind["text"]
    return DataError(e.where, e.field, f"{e.message} (the column mixes numeric and text labels: "
                                       f"{v1!r} at {w1}, {v2!r} at {w2}; use one kind, or a label map covering both)")


def load_examples(path_or_spec: str | ReaderSpec) -> list[Example]:
    spec = path_or_spec if isinstance(path_or_spec, ReaderSpec) else ReaderSpec(path=path_or_spec)
    return read_examples(spec).examples
