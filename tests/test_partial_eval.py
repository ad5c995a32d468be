"""An interrupted `taosr test` keeps its completions (taosr/eval/partial.py): run again, it generates
only the batches it had not, and ends with the uninterrupted run's files."""
import json
import os

import pytest
import torch

from taosr.cli import main
from taosr.eval.partial import PARTIAL, PartialEval, prompt_digest
from tests.conftest import ROOT, small_overrides


def test_partial_file_keeps_its_rows_and_drops_a_torn_line_or_another_key(tmp_path):
    folder = str(tmp_path / "eval")
    path = os.path.join(folder, PARTIAL)
    p = PartialEval(folder, "k1")
    assert p.kept == {} and p.path == path
    p.add([{"index": 0, "prompt": "d0", "text": "a"}, {"index": 1, "prompt": "d1", "text": "b"}])
    with open(path, "a") as fh:
        fh.write('{"index": 2, "prompt": "d2", "te')  # killed in the middle of a write
    again = PartialEval(folder, "k1")
    assert sorted(again.kept) == [0, 1] and again.get(1, "d1")["text"] == "b"
    assert again.get(1, "other prompt") is None and again.get(5, "d5") is None
    assert open(path).read().count("\n") == 3  # header + the two whole lines: the torn one is gone
    assert PartialEval(folder, "k2").kept == {}  # another model or settings: started over
    assert PartialEval(folder, "k1").kept == {}
    again.done()
    assert not os.path.exists(path)


def test_each_rank_keeps_a_file_and_reads_them_all_with_any_number_of_processes(tmp_path):
    """A DDP `taosr test` (one file per rank) continues with another number of processes: the
    completions are known by index and prompt, not by the rank that made them."""
    folder = str(tmp_path / "eval")
    read = []
    ranks = [PartialEval(folder, "k", rank=r, world_size=3, barrier=lambda: read.append(1)) for r in range(3)]
    assert len(read) == 3 and [os.path.basename(p.path) for p in ranks] == [f"test-partial.rank{r}.jsonl" for r in range(3)]
    for r, p in enumerate(ranks):
        p.add([{"index": r, "prompt": f"d{r}", "text": f"t{r}"}, {"index": 3 + r, "prompt": f"d{3 + r}", "text": "x"}])
    with open(ranks[2].path, "a") as fh:
        fh.write('{"index": 9, "pro')  # rank 2 killed mid-write
    two = [PartialEval(folder, "k", rank=r, world_size=2) for r in range(2)]
    assert all(sorted(p.kept) == [0, 1, 2, 3, 4, 5] for p in two)
    one = PartialEval(folder, "k")  # and then on one process
    assert sorted(one.kept) == [0, 1, 2, 3, 4, 5] and one.get(2, "d2")["text"] == "t2"
    open(os.path.join(folder, "test-predictions.jsonl"), "w").close()  # not a partial file
    two[1].done()  # only rank 0 removes them: the others may still be reading
    assert len([n for n in os.listdir(folder) if n.startswith("test-partial")]) == 4  # ranks 0-2, and one process
    two[0].done()
    assert os.listdir(folder) == ["test-predictions.jsonl"]


def test_prompt_digest_ignores_padding():
    ids = torch.tensor([0, 0, 5, 6, 7])
    assert prompt_digest(ids, torch.tensor([0, 0, 1, 1, 1])) == prompt_digest(torch.tensor([5, 6, 7]), torch.ones(3))
    assert prompt_digest(ids, torch.tensor([0, 0, 1, 1, 1])) != prompt_digest(torch.tensor([5, 6, 8]), torch.ones(3))


def _test_args(root, sft_run, cache_dir, scores: bool = False) -> list[str]:
    """`taosr test` of the micro SFT export on the 6 test examples, 3 batches of 2."""
    return ["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(str(root), cache_dir),
            "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"), "--trainer.logger", "false",
            "--data.eval_batch_size", "2", "--model.init_args.eval_scores", str(scores).lower()]


def _whole_then_stopped(tmp_path, args, monkeypatch):
    """The uninterrupted run's folder, and a run Ctrl-C'd in its third batch of three; returns the
    two folders, the real ``generate_ids`` and the list its calls are counted in."""
    import taosr.methods.base as base

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(args(whole)) == 0
    real, calls = base.generate_ids, []

    def generate_then_stop(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(base, "generate_ids", generate_then_stop)
    assert main(args(part)) == 130  # Ctrl-C
    return whole, part, real, calls


@pytest.mark.parametrize("scores", [False, True])
def test_an_interrupted_test_continues_with_the_completions_it_kept(tmp_path, sft_run, cache_dir, capsys, monkeypatch,
                                                                  scores):
    import taosr.methods.base as base

    if scores:  # the micro model writes no label line (no P(tier)): give every record a score of its own
        def add_scores(self, recs, batch, rows, ids=None, capture=None):
            for r in recs:
                r.update(p_tier=[0.1, 0.2, 0.3, 0.4], score=1.0 + r["index"] / 10, grade=None)
        monkeypatch.setattr(base.RelevanceModule, "_add_scores", add_scores)

    def args(root):
        return _test_args(root, sft_run, cache_dir, scores)
    whole, part, real, calls = _whole_then_stopped(tmp_path, args, monkeypatch)
    kept = [json.loads(line) for line in open(part / "eval" / PARTIAL)][1:]
    assert [r["index"] for r in kept] == [0, 1, 2, 3] and not (part / "eval" / "test-metrics.json").exists()

    calls.clear()
    monkeypatch.setattr(base, "generate_ids", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    capsys.readouterr()
    assert main(args(part)) == 0
    assert "taosr: test: continuing: 4 completions kept" in capsys.readouterr().out
    assert len(calls) == 1  # the third batch only
    for name in ("test-metrics.json", "test-predictions.jsonl"):
        assert (part / "eval" / name).read_text() == (whole / "eval" / name).read_text(), name
    assert not (part / "eval" / PARTIAL).exists() and not (whole / "eval" / PARTIAL).exists()
    if scores:
        preds = [json.loads(line) for line in open(part / "eval" / "test-predictions.jsonl")]
        assert [p["score"] for p in preds] == [1.0 + i / 10 for i in range(6)]


@pytest.mark.slow  # two processes (gloo)
def test_a_test_stopped_on_one_process_continues_on_two(tmp_path, sft_run, cache_dir, monkeypatch):
    """The completions are known by index and prompt, not by rank: a `taosr test` interrupted in one
    process continues under DDP (2 CPU processes, gloo), whose ranks read the file and write their own."""
    import subprocess
    import sys

    def args(root):
        return _test_args(root, sft_run, cache_dir)
    whole, part, _, _ = _whole_then_stopped(tmp_path, args, monkeypatch)
    lines = open(part / "eval" / PARTIAL).read().splitlines()
    kept = [json.loads(line) for line in lines[1:]]
    assert [k["index"] for k in kept] == [0, 1, 2, 3]
    for k in kept:  # marked, so the predictions show which completions were taken from the file
        k["text"] = f"kept {k['index']}"
    (part / "eval" / PARTIAL).write_text("\n".join([lines[0], *map(json.dumps, kept)]) + "\n")
    cmd = [sys.executable, "-m", "taosr.cli", *args(part), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", "ddp"]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("taosr: test: continuing: 4 completions kept") == 1, r.stdout  # said once, by rank 0
    preds = {p["index"]: p for p in map(json.loads, open(part / "eval" / "test-predictions.jsonl"))}
    ref = {p["index"]: p for p in map(json.loads, open(whole / "eval" / "test-predictions.jsonl"))}
    assert sorted(preds) == list(range(6))
    assert [preds[i]["reasoning"] for i in range(6)] == ["kept 0", "kept 1", "kept 2", "kept 3",
                                                        ref[4]["reasoning"], ref[5]["reasoning"]]
    assert not [n for n in os.listdir(part / "eval") if n.startswith("test-partial")]
