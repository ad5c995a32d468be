"""Bad inputs to the data layer (data files, readers, `taosr data ...`, `taosr sample`), table-driven.

Each refused case: exit status 2, exactly one line on stderr (``taosr: error: ...``) naming the
file/line/field or the option, no traceback, and no output file (or half-written one) left behind.
Each handled case (formerly a traceback or a silently wrong result): exit 0 and the right result.
The CLI runs in-process (``taosr.cli.main``); two cases run it as a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import pytest

from taosr.cli import main
from taosr.data.datamodule import RelevanceDataModule  # imports Lightning (and its log handler) at collection
from taosr.data.readers import ReaderSpec
from taosr.data.synth import SynthConfig
from taosr.errors import ConfigError
from tests.conftest import ROOT

ROW = {"query": "red shoes", "item": {"title": "Red Running Shoes"}, "label": 4}


# ----------------------------------------------------------------------------- file builders
def jsonl(tmp, name, rows, raw_lines=()):
    p = tmp / name
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    p.write_text("".join(line + "\n" for line in lines))
    return str(p)


def text(tmp, name, content, encoding="utf-8"):
    p = tmp / name
    p.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return str(p)


def graded_csv(tmp, grades, name="graded.csv", encoding="utf-8"):
    body = "query,title,grade\n" + "".join(f"query {i},Title {i},{g}\n" for i, g in enumerate(grades))
    return text(tmp, name, body, encoding)


def esci_files(tmp, products_extra=None):
    ex = pd.DataFrame({"example_id": [1, 2, 3], "query": ["shoes", "shoes", "bag"], "product_id": ["P1", "P2", "P9"],
                       "product_locale": ["us", "us", "us"], "esci_label": ["E", "C", "I"],
                       "small_version": [1, 1, 1], "split": ["train", "train", "train"]})
    pr = pd.DataFrame({"product_id": ["P1", "P2"], "product_title": ["Running Shoes", "Shoe Laces"],
                       "product_brand": ["Nike", None], "product_color": ["Red", None], "product_locale": ["us", "us"]})
    if products_extra is not None:
        pr = pd.concat([pr, pd.DataFrame(products_extra)], ignore_index=True)
    ex.to_parquet(tmp / "examples.parquet")
    pr.to_parquet(tmp / "products.parquet")
    return str(tmp / "examples.parquet"), str(tmp / "products.parquet")


def joined_files(tmp, products_body="pid,title,brand\nP1,Running Shoes,Nike\nP2,Laces,\nP3,Unused Sock,\n"):
    """pairs.csv (keys only, one pair with its own title) + products.csv."""
    pairs = text(tmp, "pairs.csv", "query,pid,title,label\nshoes,P1,,4\nlaces,P2,,2\nbag,P404,Own Bag,1\n")
    return pairs, text(tmp, "products.csv", products_body)


def _latin1_csv(t):
    return text(t, "l.csv", "query,title,label\ncaf\xe9 chair,Caf\xe9 Chair \xc9l\xe9gant,4\nsofa,Sofa,3\n", "latin-1")


GRADED = ["--column-map", "item.title=title", "label=grade", "--label-thresholds", "1", "2", "3"]


# ----------------------------------------------------------------------------- refused: exit 2, one line
@dataclass
class Refused:
    id: str
    args: Callable  # tmp_path -> argv
    needles: tuple[str, ...]
    outputs: tuple[str, ...] = ()  # files (relative to tmp_path) that must not exist afterwards


REFUSED = [
    # --- files that cannot be read
    Refused("parquet-not-parquet", lambda t: ["data", "check", text(t, "d.parquet", "not parquet at all")],
            ("d.parquet", "not a readable Parquet file")),
    Refused("empty-csv", lambda t: ["data", "check", text(t, "e.csv", "")], ("e.csv", "empty file")),
    Refused("directory-as-data-file", lambda t: ["data", "check", str((t / "dir.jsonl").mkdir() or t / "dir.jsonl")],
            ("dir.jsonl", "is a directory")),
    Refused("header-only-csv", lambda t: ["data", "check", text(t, "h.csv", "query,title,label\n")],
            ("h.csv", "no examples")),
    Refused("empty-jsonl", lambda t: ["data", "check", text(t, "e.jsonl", "")], ("e.jsonl", "no examples")),
    Refused("blank-lines-jsonl", lambda t: ["data", "check", text(t, "b.jsonl", "\n  \n\n")], ("b.jsonl", "no examples")),
    Refused("missing-file", lambda t: ["data", "check", str(t / "nope.csv")], ("nope.csv", "file not found")),
    Refused("json-array", lambda t: ["data", "check", text(t, "a.json", '[{"query": "q", "item": {"title": "T"}, "label": 4}]\n')],
            ("a.json:1", "got list", "JSON Lines")),
    Refused("unknown-extension", lambda t: ["data", "check", text(t, "d.xlsx", "x")], ("d.xlsx", "unknown file type")),
    Refused("csv-bad-quoting", lambda t: ["data", "check", text(t, "q.csv", 'query,title,label\na,"b,4\nc,d,3,9,9\n')],
            ("q.csv", "CSV")),
    Refused("explicit-utf8-on-latin1", lambda t: ["data", "check", _latin1_csv(t), "--encoding", "utf-8",
                                                  "--column-map", "item.title=title"],
            ("l.csv:line 2", "not valid utf-8", "encoding")),
    Refused("unknown-encoding", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--encoding", "klingon"],
            ("--encoding", "klingon")),
    # --- grades and labels
    Refused("nan-grade-with-thresholds", lambda t: ["data", "check", graded_csv(t, ["2.5", "NaN"]), *GRADED],
            ("graded.csv:line 3", "'grade'", "NaN")),
    Refused("missing-grade-with-thresholds", lambda t: ["data", "check", graded_csv(t, ["2.5", ""]), *GRADED],
            ("graded.csv:line 3", "'grade'", "missing")),
    Refused("inf-grade-with-thresholds", lambda t: ["data", "check", graded_csv(t, ["inf"]), *GRADED],
            ("graded.csv:line 2", "'grade'")),
    Refused("text-grade-with-thresholds", lambda t: ["data", "check", graded_csv(t, ["2.5", "good"]), *GRADED],
            ("graded.csv:line 3", "'good'", "mixes numeric and text")),
    # without a label map tier numbers and names mix freely: the error is the unknown name, not the mix
    Refused("mixed-label-types-jsonl", lambda t: ["data", "check", jsonl(t, "m.jsonl", [ROW, {**ROW, "label": "E"}])],
            ("m.jsonl:2", "'label'", "unknown label 'E'", "--label-map E=4")),
    Refused("mixed-label-types-with-a-label-map",
            lambda t: ["data", "check", text(t, "m.csv", "query,title,label\nq,T,E\nq2,T2,4\n"), "--label-map", "E=4"],
            ("m.csv:line 3", "'label'", "mixes numeric and text")),
    Refused("nan-label-jsonl", lambda t: ["data", "check", jsonl(t, "n.jsonl", [], ['{"query": "q", "item": {"title": "T"}, "label": NaN}'])],
            ("n.jsonl:1", "label")),
    Refused("label-5", lambda t: ["data", "check", jsonl(t, "l.jsonl", [{**ROW, "label": 5}])], ("l.jsonl:1", "label", "5")),
    Refused("label-map-value-9", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--label-map", "E=9", "S=3",
                                            "--skip-invalid"], ("--label-map", "E=9", "tier")),
    Refused("label-map-value-text", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--label-map", "E=four"],
            ("--label-map", "E=four")),
    Refused("label-map-no-equals", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--label-map", "E"],
            ("--label-map", "KEY=VALUE")),
    Refused("label-map-and-thresholds", lambda t: ["data", "check", graded_csv(t, ["2"]), "--label-map", "2=4", *GRADED],
            ("--label-map", "not both")),
    Refused("thresholds-not-ascending", lambda t: ["data", "check", graded_csv(t, ["2"]), "--column-map", "item.title=title",
                                                   "label=grade", "--label-thresholds", "3", "2", "1"],
            ("--label-thresholds", "ascending")),
    Refused("unknown-raw-label", lambda t: ["data", "check", graded_csv(t, ["E", "X"]), "--column-map", "item.title=title",
                                            "label=grade", "--label-map", "E=4"], ("graded.csv:line 3", "'X'")),
    # --- columns, fields, rows
    Refused("misspelt-column-map-target", lambda t: ["data", "check", graded_csv(t, ["2"]), "--column-map", "item.title=title",
                                                     "lable=grade"], ("--column-map", "'lable'", "not a field")),
    Refused("column-map-missing-column", lambda t: ["data", "check", graded_csv(t, ["2"]), "--column-map", "item.title=name"],
            ("graded.csv", "'name'", "not in the file")),
    Refused("unknown-query-type-option", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--query-type", "fancy"],
            ("--query-type", "fancy")),
    Refused("duplicate-ids", lambda t: ["data", "check", jsonl(t, "d.jsonl", [{**ROW, "id": "a"}, {**ROW, "id": "b"},
                                                                              {**ROW, "id": "a"}])],
            ("d.jsonl:3", "duplicate id 'a'", "d.jsonl:1")),
    Refused("duplicate-ids-csv", lambda t: ["data", "check", text(t, "d.csv", "id,query,title,label\n7,a,A,4\n7,b,B,3\n"),
                                            "--column-map", "item.title=title"], ("d.csv:line 3", "duplicate id '7'", "d.csv:line 2")),
    Refused("infinite-price-jsonl", lambda t: ["data", "check", jsonl(t, "p.jsonl", [], [
        '{"query": "q", "item": {"title": "T", "price": 1e999}, "label": 4}'])], ("p.jsonl:1", "item.price", "finite")),
    Refused("infinite-price-csv", lambda t: ["data", "check", text(t, "p.csv", "query,title,price,label\nq,T,inf,4\n"),
                                             "--column-map", "item.title=title", "item.price=price"], ("p.csv:line 2", "item.price")),
    Refused("negative-price", lambda t: ["data", "check", jsonl(t, "p.jsonl", [{**ROW, "item": {"title": "T", "price": -3}}])],
            ("p.jsonl:1", "item.price")),
    Refused("item-is-a-string", lambda t: ["data", "check", jsonl(t, "i.jsonl", [{**ROW, "item": "Red Running Shoes"}])],
            ("i.jsonl:1", "'item'", "must be an object")),
    Refused("row-is-an-array", lambda t: ["data", "check", jsonl(t, "a.jsonl", [], ["[1, 2, 3]"])], ("a.jsonl:1", "JSON object")),
    Refused("malformed-json-line", lambda t: ["data", "check", jsonl(t, "j.jsonl", [ROW], ['{"query": '])],
            ("j.jsonl:2", "invalid JSON")),
    Refused("all-rows-skipped", lambda t: ["data", "check", jsonl(t, "s.jsonl", [{**ROW, "label": 9}] * 2), "--skip-invalid"],
            ("s.jsonl", "no valid examples", "2 rows")),
    Refused("empty-query", lambda t: ["data", "check", jsonl(t, "q.jsonl", [{**ROW, "query": "  "}])], ("q.jsonl:1", "'query'", "empty")),
    # --- taosr data synth / heldout / esci
    Refused("synth-negative-n", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "-5"], ("--n", "-5"), ("out",)),
    Refused("synth-zero-n", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "0"], ("--n", "at least 1"), ("out",)),
    Refused("synth-negative-n-val", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--n-val", "-1"],
            ("--n-val",), ("out",)),
    Refused("synth-items-per-query-0", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30",
                                                  "--items-per-query", "0"], ("--items-per-query",), ("out",)),
    Refused("synth-unknown-query-type", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--type-weight",
                                                   "negatoin=1"], ("query_type_weights", "negatoin"), ("out",)),
    Refused("synth-weight-not-a-number", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--type-weight",
                                                    "negation=lots"], ("--type-weight", "lots"), ("out",)),
    Refused("synth-negative-weight", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--type-weight",
                                                "negation=-1"], ("query_type_weights.negation",), ("out",)),
    Refused("synth-bad-tier", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--tier-weight", "7=1"],
            ("tier_weights", "7"), ("out",)),
    Refused("synth-out-is-a-file", lambda t: ["data", "synth", "--out", text(t, "afile", "x"), "--n", "30"],
            ("--out", "afile", "is a file")),
    Refused("heldout-zero-n", lambda t: ["data", "heldout", "--out", str(t / "h.jsonl"), "--n", "0"], ("--n",), ("h.jsonl",)),
    Refused("synth-price-share-above-1", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30", "--price-share",
                                                    "1.5"], ("--price-share", "[0, 1]", "1.5"), ("out",)),
    Refused("heldout-negative-category-share", lambda t: ["data", "heldout", "--out", str(t / "h.jsonl"), "--n", "5",
                                                          "--category-share", "-0.5"], ("--category-share", "-0.5"), ("h.jsonl",)),
    Refused("synth-description-share-above-1", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "30",
                                                          "--description-share", "2"], ("--description-share", "[0, 1]"), ("out",)),
    Refused("heldout-description-share-above-1", lambda t: ["data", "heldout", "--out", str(t / "h.jsonl"), "--n", "5",
                                                            "--description-share", "1.2"], ("--description-share", "1.2"),
            ("h.jsonl",)),
    Refused("heldout-out-is-a-directory", lambda t: ["data", "heldout", "--out", str(t), "--n", "5"], ("--out", "directory")),
    Refused("esci-examples-not-parquet", lambda t: ["data", "esci", "--examples", text(t, "ex.parquet", "nope"),
                                                    "--products", text(t, "pr.parquet", "nope"), "--out", str(t / "o.jsonl")],
            ("ex.parquet", "Parquet"), ("o.jsonl",)),
    Refused("esci-product-missing", lambda t: ["data", "esci", *sum((["--" + k, v] for k, v in
                                                                     zip(("examples", "products"), esci_files(t))), []),
                                               "--out", str(t / "o.jsonl")], ("examples.parquet:row 3", "P9"), ("o.jsonl",)),
    Refused("esci-product-without-key", lambda t: ["data", "esci", *sum((["--" + k, v] for k, v in zip(
        ("examples", "products"), esci_files(t, {"product_id": [None], "product_title": ["X"], "product_brand": [None],
                                                 "product_color": [None], "product_locale": ["us"]}))), []),
        "--out", str(t / "o.jsonl")], ("products.parquet:row 3", "product_id"), ("o.jsonl",)),
    # --- data check with a products file (data.reader.items)
    Refused("check-items-without-key", lambda t: ["data", "check", joined_files(t)[0], "--items", joined_files(t)[1]],
            ("--item-key", "required with --items")),
    Refused("check-items-map-unknown-field", lambda t: ["data", "check", joined_files(t)[0], "--items", joined_files(t)[1],
                                                        "--item-key", "pid", "--items-column-map", "item.titel=title"],
            ("--items-column-map", "'item.titel' is not a field")),
    Refused("check-items-missing-column", lambda t: ["data", "check", joined_files(t)[0], "--items", joined_files(t)[1],
                                                     "--item-key", "pid", "--items-column-map", "item.brand=maker"],
            ("products.csv", "'maker'", "columns: pid, title, brand")),
    Refused("check-items-duplicate-key", lambda t: ["data", "check", joined_files(t, "pid,title\nP1,A\nP2,B\nP1,C\n")[0],
                                                    "--items", str(t / "products.csv"), "--item-key", "pid"],
            ("products.csv:line 4", "duplicate key 'P1'", "first at", "products.csv:line 2")),
    Refused("check-attributes-without-key", lambda t: ["data", "check", joined_files(t)[0], "--attributes",
                                                       joined_files(t)[1]],
            ("--attributes-key", "required with --attributes (or --item-key)")),
    Refused("check-attributes-missing-column", lambda t: ["data", "check", joined_files(t)[0], "--attributes",
                                                          joined_files(t)[1], "--attributes-key", "pid"],
            ("products.csv", "'name'", "columns: pid, title, brand")),
    Refused("check-item-key-not-in-pairs", lambda t: ["data", "check", joined_files(t)[0], "--items", joined_files(t)[1],
                                                      "--item-key", "product_id", "--items-column-map", "key=pid"],
            ("pairs.csv", "'product_id'", "columns: query, pid, title, label")),
    # --- usage errors: one line, not a usage block
    Refused("synth-n-not-an-int", lambda t: ["data", "synth", "--out", str(t / "out"), "--n", "many"],
            ("taosr data synth", "--n", "'many'"), ("out",)),
    Refused("check-without-file", lambda t: ["data", "check"], ("taosr data check", "file")),
    Refused("check-unknown-format", lambda t: ["data", "check", jsonl(t, "d.jsonl", [ROW]), "--format", "xml"],
            ("--format", "xml")),
    Refused("sample-without-model", lambda t: ["sample", "--out", str(t / "s.jsonl")], ("taosr sample", "--model"),
            ("s.jsonl",)),
    # --- taosr sample: values checked before any work (the model does not exist: nothing is loaded)
    Refused("sample-n-0", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"), "--n", "0"],
            ("--n", "at least 1"), ("s.jsonl", "s.jsonl.partial")),
    Refused("sample-n-negative", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"), "--n", "-2"],
            ("--n", "-2"), ("s.jsonl", "s.jsonl.partial")),
    Refused("sample-out-is-a-directory", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t)],
            ("--out", "directory")),
    Refused("sample-batch-size-0", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"),
                                              "--batch-size", "0"], ("--batch-size",), ("s.jsonl",)),
    Refused("sample-negative-temperature", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"),
                                                      "--temperature", "-1"], ("--temperature",), ("s.jsonl",)),
    Refused("sample-max-new-tokens-0", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"),
                                                  "--max-new-tokens", "0"], ("--max-new-tokens",), ("s.jsonl",)),
    Refused("sample-description-share-above-1", lambda t: ["sample", "--model", str(t / "nomodel"), "--out",
                                                           str(t / "s.jsonl"), "--synth-description-share", "3"],
            ("--synth-description-share", "[0, 1]", "3"), ("s.jsonl",)),
    Refused("sample-limit-0", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"),
                                         "--limit", "0"], ("--limit",), ("s.jsonl",)),
    Refused("sample-bad-data-file", lambda t: ["sample", "--model", str(t / "nomodel"), "--out", str(t / "s.jsonl"),
                                               "--data", jsonl(t, "bad.jsonl", [{**ROW, "label": "X"}])],
            ("bad.jsonl:1", "label"), ("s.jsonl", "s.jsonl.partial")),
    Refused("sample-reader-flags-on-synth", lambda t: ["sample", "--model", str(t / "nomodel"), "--out",
                                                       str(t / "s.jsonl"), "--items", str(t / "p.csv")],
            ("--items", "--data FILE"), ("s.jsonl",)),
]


def _leftovers(tmp) -> list[str]:
    return [str(p) for p in tmp.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial")]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_in_one_line(case: Refused, tmp_path, capsys):
    argv = case.args(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("taosr: error: "), lines[0]
    for needle in case.needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in out + err
    for name in case.outputs:
        assert not (tmp_path / name).exists(), name
    assert not _leftovers(tmp_path)


def test_there_are_enough_cases():
    assert len(REFUSED) + len(HANDLED) >= 60


# ----------------------------------------------------------------------------- handled: exit 0, right result
def _summary_tiers(out: str) -> dict[int, int]:
    tiers = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in "4321" and parts[1] in ("excellent", "related", "mismatch", "irrelevant"):
            tiers[int(parts[0])] = int(parts[2])
    return tiers


@dataclass
class Handled:
    id: str
    args: Callable
    check: Callable[[str, object], None]  # (stdout, tmp_path)
    needles: tuple[str, ...] = field(default_factory=tuple)


def _read_titles(path, **kw):
    from taosr.data.readers import ReaderSpec, read_examples

    return [e.item.title for e in read_examples(ReaderSpec(path=path, column_map={"item.title": "title"}, **kw)).examples]


HANDLED = [
    Handled("latin1-csv-auto", lambda t: ["data", "check", _latin1_csv(t), "--column-map", "item.title=title"],
            lambda out, t: _read_titles(str(t / "l.csv")) == ["Caf\xe9 Chair \xc9l\xe9gant", "Sofa"], ("2 examples OK",)),
    Handled("latin1-csv-explicit", lambda t: ["data", "check", _latin1_csv(t), "--encoding", "latin-1",
                                              "--column-map", "item.title=title"],
            lambda out, t: _read_titles(str(t / "l.csv"), encoding="latin-1")[0] == "Caf\xe9 Chair \xc9l\xe9gant",
            ("2 examples OK",)),
    Handled("utf16-csv-bom", lambda t: ["data", "check", text(t, "u.csv", "query,title,label\nshoes,Caf\xe9 Shoes,4\n", "utf-16"),
                                        "--column-map", "item.title=title"],
            lambda out, t: _read_titles(str(t / "u.csv")) == ["Caf\xe9 Shoes"], ("1 examples OK",)),
    Handled("utf8-sig-csv", lambda t: ["data", "check", text(t, "s.csv", "query,title,label\nshoes,Shoes \u2713,4\n", "utf-8-sig"),
                                       "--column-map", "item.title=title"],
            lambda out, t: _read_titles(str(t / "s.csv")) == ["Shoes \u2713"], ("1 examples OK",)),
    Handled("latin1-jsonl", lambda t: ["data", "check", text(t, "l.jsonl", json.dumps(
        {"query": "caf\xe9", "item": {"title": "Caf\xe9 Chair"}, "label": 4}, ensure_ascii=False) + "\n", "latin-1")],
        lambda out, t: True, ("1 examples OK",)),
    Handled("utf16-jsonl-bom", lambda t: ["data", "check", text(t, "u.jsonl", json.dumps(
        {"query": "caf\xe9", "item": {"title": "Caf\xe9 \u2615 Mug"}, "label": 3}, ensure_ascii=False) + "\n", "utf-16")],
        lambda out, t: True, ("1 examples OK",)),
    Handled("tsv-latin1", lambda t: ["data", "check", text(t, "d.tsv", "query\ttitle\tlabel\nna\xefve\tNa\xefve Tea\t2\n", "latin-1"),
                                     "--column-map", "item.title=title"],
            lambda out, t: _read_titles(str(t / "d.tsv")) == ["Na\xefve Tea"], ("1 examples OK",)),
    Handled("nan-grade-skipped-and-counted", lambda t: ["data", "check", graded_csv(t, ["2.5", "NaN", "0.5"]), *GRADED,
                                                        "--skip-invalid"],
            # the NaN row is skipped (counted), never tier 1: one tier-3 and one tier-1 (the 0.5) row remain
            lambda out, t: _summary_tiers(out) == {4: 0, 3: 1, 2: 0, 1: 1}, ("2 examples OK", "skipped 1 bad rows", "NaN")),
    Handled("malformed-json-skipped-and-counted", lambda t: ["data", "check", jsonl(t, "j.jsonl", [ROW], [
        '{"query": ', json.dumps({**ROW, "query": "blue bag"})]), "--skip-invalid"],
        lambda out, t: True, ("2 examples OK", "skipped 1 bad rows", "j.jsonl:2", "invalid JSON")),
    Handled("duplicate-id-skipped-and-counted", lambda t: ["data", "check", jsonl(t, "d.jsonl", [{**ROW, "id": 1},
                                                                                                 {**ROW, "id": 1}]), "--skip-invalid"],
            lambda out, t: True, ("1 examples OK", "skipped 1 bad rows", "duplicate id")),
    Handled("label-map-numeric-strings", lambda t: ["data", "check", graded_csv(t, ["E", "I"]), "--column-map", "item.title=title",
                                                    "label=grade", "--label-map", "E=4", "S=3", "C=2", "I=1"],
            lambda out, t: _summary_tiers(out) == {4: 1, 3: 0, 2: 0, 1: 1}, ("2 examples OK",)),
    Handled("synth-writes-atomically", lambda t: ["data", "synth", "--out", str(t / "s"), "--n", "20"],
            lambda out, t: all((t / "s" / f"{s}.jsonl").exists() for s in ("train", "val", "test")), ("wrote",)),
    Handled("check-items-joined-and-counted", lambda t: ["data", "check", joined_files(t)[0], "--items", joined_files(t)[1],
                                                         "--item-key", "pid", "--column-map", "item.title=title"],
            lambda out, t: _summary_tiers(out) == {4: 1, 3: 0, 2: 1, 1: 1},
            ("3 examples OK", "2 of 3 pairs joined a row of", "1 of 3 product rows joined no pair",
             "1 of 3 pairs have no row in", "key 'P404' at", "pairs.csv:line 4")),
    Handled("esci-missing-product-skipped-and-counted", lambda t: ["data", "esci", *sum((["--" + k, v] for k, v in zip(
        ("examples", "products"), esci_files(t, {"product_id": [None], "product_title": ["X"], "product_brand": [None],
                                                 "product_color": [None], "product_locale": ["us"]}))), []),
        "--out", str(t / "o.jsonl"), "--skip-invalid"],
        lambda out, t: len((t / "o.jsonl").read_text().splitlines()) == 2,
        ("wrote 2 examples", "skipped 1", "P9", "ignored 1 product rows")),
]


@pytest.mark.parametrize("case", HANDLED, ids=[c.id for c in HANDLED])
def test_handled(case: Handled, tmp_path, capsys):
    argv = case.args(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, (out, err)
    assert "Traceback" not in out + err and not err.strip(), err
    for needle in case.needles:
        assert needle in out, (needle, out)
    assert case.check(out, tmp_path), out
    assert not _leftovers(tmp_path)


# ----------------------------------------------------------------------------- as a user runs it
def _run(*args):
    return subprocess.run([sys.executable, "-m", "taosr.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_subprocess_latin1_csv_and_nan_grade(tmp_path):
    r = _run("data", "check", _latin1_csv(tmp_path), "--column-map", "item.title=title")
    assert r.returncode == 0 and "2 examples OK" in r.stdout and "Traceback" not in r.stderr, r.stderr
    r = _run("data", "check", graded_csv(tmp_path, ["2.5", "NaN"]), *GRADED)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        f"taosr: error: {tmp_path / 'graded.csv'}:line 3: field 'grade': graded label 'NaN' is missing or not a finite number"]


def test_subprocess_sample_n_zero(tmp_path):
    r = _run("sample", "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "s.jsonl"), "--n", "0")
    assert r.returncode == 2 and "ZeroDivisionError" not in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip() == "taosr: error: --n: must be at least 1, got 0"


# ----------------------------------------------------------------------------- DataModule options through `taosr fit`
DM_REFUSED = [
    ({"batch_size": -4}, "data.batch_size: must be a whole number >= 1, got -4"),
    ({"batch_size": 0}, "data.batch_size"),
    ({"eval_batch_size": 0}, "data.eval_batch_size"),
    ({"max_length": 0}, "data.max_length"),
    ({"limit_train": 0}, "data.limit_train"),
    ({"num_workers": -1}, "data.num_workers"),
    ({"pairs_per_prompt": 0}, "data.pairs_per_prompt"),
    ({"grm_corrupt_prob": 1.5}, "data.grm_corrupt_prob"),
    ({"view": "ppo"}, "data.view"),
    ({"reader": ReaderSpec(label_map={"E": 9})}, "data.reader.label_map: E=9"),
    ({"reader": ReaderSpec(label_map={"E": "four"})}, "data.reader.label_map: E=four"),
    ({"reader": ReaderSpec(column_map={"lable": "grade"})}, "data.reader.column_map: 'lable' is not a field"),
    ({"reader": ReaderSpec(encoding="klingon")}, "data.reader.encoding: unknown encoding"),
    ({"reader": ReaderSpec(on_error="ignore")}, "data.reader.on_error"),
    ({"reader": ReaderSpec(path="x.csv")}, "data.reader.path"),
    ({"synth": SynthConfig(n_train=-5)}, "data.synth.n_train"),
    ({"synth": SynthConfig(annotation_regime="hidden")}, "data.synth.annotation_regime"),
    ({"synth": SynthConfig(query_type_weights={"negation": 0.0})}, "data.synth.query_type_weights"),
]


@pytest.mark.parametrize("kwargs,needle", DM_REFUSED, ids=[n.split(":")[0] + "-" + str(i) for i, (_, n) in enumerate(DM_REFUSED)])
def test_datamodule_refuses_at_construction(kwargs, needle, tmp_path):
    with pytest.raises(ConfigError) as e:
        RelevanceDataModule(data_dir=str(tmp_path / "data"), **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "data").exists()  # refused before any data was generated


@pytest.mark.parametrize("args,needle", [
    (["--data.batch_size", "-4"], "data.batch_size: must be a whole number >= 1, got -4"),
    (["--data.reader.label_map", "{E: 9}"], "data.reader.label_map: E=9"),
    (["--data.reader.items", "products.csv"], "data.reader.item_key: required with data.reader.items"),
    (["--data.reader.items", "p.csv", "--data.reader.item_key", "pid", "--data.reader.items_column_map", "{item.titel: name}"],
     "data.reader.items_column_map: 'item.titel' is not a field"),
])
def test_datamodule_options_refused_at_construction(args, needle, tmp_path, capsys):
    rc = main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"), "--trainer.default_root_dir", str(tmp_path),
               "--data.data_dir", str(tmp_path / "data"), *args])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and "Seed set to" not in ln]  # Lightning's own INFO line
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("taosr: error: ") and needle in lines[0], err
    assert "Traceback" not in out + err
    assert not (tmp_path / "data").exists()  # refused before any data was generated


# ----------------------------------------------------------------------------- taosr sample: resumable output
def _sample_args(sft_run, cache_dir, out, *extra):
    return ["sample", "--model", os.path.join(sft_run, "export"), "--out", str(out), "--n", "2", "--limit", "6",
            "--batch-size", "2", "--max-new-tokens", "12", "--synth-n-train", "48", "--synth-n-val", "6",
            "--synth-n-test", "6", "--data-dir", os.path.join(cache_dir, "data"), *extra]


def test_sample_interrupted_in_a_moved_tree_continues(tmp_path, sft_run, cache_dir, capsys, monkeypatch):
    """A project folder (export and partial sample file) copied elsewhere, as a checkout or a lent
    machine's copy is, gets new file times: the policy's fingerprint held them, so the re-run there
    sampled everything again. It is the export's content now: the copy continues where it stopped."""
    import shutil

    import taosr.sampling as sampling

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(os.path.join(sft_run, "export"), a / "export", copy_function=shutil.copy)
    monkeypatch.chdir(a)
    args = _sample_args(sft_run, cache_dir, "s.jsonl")
    args[args.index("--model") + 1] = "export"
    assert main(args) == 0
    whole = (a / "s.jsonl").read_bytes()
    (a / "s.jsonl").unlink()
    real_save, save_then_interrupt = sampling._save_rng, _interrupt_at_second_save(sampling._save_rng)
    monkeypatch.setattr(sampling, "_save_rng", save_then_interrupt)
    assert main(args) == 130
    monkeypatch.setattr(sampling, "_save_rng", real_save)
    c = tmp_path / "c"
    shutil.copytree(a, c, copy_function=shutil.copy)
    shutil.copytree(a, b, copy_function=shutil.copy)  # a plain copy: new modification times
    for f in (b / "export").iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    monkeypatch.chdir(b)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "continuing" in out and "sampling again" not in out
    assert (b / "s.jsonl").read_bytes() == whole
    # the policy given by another path to the same files (here absolute): the same policy, continued,
    # and every row names it as given now
    monkeypatch.chdir(c)
    args[args.index("--model") + 1] = str(c / "export")
    assert main(args) == 0
    assert "continuing" in capsys.readouterr().out
    rows = [json.loads(line) for line in (c / "s.jsonl").read_text().splitlines()]
    assert {r["sampler"]["model"] for r in rows} == {str(c / "export")}
    assert [r["samples"] for r in rows] == [json.loads(line)["samples"] for line in whole.decode().splitlines()]


def test_sample_shows_the_items_of_the_fits_field_shares(tmp_path, sft_run, cache_dir):
    """`--synth-price-share` / `--synth-category-share` / `--synth-description-share` sample the
    examples the fits train on with data.synth.*_share (the quick start passes them on): the same items."""
    import json

    from taosr.data.synth import SynthConfig, generate

    out = tmp_path / "s.jsonl"
    assert main(_sample_args(sft_run, cache_dir, out, "--synth-price-share", "0.5", "--synth-category-share", "0.5",
                             "--synth-description-share", "0.5")) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = generate(SynthConfig(n_train=48, n_val=6, n_test=6, price_share=0.5, category_share=0.5,
                                description_share=0.5))["train"][:6]
    assert [r["example"] for r in rows] == [e.to_dict() for e in want]
    assert any(e.item.price is None for e in want) and any(e.item.price is not None for e in want)
    assert any(e.item.category for e in want) and any(e.item.description for e in want)


def _interrupt_at_second_save(real_save):
    """``taosr sample``'s per-batch save of its random state, then Ctrl-C after the second batch."""
    calls = []

    def save_then_interrupt(path, n_rows):
        real_save(path, n_rows)
        calls.append(n_rows)
        if len(calls) == 2:
            raise KeyboardInterrupt
    return save_then_interrupt


def test_sample_interrupted_then_resumed_equals_uninterrupted(tmp_path, sft_run, cache_dir, capsys, monkeypatch):
    import taosr.sampling as sampling

    whole = tmp_path / "whole.jsonl"
    assert main(_sample_args(sft_run, cache_dir, whole)) == 0
    assert len(whole.read_text().splitlines()) == 6

    # Ctrl-C after the second batch: what was done is kept in OUT.partial, OUT is not written.
    out = tmp_path / "s.jsonl"
    real_save, save_then_interrupt = sampling._save_rng, _interrupt_at_second_save(sampling._save_rng)
    monkeypatch.setattr(sampling, "_save_rng", save_then_interrupt)
    assert main(_sample_args(sft_run, cache_dir, out)) == 130
    assert "run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(sampling, "_save_rng", real_save)
    part = tmp_path / "s.jsonl.partial"
    assert not out.exists() and len(part.read_text().splitlines()) == 4
    with open(part, "a") as fh:  # a crash in the middle of a write leaves a torn last line
        fh.write('{"index": 4, "split": "tra')

    # The re-run keeps the 4 prompts, drops the torn line, restores the random state: same file.
    assert main(_sample_args(sft_run, cache_dir, out)) == 0
    assert "continuing" in capsys.readouterr().out
    assert out.read_bytes() == whole.read_bytes()
    assert not part.exists() and not _leftovers(tmp_path)
    from taosr.data.samples import load_samples

    assert len(load_samples(str(out))) == 6  # the readers of sample files (DPO pairs, hooks, GRM) take it

    # A complete file is not recomputed (the model is not even loaded) ...
    def no_model(*a, **k):
        raise AssertionError("the model was loaded for a complete file")

    import taosr.models.factory as factory

    monkeypatch.setattr(factory, "load_model_and_tokenizer", no_model)
    assert main(_sample_args(sft_run, cache_dir, out)) == 0
    assert "nothing to sample" in capsys.readouterr().out and out.read_bytes() == whole.read_bytes()
    # ... while a run with other settings (or another model) samples again, saying so, and replaces it whole.
    monkeypatch.undo()
    other = _sample_args(sft_run, cache_dir, out)
    other[other.index("--n") + 1] = "3"
    assert main(other) == 0
    assert "sampling again from the start" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["samples"]) == 3 and r["sampler"]["n"] == 3 for r in rows)
    # A file that is not `taosr sample` output is never overwritten.
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my notes\nmore notes\n")
    assert main(_sample_args(sft_run, cache_dir, foreign)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.jsonl:1" in err[0] and foreign.read_text() == "my notes\nmore notes\n"
