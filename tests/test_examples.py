"""examples/: the scripts a user copies to use an export outside taosr."""
import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def _example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_judging_with_plain_transformers_writes_what_taosr_score_writes(tmp_path, sft_run):
    """The prompt is the one taosr trained with: plain transformers' greedy completion of each pair is
    the reasoning `taosr score` generates for it."""
    from taosr.cli import main

    mod = _example("judge_with_transformers")
    export = os.path.join(sft_run, "export")
    got = mod.judge(export, mod.PAIRS, max_new_tokens=24)
    rows = [{"id": f"p{i}", "query": q, "item": {k: v for k, v in vars(item).items() if v}, "label": 1}
            for i, (q, item) in enumerate(mod.PAIRS)]
    data, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(data), "--model", export, "--out", str(out), "--max-new-tokens", "24"]) == 0
    scored = [json.loads(line)["reasoning"] for line in out.read_text().splitlines()]
    assert [text for _, text in got] == scored
    assert got[0][0].startswith("Query: red running shoes\nProduct: Nike Air Zoom") and got[0][0].endswith("Reasoning:\n")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "judge_with_transformers.py"), export,
                        "--max-new-tokens", "24"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count(" -> ") == len(mod.PAIRS)
