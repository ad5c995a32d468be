"""`taosr data check`: validate a file (joined with its products / queries files) and summarise it
per tier and query type, with the join counts. `taosr data convert` writes what it read as taosr
JSONL (joins applied, raw grades kept), the form `taosr reason`'s output and the configs share."""
from __future__ import annotations

import os
from collections import Counter

from taosr.data.readers import ReaderSpec, read_examples
from taosr.errors import DataError
from taosr.schema import write_jsonl
from taosr.labels import TIER_NAMES


ITEM_OPTIONAL = ("brand", "category", "attributes", "price", "description")


def _present(v) -> bool:
    return v is not None and v != "" and v != {}


def summarize(examples) -> dict:
    return {
        "total": len(examples),
        "tiers": {t: sum(e.label == t for e in examples) for t in (4, 3, 2, 1)},
        "query_types": dict(sorted(Counter(e.query_type for e in examples).items())),
        "with_steps": sum(bool(e.steps) for e in examples),
        "with_annotations": sum(bool(e.annotations) for e in examples),
        "distinct_queries": len({e.query for e in examples}),
        # how many items carry each optional field: a model trained where every item had a price writes
        # another format for items without one (the README's "Items without a price")
        "item_fields": {f: sum(_present(getattr(e.item, f)) for e in examples) for f in ITEM_OPTIONAL},
    }


def format_summary(s: dict, skipped: list[str] | None = None, path: str = "", notes: list[str] | None = None) -> str:
    lines = [f"{path}: {s['total']} examples OK, {s['distinct_queries']} distinct queries, "
             f"{s['with_steps']} with gold steps, {s['with_annotations']} with step annotations"]
    lines.append("tier            count   share")
    for t, n in s["tiers"].items():
        lines.append(f"  {t} {TIER_NAMES[t]:<11} {n:6d}  {n / max(s['total'], 1):6.1%}")
    lines.append("query type      count   share")
    for qt, n in s["query_types"].items():
        lines.append(f"  {qt:<13} {n:6d}  {n / max(s['total'], 1):6.1%}")
    lines.append("item field      count   share")
    for f, n in s["item_fields"].items():
        lines.append(f"  {f:<13} {n:6d}  {n / max(s['total'], 1):6.1%}")
    if skipped:
        lines.append(f"skipped {len(skipped)} bad rows (first: {skipped[0]})")
    lines.extend(notes or [])  # join counts: pairs without a product / query row, rows no pair joined
    return "\n".join(lines)


def overlap(train, other) -> dict:
    """How much of ``other`` (a validation or test set) the training examples already hold: shared
    queries and shared (query, title) pairs, compared case-insensitively."""
    # the (smaller) other side's keys, casefolded once; the training examples are streamed past them
    keys = [(e.query.casefold(), e.item.title.casefold()) for e in other]
    other_queries, other_pairs = {q for q, _ in keys}, set(keys)
    queries, pairs = set(), set()
    for e in train:
        q = e.query.casefold()
        if q in other_queries:
            queries.add(q)
            pair = (q, e.item.title.casefold())
            if pair in other_pairs:
                pairs.add(pair)
    return {"queries": len(queries), "of_queries": len(other_queries),
            "pairs": sum(k in pairs for k in keys), "of_pairs": len(other)}


def format_overlap(o: dict, other: str, train: str) -> str:
    text = (f"{o['queries']} of {o['of_queries']} queries of {other} ({o['pairs']} of {o['of_pairs']} pairs) "
            f"also occur in {train}")
    if o["queries"]:
        text += ": its figures are not held out (split by query)"
    return text


def read_valid(spec: ReaderSpec):
    res = read_examples(spec)
    if not res.examples:
        if res.skipped:
            raise DataError(spec.path, None, f"no valid examples: all {len(res.skipped)} rows were skipped "
                                             f"(first: {res.skipped[0]})")
        raise DataError(spec.path, None, "no examples (the file is empty or holds only a header)")
    return res


def check_file(spec: ReaderSpec, against: str | None = None) -> str:
    """The file's summary; ``against``: a validation or test file (read with the same reader
    options) whose queries and pairs are looked up in this one."""
    import dataclasses

    res = read_valid(spec)
    text = format_summary(summarize(res.examples), res.skipped, spec.path, res.notes)
    if against:
        other = read_valid(dataclasses.replace(spec, path=against, limit=None))
        text += "\n" + format_overlap(overlap(res.examples, other.examples), against, spec.path)
    return text


def convert_file(spec: ReaderSpec, out: str) -> str:
    """Read ``spec`` and write its examples to ``out`` (taosr JSONL, written atomically); rows skipped
    with ``on_error: skip`` are listed with their reasons in ``out.skipped.txt``. Returns the summary."""
    res = read_valid(spec)
    n = write_jsonl(out, res.examples)
    lines = [format_summary(summarize(res.examples), res.skipped, spec.path, res.notes), f"wrote {n} examples to {out}"]
    listing = write_skipped(out, res.skipped)
    if listing:
        lines.append(f"the {len(res.skipped)} skipped rows and why: {listing}")
    return "\n".join(lines)


def write_skipped(out: str, skipped: list[str]) -> str | None:
    """List the rows skipped on the way to ``out`` (one reason per line) in ``out.skipped.txt``,
    written atomically; an earlier run's listing is removed when nothing was skipped. Returns its path."""
    listing = out + ".skipped.txt"
    if not skipped:
        if os.path.exists(listing):  # it no longer describes OUT
            os.remove(listing)
        return None
    tmp = f"{listing}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(skipped) + "\n")
    os.replace(tmp, listing)
    return listing
