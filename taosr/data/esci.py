"""Adapter for the Amazon Shopping Queries dataset (ESCI; github.com/amazon-science/esci-data).

Users download ``shopping_queries_dataset_examples.parquet`` and
``shopping_queries_dataset_products.parquet`` themselves. Examples are joined with products on
(product_id, product_locale); E/S/C/I become tiers 4/3/2/1; title, brand and colour fill the item.
ESCI has no query types or gold steps: query_type is ``other``.
"""
from __future__ import annotations

from taosr.data.readers import ReadResult, _missing, read_parquet
from taosr.schema import check_data_file, check_unique_id, validate_row, write_jsonl
from taosr.errors import DataError

ESCI_LABEL_MAP = {"E": 4, "S": 3, "C": 2, "I": 1}
EXAMPLE_COLUMNS = ("example_id", "query", "product_id", "product_locale", "esci_label", "split")
PRODUCT_COLUMNS = ("product_id", "product_title", "product_brand", "product_color", "product_locale")


def _read(path: str, needed: tuple[str, ...]):
    check_data_file(path)
    df = read_parquet(path)
    for c in needed:
        if c not in df.columns:
            raise DataError(path, c, f"column missing; columns: {', '.join(map(str, df.columns))}")
    return df


def read_esci(examples_path: str, products_path: str, *, locale: str = "us", split: str = "train",
              small_version: bool = True, limit: int | None = None, on_error: str = "raise") -> ReadResult:
    ex = _read(examples_path, EXAMPLE_COLUMNS)
    pr = _read(products_path, PRODUCT_COLUMNS)
    ex = ex.reset_index(drop=True)
    ex["_row"] = ex.index + 1
    sel = (ex["product_locale"] == locale) & (ex["split"] == split)
    if small_version and "small_version" in ex.columns:
        sel &= ex["small_version"] == 1
    ex = ex[sel]
    if on_error not in ("raise", "skip"):
        raise DataError(examples_path, "on_error", f"must be 'raise' or 'skip', got {on_error!r}")
    products, keyless = {}, 0
    for n, r in enumerate(pr.to_dict(orient="records"), 1):
        if _missing(r["product_id"]) or _missing(r["product_locale"]):
            keyless += 1  # a product row without its key joins no example: counted, reported
            if on_error == "raise":
                raise DataError(f"{products_path}:row {n}", "product_id" if _missing(r["product_id"]) else "product_locale",
                                "is missing (the join key of the products file)")
            continue
        products[(r["product_id"], r["product_locale"])] = r
    res = ReadResult(path=examples_path)
    if keyless:
        res.notes.append(f"ignored {keyless} product rows of {products_path} without product_id/product_locale")
    ids: dict[str, str] = {}
    for r in ex.to_dict(orient="records"):
        if limit and len(res.examples) >= limit:
            break
        where = f"{examples_path}:row {r['_row']}"
        try:
            p = products.get((r["product_id"], r["product_locale"]))
            if p is None:
                raise DataError(where, "product_id", f"product {r['product_id']!r} ({r['product_locale']}) not in {products_path}")
            lab = str(r["esci_label"]).strip()
            if lab not in ESCI_LABEL_MAP:
                raise DataError(where, "esci_label", f"unknown label {r['esci_label']!r}; expected E, S, C or I")
            item = {"title": None if _missing(p["product_title"]) else str(p["product_title"])}
            if not _missing(p["product_brand"]):
                item["brand"] = str(p["product_brand"])
            if not _missing(p["product_color"]):
                item["attributes"] = {"color": str(p["product_color"])}
            row = {"id": str(r["example_id"]), "query": r["query"], "item": item,
                   "label": ESCI_LABEL_MAP[lab], "query_type": "other"}
            example = validate_row(row, where)
            check_unique_id(example, where, ids)
            res.examples.append(example)
        except DataError as e:
            if on_error == "raise":
                raise
            res.skipped.append(str(e))
    return res


def esci_to_jsonl(examples_path: str, products_path: str, out_path: str, **kwargs) -> str:
    res = read_esci(examples_path, products_path, **kwargs)
    n = write_jsonl(out_path, res.examples)
    msg = f"wrote {n} examples to {out_path}"
    if res.skipped:
        msg += f"; skipped {len(res.skipped)} (first: {res.skipped[0]})"
    for note in res.notes:
        msg += f"; {note}"
    return msg
