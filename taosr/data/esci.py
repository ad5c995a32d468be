"""Adapter for the Amazon Shopping Queries dataset (ESCI; github.com/amazon-science/esci-data).

Users download ``shopping_queries_dataset_examples.parquet`` and
``shopping_queries_dataset_products.parquet`` themselves. The products of the chosen locale are
joined to its examples on product_id by :mod:`taosr.data.join` (so missing products and products
no example uses are counted the same way as for any products file); E/S/C/I become tiers 4/3/2/1;
title, brand and colour fill the item.
ESCI has no query types or gold steps: query_type is ``other``.
"""
from __future__ import annotations

from taosr.data.join import Joiner, build_table, is_missing
from taosr.data.readers import ReaderSpec, ReadResult, read_parquet, read_records
from taosr.errors import DataError
from taosr.schema import check_data_file, write_jsonl

ESCI_LABEL_MAP = {"E": 4, "S": 3, "C": 2, "I": 1}
EXAMPLE_COLUMNS = ("example_id", "query", "product_id", "product_locale", "esci_label", "split")
PRODUCT_COLUMNS = ("product_id", "product_title", "product_brand", "product_color", "product_locale")
# how an ESCI pair and its product fill the schema (the generic join of taosr.data.join)
PAIRS_MAP = {"id": "example_id", "query": "query", "label": "esci_label"}
PRODUCTS_MAP = {"key": "product_id", "item.title": "product_title", "item.brand": "product_brand",
                "item.attributes.color": "product_color"}


def _read(path: str, needed: tuple[str, ...], optional: tuple[str, ...] = ()):
    check_data_file(path)
    df = read_parquet(path, frozenset(needed + optional))  # only the columns used: not the products' descriptions
    header = df.attrs["header"]
    for c in needed:
        if c not in header:
            raise DataError(path, c, f"column missing; columns: {', '.join(map(str, header))}")
    return df


def read_esci(examples_path: str, products_path: str, *, locale: str = "us", split: str = "train",
              small_version: bool = True, limit: int | None = None, on_error: str = "raise") -> ReadResult:
    """The pairs of one locale and split, joined with that locale's products on ``product_id``
    (the products file filtered by locale, then the generic join)."""
    if on_error not in ("raise", "skip"):
        raise DataError(examples_path, "on_error", f"must be 'raise' or 'skip', got {on_error!r}")
    ex = _read(examples_path, EXAMPLE_COLUMNS, ("small_version",))
    pr = _read(products_path, PRODUCT_COLUMNS)
    ex = ex.reset_index(drop=True)
    ex["_row"] = ex.index + 1
    sel = (ex["product_locale"] == locale) & (ex["split"] == split)
    if small_version and "small_version" in ex.columns:
        sel &= ex["small_version"] == 1
    ex = ex[sel]
    no_locale = []  # a product row without its locale joins no example: counted, reported

    def products():
        for n, r in enumerate(pr.to_dict(orient="records"), 1):
            where = f"{products_path}:row {n}"
            if is_missing(r["product_locale"]):
                if on_error == "raise":
                    raise DataError(where, "product_locale", "is missing (the join key of the products file)")
                no_locale.append(where)
            elif r["product_locale"] == locale:
                yield where, r

    table = build_table(products(), products_path, "product_id", on_error)
    spec = ReaderSpec(path=examples_path, column_map=PAIRS_MAP, label_map=ESCI_LABEL_MAP, query_type="other",
                      on_error=on_error, limit=limit, items=products_path, item_key="product_id",
                      items_column_map=PRODUCTS_MAP).validate()
    joiner = Joiner(table, spec.item_key, spec.items_column_map)
    pairs = ((f"{examples_path}:row {r['_row']}", r) for r in ex.to_dict(orient="records"))
    res = read_records(pairs, spec, joiner=joiner)
    if no_locale:
        res.notes.insert(0, f"ignored {len(no_locale)} product rows of {products_path} without product_locale "
                            f"(first: {no_locale[0]})")
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
