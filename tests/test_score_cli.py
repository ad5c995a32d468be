"""`taosr score` on the micro SFT export, and the scores that evaluation adds to its records."""
import csv
import glob
import json
import os

import pytest

from taosr.cli import main
from taosr.data.synth import SynthConfig, generate

MAP = ["--column-map", "id=pid", "query=q", "item.title=name", "item.brand=brand", "label=rel", "query_type=qt",
       "--label-map", "E=4", "S=3", "C=2", "I=1"]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    rows = generate(SynthConfig(n_train=10, n_val=12, n_test=0, seed=5))["val"]
    path = tmp_path_factory.mktemp("score") / "pairs.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pid", "q", "name", "brand", "rel", "qt"])
        for ex in rows:
            w.writerow([ex.id, ex.query, ex.item.title, ex.item.brand or "", "ICSE"[ex.label - 1], ex.query_type])
    return str(path), [ex.id for ex in rows]


def _check_rows(out, ids):
    rows = [json.loads(line) for line in open(out)]
    assert [r["id"] for r in rows] == ids  # every pair, in file order
    for r in rows:
        if r["p_tier"] is None:  # reasoning without a label line: no score
            assert r["score"] is None and r["pred"] is None
            continue
        assert sum(r["p_tier"]) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == pytest.approx(sum((t + 1) * p for t, p in enumerate(r["p_tier"])), abs=1e-5)
        assert r["p_ge"]["4"] == pytest.approx(r["p_tier"][3], abs=1e-6)
        assert r["pred"] == 1 + max(range(4), key=lambda k: r["p_tier"][k])
    return rows


def test_score_direct_csv_with_column_map(tmp_path, sft_run, csv_file, capsys):
    path, ids = csv_file
    out = tmp_path / "scores.jsonl"
    assert main(["score", path, "--model", os.path.join(sft_run, "export"), "--out", str(out), "--direct",
                 "--batch-size", "5", *MAP]) == 0
    printed = capsys.readouterr().out
    assert "scored 12 pairs (direct)" in printed and "pairs/s" in printed
    assert "macro F1" in printed and "NDCG@10" in printed and "format errors" not in printed  # no completions
    rows = _check_rows(out, ids)
    assert all(r["p_tier"] is not None for r in rows) and "reasoning" not in rows[0]
    assert not any(p.name.startswith("scores.jsonl.tmp") for p in tmp_path.iterdir())


def _stop_after_two_chunks(real):
    """``score_rows`` that keeps two chunks (its ``on_chunk`` called) and then is interrupted (Ctrl-C)."""
    def stop_after_two(*a, on_chunk=None, **kw):
        seen = []

        def chunk(rows):
            on_chunk(rows)
            seen.append(rows)
            if len(seen) == 2:
                raise KeyboardInterrupt
        return real(*a, on_chunk=chunk, **kw)
    return stop_after_two


def test_an_interrupted_score_continues_where_it_stopped(tmp_path, sft_run, csv_file, capsys, monkeypatch):
    """Ctrl-C after two chunks of 2: OUT.partial keeps them, and the re-run scores the 8 others only,
    ending with the uninterrupted run's file; another setting starts over. (score kept every row in
    memory and wrote nothing until the end: an audit lost ~4k scored pairs to a kill.)"""
    import taosr.scoring as scoring

    path, ids = csv_file
    args = ["score", path, "--model", os.path.join(sft_run, "export"), "--max-new-tokens", "16", "--batch-size", "2",
            *MAP]
    full, out = tmp_path / "full.jsonl", tmp_path / "scores.jsonl"
    assert main([*args, "--out", str(full)]) == 0
    real, stop_after_two = scoring.score_rows, _stop_after_two_chunks(scoring.score_rows)

    monkeypatch.setattr(scoring, "score_rows", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(out)])
    monkeypatch.setattr(scoring, "score_rows", real)
    assert len(open(f"{out}.partial").readlines()) == 4 and not out.exists()
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "continuing after 4 of 12 pairs scored" in printed and "scored 8 pairs (reasoning)" in printed
    assert out.read_text() == full.read_text()
    assert not os.path.exists(f"{out}.partial") and not os.path.exists(f"{out}.partial.json")
    with pytest.raises(KeyboardInterrupt):  # a partial file of other settings is not continued
        monkeypatch.setattr(scoring, "score_rows", stop_after_two)
        main([*args, "--out", str(out)])
    monkeypatch.setattr(scoring, "score_rows", real)
    capsys.readouterr()
    assert main([*args[:-len(MAP)], "--max-length", "200", *MAP, "--out", str(out)]) == 0
    assert "made with other settings; scoring from the start" in capsys.readouterr().out


def test_an_interrupted_score_continues_in_a_moved_tree(tmp_path, sft_run, csv_file, capsys, monkeypatch):
    """The partial file recorded the data file's absolute path and the export's file times: the same
    folder copied elsewhere scored everything again. Both are contents now: the copy continues."""
    import shutil

    import taosr.scoring as scoring

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    shutil.copy(csv_file[0], a / "pairs.csv")
    shutil.copytree(os.path.join(sft_run, "export"), a / "export", copy_function=shutil.copy)
    args = ["score", "pairs.csv", "--model", "export", "--max-new-tokens", "16", "--batch-size", "2", *MAP,
            "--out", "scores.jsonl"]
    real, stop_after_two = scoring.score_rows, _stop_after_two_chunks(scoring.score_rows)

    monkeypatch.chdir(a)
    monkeypatch.setattr(scoring, "score_rows", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(scoring, "score_rows", real)
    c = tmp_path / "c"
    shutil.copytree(a, c)
    shutil.copytree(a, b, copy_function=shutil.copy)
    for f in (b / "export").iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    monkeypatch.chdir(b)
    capsys.readouterr()
    assert main(args) == 0
    assert "continuing after 4 of 12 pairs scored" in capsys.readouterr().out
    _check_rows(b / "scores.jsonl", csv_file[1])
    # a partial file written before 2026-12-04 (the pairs file by absolute path, the model by file
    # times) is continued where it was written
    from taosr.fingerprints import file_times_fingerprint

    monkeypatch.chdir(c)
    meta = json.loads((c / "scores.jsonl.partial.json").read_text())
    meta.update(file=str(c / "pairs.csv"), model=file_times_fingerprint("export"))
    (c / "scores.jsonl.partial.json").write_text(json.dumps(meta))
    assert main(args) == 0
    assert "continuing after 4 of 12 pairs scored" in capsys.readouterr().out


def test_score_reasoning_writes_the_generated_reasoning(tmp_path, sft_run, csv_file, capsys):
    path, ids = csv_file
    out = tmp_path / "scores.jsonl"
    assert main(["score", path, "--model", os.path.join(sft_run, "export"), "--out", str(out), "--limit", "4",
                 "--max-new-tokens", "24", *MAP]) == 0
    printed = capsys.readouterr().out
    assert "scored 4 pairs (reasoning)" in printed
    rows = _check_rows(out, ids[:4])
    assert all(isinstance(r["reasoning"], str) and "format_error" in r for r in rows)
    bad = sum(r["format_error"] for r in rows)  # 24 tokens: most completions stop before their label line
    assert f"format errors {bad} of 4 completions ({bad / 4:.0%})" in printed, printed


@pytest.mark.parametrize("case", ["no_model_folder", "not_a_model", "no_file", "bad_label", "bad_flag"])
def test_score_refuses_with_one_line(tmp_path, sft_run, csv_file, capsys, case):
    path, _ = csv_file
    model, args, needle = os.path.join(sft_run, "export"), MAP, None
    if case == "no_model_folder":
        model, needle = str(tmp_path / "missing"), "--model"
    elif case == "not_a_model":
        (tmp_path / "empty").mkdir()
        model, needle = str(tmp_path / "empty"), "--model"
    elif case == "no_file":
        path, needle = str(tmp_path / "nope.csv"), "nope.csv"
    elif case == "bad_label":
        args, needle = MAP[:-1] + ["X=1"], "unknown label 'I'"  # I has no tier now
    else:
        args, needle = MAP + ["--batch-size", "0"], "--batch-size"
    rc = main(["score", path, "--model", model, "--out", str(tmp_path / "o.jsonl"), "--direct", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("taosr: error: ") and needle in err[0], err
    assert not (tmp_path / "o.jsonl").exists()


def test_evaluation_records_carry_p_tier_and_score(sft_run):
    preds = sorted(glob.glob(os.path.join(sft_run, "eval", "*-predictions.jsonl")))
    assert preds
    recs = [json.loads(line) for line in open(preds[-1])]
    assert all({"p_tier", "score", "grade"} <= set(r) for r in recs)
    for r in recs:
        if r["p_tier"] is None:
            assert r["score"] is None
        else:
            assert sum(r["p_tier"]) == pytest.approx(1.0, abs=1e-5) and 1 <= r["score"] <= 4
    metrics = json.load(open(preds[-1].replace("-predictions.jsonl", "-metrics.json")))
    assert "ndcg@10_queries" in metrics and "rmse_grade" not in metrics  # no grades in the synthetic data
