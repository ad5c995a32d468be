"""`taosr data split`: one labelled file into train / val / test JSONL split by query, so no query's
pairs are on both sides of a split (what `taosr data check --against` checks afterwards): the
figures of a test set whose queries the model trained on are not held out."""
from __future__ import annotations

import os
import random

from taosr.data.check import format_summary, read_valid, summarize, write_skipped
from taosr.errors import TaosrError
from taosr.schema import write_jsonl

SPLITS = ("train", "val", "test")


def query_key(query: str) -> str:
    """Queries that differ only in case or surrounding spaces are one query (as the overlap check reads them)."""
    return query.strip().casefold()


def split_by_query(examples: list, val: float, test: float, seed: int = 0) -> dict[str, list]:
    """``{train, val, test}``: the distinct queries (in order of first appearance) shuffled with
    ``seed``; the first ``round(test * n)`` go to test, the next ``round(val * n)`` to val, the rest
    to train, each example with its query; a nonzero share gets at least one query. Examples keep
    their order within a split. Raises TaosrError when the shares are out of range or there are too
    few distinct queries to give every split asked for one."""
    for flag, share in (("--val", val), ("--test", test)):
        if not 0.0 <= share < 1.0:
            raise TaosrError(f"{flag}: a share of the queries in [0, 1), got {share}")
    if val + test >= 1.0:
        raise TaosrError(f"--val {val} and --test {test} leave no queries for training (their sum must be below 1)")
    queries = list(dict.fromkeys(query_key(e.query) for e in examples))
    wanted = 1 + (val > 0) + (test > 0)
    if len(queries) < wanted:
        raise TaosrError(f"{len(queries)} distinct queries cannot be split {wanted} ways: each split needs a query of its own")
    random.Random(seed).shuffle(queries)
    n_test = max(1, round(test * len(queries))) if test > 0 else 0
    n_val = max(1, round(val * len(queries))) if val > 0 else 0
    n_test = min(n_test, len(queries) - 1 - (val > 0))  # at least one query for train (and for val if asked)
    n_val = min(n_val, len(queries) - 1 - n_test)
    where = {q: "test" for q in queries[:n_test]}
    where.update({q: "val" for q in queries[n_test:n_test + n_val]})
    out: dict[str, list] = {s: [] for s in SPLITS}
    for e in examples:
        out[where.get(query_key(e.query), "train")].append(e)
    return out


def split_file(spec, out_dir: str, val: float, test: float, seed: int = 0) -> str:
    """Read ``spec`` (joins applied) and write ``out_dir/{train,val,test}.jsonl`` split by query (a
    split with a zero share is not written); rows skipped with ``--skip-invalid`` are listed in
    ``out_dir/split.skipped.txt``. Returns what was written, split by split."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TaosrError(f"--out: {out_dir} is a file; give a directory")
    res = read_valid(spec)
    parts = split_by_query(res.examples, val, test, seed)
    lines = [format_summary(summarize(res.examples), res.skipped, spec.path, res.notes)]
    for name in SPLITS:
        if name != "train" and not (val if name == "val" else test):
            continue
        path = os.path.join(out_dir, f"{name}.jsonl")
        n = write_jsonl(path, parts[name])
        queries = len({query_key(e.query) for e in parts[name]})
        tiers = " ".join(f"{t}:{sum(e.label == t for e in parts[name])}" for t in (4, 3, 2, 1))
        lines.append(f"wrote {n:6d} examples of {queries} queries to {path} (tiers {tiers})")
    listing = write_skipped(os.path.join(out_dir, "split"), res.skipped)
    if listing:
        lines.append(f"the {len(res.skipped)} skipped rows and why: {listing}")
    return "\n".join(lines)
