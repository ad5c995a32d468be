"""taosr data split: a labelled file into train/val/test by query (no query on two sides)."""
import json
import os

import pytest

from taosr.cli import main
from taosr.data.check import overlap
from taosr.data.split import query_key, split_by_query
from taosr.errors import TaosrError
from taosr.schema import Example, Item, load_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "your_data")
FLAGS = ["--column-map", "query=search_term", "item.title=product_title", "label=relevance",
         "--label-thresholds", "1.5", "2.25", "2.75", "--skip-invalid",
         "--items", os.path.join(FIXTURE, "products.csv"), "--item-key", "product_uid",
         "--items-column-map", "item.title=product_title", "item.attributes=attributes"]


def _ex(query: str, i: int, label: int = 4) -> Example:
    return Example(query=query, item=Item(title=f"item {i}"), label=label, query_type="other", id=f"e{i}")


def test_every_query_lands_in_one_split_with_all_its_pairs():
    rows = [_ex(f"q{i % 20}", i) for i in range(100)] + [_ex("Q3 ", 100)]  # "Q3 " is q3: case and spaces
    parts = split_by_query(rows, val=0.1, test=0.2, seed=0)
    assert sorted(e.id for p in parts.values() for e in p) == sorted(e.id for e in rows)  # nothing lost
    keys = {name: {query_key(e.query) for e in p} for name, p in parts.items()}
    assert len(keys["test"]) == 4 and len(keys["val"]) == 2 and len(keys["train"]) == 14
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    assert all(len([e for e in p if query_key(e.query) == q]) in (5, 6) for p in parts.values()
               for q in {query_key(e.query) for e in p})
    assert [e.id for e in parts["train"]] == [e.id for e in rows if e in parts["train"]]  # order kept
    again = split_by_query(rows, val=0.1, test=0.2, seed=0)
    other = split_by_query(rows, val=0.1, test=0.2, seed=1)
    assert [e.id for e in again["test"]] == [e.id for e in parts["test"]]  # the seed fixes the split
    assert {e.query for e in other["test"]} != {e.query for e in parts["test"]}


def test_small_shares_still_get_a_query_and_train_keeps_one():
    rows = [_ex(f"q{i}", i) for i in range(3)]
    parts = split_by_query(rows, val=0.01, test=0.01, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert len(split_by_query(rows, val=0.0, test=0.6, seed=0)["train"]) == 1  # 0.6 × 3 rounds to 2: train keeps 1
    assert split_by_query(rows, val=0.0, test=0.0)["train"] == rows


@pytest.mark.parametrize("val, test, message", [
    (0.5, 0.5, "leave no queries for training"),
    (-0.1, 0.1, "--val: a share of the queries in [0, 1)"),
    (0.1, 1.0, "--test: a share of the queries in [0, 1)"),
])
def test_bad_shares_get_one_line(val, test, message):
    with pytest.raises(TaosrError) as err:
        split_by_query([_ex("a", 0), _ex("b", 1), _ex("c", 2)], val, test)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_too_few_queries_for_the_splits_asked_for():
    with pytest.raises(TaosrError, match="2 distinct queries cannot be split 3 ways"):
        split_by_query([_ex("a", 0), _ex("a", 1), _ex("b", 2)], 0.1, 0.1)


def test_the_command_splits_the_your_data_fixture_with_its_joins(tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["data", "split", os.path.join(FIXTURE, "train.csv"), "--out", str(out), "--val", "0.15",
                 "--test", "0.15", *FLAGS]) == 0
    said = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["split.skipped.txt", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert "examples OK" in said and said.count("wrote ") == 3
    parts = {s: [json.loads(line) for line in open(out / f"{s}.jsonl")] for s in ("train", "val", "test")}
    assert all(parts[s] for s in parts) and all(r["item"]["title"] and "grade" in r for r in parts["train"])
    as_ex = {s: load_jsonl(str(out / f"{s}.jsonl")) for s in parts}
    assert overlap(as_ex["train"], as_ex["test"])["queries"] == 0 and overlap(as_ex["train"], as_ex["val"])["queries"] == 0
    skipped = (out / "split.skipped.txt").read_text().splitlines()
    converted = tmp_path / "all.jsonl"  # the same rows as `taosr data convert` reads, nothing lost
    assert main(["data", "convert", os.path.join(FIXTURE, "train.csv"), "--out", str(converted), *FLAGS]) == 0
    assert sum(len(p) for p in parts.values()) == sum(1 for _ in open(converted))
    assert skipped == (tmp_path / "all.jsonl.skipped.txt").read_text().splitlines()
    # its output is checked against itself as the README says: no query shared
    capsys.readouterr()
    assert main(["data", "check", str(out / "train.jsonl"), "--against", str(out / "test.jsonl")]) == 0
    assert "0 of " in capsys.readouterr().out


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["data", "split", os.path.join(FIXTURE, "train.csv"), "--out", str(f), *FLAGS]) != 0
    assert "--out" in capsys.readouterr().err
