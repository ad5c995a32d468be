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
    path = str(tmp_path / "eval" / PARTIAL)
    p = PartialEval(path, "k1")
    assert p.kept == {}
    p.add([{"index": 0, "prompt": "d0", "text": "a"}, {"index": 1, "prompt": "d1", "text": "b"}])
    with open(path, "a") as fh:
        fh.write('{"index": 2, "prompt": "d2", "te')  # killed in the middle of a write
    again = PartialEval(path, "k1")
    assert sorted(again.kept) == [0, 1] and again.get(1, "d1")["text"] == "b"
    assert again.get(1, "other prompt") is None and again.get(5, "d5") is None
    assert open(path).read().count("\n") == 3  # header + the two whole lines: the torn one is gone
    assert PartialEval(path, "k2").kept == {}  # another model or settings: started over
    assert PartialEval(path, "k1").kept == {}
    again.done()
    assert not os.path.exists(path)


def test_prompt_digest_ignores_padding():
    ids = torch.tensor([0, 0, 5, 6, 7])
    assert prompt_digest(ids, torch.tensor([0, 0, 1, 1, 1])) == prompt_digest(torch.tensor([5, 6, 7]), torch.ones(3))
    assert prompt_digest(ids, torch.tensor([0, 0, 1, 1, 1])) != prompt_digest(torch.tensor([5, 6, 8]), torch.ones(3))


@pytest.mark.parametrize("scores", [False, True])
def test_an_interrupted_test_continues_with_the_completions_it_kept(tmp_path, sft_run, cache_dir, capsys, monkeypatch,
                                                                  scores):
    import taosr.methods.base as base

    def args(root):
        return ["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(str(root), cache_dir),
                "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"), "--trainer.logger", "false",
                "--data.eval_batch_size", "2", "--model.init_args.eval_scores", str(scores).lower()]
    if scores:  # the micro model writes no label line (no P(tier)): give every record a score of its own
        def add_scores(self, recs, batch, rows, ids=None, capture=None):
            for r in recs:
                r.update(p_tier=[0.1, 0.2, 0.3, 0.4], score=1.0 + r["index"] / 10, grade=None)
        monkeypatch.setattr(base.RelevanceModule, "_add_scores", add_scores)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(args(whole)) == 0
    real, calls = base.generate_ids, []

    def generate_then_stop(*a, **k):  # Ctrl-C in the third batch of three
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(base, "generate_ids", generate_then_stop)
    assert main(args(part)) == 130  # Ctrl-C
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
