"""The recipe of configs/experiment/your_data.yaml on the fixture tests/data/your_data (issue #14):
graded pairs + a products file, no reasoning -> check -> convert -> reason -> SFT (reasoning and
label-only) -> GRPO on the grades -> test with NDCG / grade RMSE -> score. Every step goes through
the CLI with the overlay, as a user runs it; only the model is the micro preset and budgets are the
smoke overlay's."""
from __future__ import annotations

import json
import math
import os

import pytest

from taosr.cli import main
from taosr.data.synth import SynthConfig, generate
from taosr.schema import load_jsonl
from tests.conftest import ROOT, fit, small_overrides

FIX = os.path.join(ROOT, "tests", "data", "your_data")
OVERLAY = "configs/experiment/your_data.yaml"
LABEL_ONLY = "configs/experiment/label_only.yaml"
FLAGS = ["--column-map", "query=search_term", "item.title=product_title", "label=relevance",
         "--label-thresholds", "1.5", "2.25", "2.75", "--skip-invalid",
         "--items", os.path.join(FIX, "products.csv"), "--item-key", "product_uid",
         "--items-column-map", "item.title=product_title", "item.attributes=attributes"]
N_TEACH = 12  # pairs the teacher is trained on and explains


def test_check_reads_the_fixture_with_its_joins(capsys):
    assert main(["data", "check", os.path.join(FIX, "train.csv"), *FLAGS]) == 0
    out = capsys.readouterr().out
    assert "328 examples OK" in out and "skipped 2 bad rows" in out
    assert "314 of 330 pairs joined a row of" in out and "16 of 330 pairs have no row in" in out
    # how many items carry each optional field (a model trained where all had a price reads the rest badly)
    assert "item field      count   share\n  brand            314   95.7%" in out and "  attributes       137   41.8%" in out


def test_check_against_counts_what_a_test_file_shares_with_training(capsys):
    """The fixture's splits are query-disjoint; a file checked against itself shares everything."""
    assert main(["data", "check", os.path.join(FIX, "train.csv"), *FLAGS, "--against", os.path.join(FIX, "test.csv")]) == 0
    assert "0 of 41 queries of" in capsys.readouterr().out
    assert main(["data", "check", os.path.join(FIX, "test.csv"), *FLAGS, "--against", os.path.join(FIX, "test.csv")]) == 0
    assert "41 of 41 queries of" in capsys.readouterr().out


def test_sample_reads_the_csv_with_the_reader_flags(tmp_path, sft_run, cache_dir, capsys):
    """`taosr sample` reads the graded CSV and its products file as `data convert` does (no convert step)."""
    out = tmp_path / "s.jsonl"
    assert main(["sample", "--model", os.path.join(sft_run, "export"), "--out", str(out), "--data",
                 os.path.join(FIX, "train.csv"), *FLAGS, "--n", "2", "--limit", "3", "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    firsts = load_jsonl_rows(os.path.join(FIX, "train.csv"))
    assert len(rows) == 3 and [r["example"]["id"] for r in rows] == firsts
    assert rows[1]["example"]["item"]["title"].startswith("Dewalt") and rows[1]["example"]["grade"] == 3.0
    assert all(len(r["samples"]) == 2 for r in rows)


def load_jsonl_rows(path: str) -> list[str]:
    """The ids of the first three usable pairs of the CSV (rows the reader keeps, in file order)."""
    from taosr.cliargs import ArgumentParser, add_reader_options, reader_spec
    from taosr.data.readers import read_examples

    p = ArgumentParser()
    add_reader_options(p)
    return [ex.id for ex in read_examples(reader_spec(p.parse_args(FLAGS), path)).examples[:3]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("your_data")
    for split in ("train", "test"):
        assert main(["data", "convert", os.path.join(FIX, f"{split}.csv"), *FLAGS, "--out", str(d / f"{split}.jsonl")]) == 0
    return d


def test_convert_keeps_grades_joins_and_lists_skipped_rows(converted):
    train, test = load_jsonl(str(converted / "train.jsonl")), load_jsonl(str(converted / "test.jsonl"))
    assert (len(train), len(test)) == (328, 90)
    assert all(ex.grade is not None and 1.0 <= ex.grade <= 3.0 for ex in train + test)
    assert all((ex.label == 4) == (ex.grade >= 2.75) for ex in train)
    joined = [ex for ex in train if ex.item.category]
    assert len(joined) == 314 and all(ex.item.brand for ex in joined)
    assert any(ex.item.attributes for ex in joined)
    assert all(ex.item.description is None for ex in train)  # descriptions only when mapped
    skipped = open(str(converted / "train.jsonl") + ".skipped.txt").read().splitlines()
    assert len(skipped) == 2 and all("has no row in" in s for s in skipped)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, converted, cache_dir):
    """A micro SFT export trained on the first pairs of the fixture with the steps of the synthetic
    examples they were written from (seed 11): a teacher that knows these pairs."""
    root = tmp_path_factory.mktemp("teacher")
    gold = generate(SynthConfig(n_train=330, n_val=30, n_test=90, seed=11))["train"]
    rows = []
    for ex in load_jsonl(str(converted / "train.jsonl"))[:N_TEACH]:
        d = ex.to_dict()
        d["steps"] = gold[int(ex.id.split("-")[1])].steps
        rows.append(d)
    path = root / "teach.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit("configs/sft.yaml", str(root), cache_dir, "--data.train", str(path), "--data.val", "null", "--data.test", "null",
        "--trainer.max_steps", "120", "--trainer.max_epochs", "-1", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.logger", "false", "--model.init_args.lr", "1e-2",
        "--model.init_args.warmup_steps", "5", "--data.batch_size", "12")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "steps"}) + "\n" for r in rows))
    return str(root / "export"), str(pairs)


@pytest.fixture(scope="module")
def reasoned(teacher, tmp_path_factory):
    model, pairs = teacher
    out = str(tmp_path_factory.mktemp("reasoned") / "train-reasoned.jsonl")
    assert main(["reason", "--model", model, "--data", pairs, "--out", out, "--n", "2", "--max-new-tokens", "96",
                 "--batch-size", "6", "--no-hint"]) == 0
    return out


def test_reason_explains_pairs_and_accounts_for_every_one(reasoned):
    kept = load_jsonl(reasoned)
    unexplained = [json.loads(line) for line in open(reasoned + ".unexplained.jsonl")]
    assert len(kept) + len(unexplained) == N_TEACH
    assert len(kept) >= N_TEACH // 2  # the teacher memorised these pairs
    assert all(ex.steps and len(ex.steps) == 5 and ex.provenance["prompt_version"] == "reason-v1" for ex in kept)
    assert all(ex.grade is not None for ex in kept)  # the raw grade travels with the pair


@pytest.fixture(scope="module")
def sft_your_data(reasoned, converted, tmp_path_factory, cache_dir):
    root = str(tmp_path_factory.mktemp("sft_your_data"))
    fit("configs/sft.yaml", root, cache_dir, "--data.train", reasoned, "--data.test", str(converted / "test.jsonl"),
        "--data.limit_test", "12", overlays=(OVERLAY,))
    return root


def test_sft_on_bootstrapped_reasoning_then_test_reports_ranking_metrics(sft_your_data, converted, cache_dir):
    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), "--config", os.path.join(ROOT, OVERLAY)]
    args += small_overrides(sft_your_data, cache_dir) + ["--data.test", str(converted / "test.jsonl"),
                                                         "--data.limit_test", "12", "--data.train",
                                                         str(converted / "train.jsonl"),
                                                         "--model.init_args.model.name_or_path",
                                                         os.path.join(sft_your_data, "export")]
    assert main(args) == 0
    m = json.load(open(os.path.join(sft_your_data, "eval", "test-metrics.json")))
    assert m["n"] == 12 and math.isfinite(m["macro_f1"])
    preds = [json.loads(line) for line in open(os.path.join(sft_your_data, "eval", "test-predictions.jsonl"))]
    if any(r["score"] is not None for r in preds):
        assert "ndcg@10" in m and m["ndcg@10_queries"] + m["ndcg@10_skipped_queries"] >= 1
    else:  # this 2-step model wrote no label line anywhere: nothing is ranked, so no NDCG
        assert m["ndcg@10_queries"] == 0 and not math.isfinite(m.get("ndcg@10", float("nan")))
    assert all(r["grade"] is not None for r in preds)


def test_label_only_sft_on_every_pair(converted, tmp_path, cache_dir):
    fit("configs/sft.yaml", str(tmp_path), cache_dir, "--data.train", str(converted / "train.jsonl"),
        "--data.test", str(converted / "test.jsonl"), overlays=(OVERLAY, LABEL_ONLY))
    assert os.path.exists(tmp_path / "export" / "config.json")


def test_grpo_on_the_grades_then_score(sft_your_data, converted, tmp_path, cache_dir):
    root = tmp_path / "grpo"
    fit("configs/grpo.yaml", str(root), cache_dir, "--data.train", str(converted / "train.jsonl"),
        "--data.rejection_sampling.enabled", "false", "--data.test", str(converted / "test.jsonl"),
        "--model.init_args.model.name_or_path", os.path.join(sft_your_data, "export"), overlays=(OVERLAY,))
    export = str(root / "export")
    assert os.path.exists(os.path.join(export, "config.json"))
    out = str(tmp_path / "scores.jsonl")
    assert main(["score", str(converted / "test.jsonl"), "--model", export, "--out", out, "--limit", "8",
                 "--max-new-tokens", "32"]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 8
    for r in rows:
        if r["p_tier"] is not None:
            assert abs(sum(r["p_tier"]) - 1) < 1e-4 and 1 <= r["score"] <= 4
