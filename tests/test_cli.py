"""The `taosr` command: help, data synth -> data check, one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from taosr.cli import main
from tests.conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "taosr.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "predict", "data", "sample"):
        assert f"  {cmd}" in out


def test_synth_then_check(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "60", "--seed", "4"]) == 0
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.jsonl").exists()
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "train.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "60" in out and "negation" in out


def test_heldout_then_check(tmp_path, capsys):
    out = tmp_path / "heldout.jsonl"
    assert main(["data", "heldout", "--out", str(out), "--n", "30"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    assert "30 examples OK" in capsys.readouterr().out


def test_malformed_file_gets_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"query": "red shoes", "item": {"title": "Red Shoes"}, "label": 4}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": "X"}) + "\n")
    r = run("data", "check", str(bad))
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "bad.jsonl:2" in lines[0] and "label" in lines[0]
    assert "Traceback" not in r.stderr


def test_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"query": "a", \n')
    r = run("data", "check", str(bad))
    assert r.returncode == 2 and "broken.jsonl:1" in r.stderr and "invalid JSON" in r.stderr
    r = run("data", "check", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_verbose_shows_traceback(tmp_path):
    r = run("data", "check", str(tmp_path / "nope.jsonl"), "--verbose")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_command():
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--model.init_args.bogus", "3"], "Option 'bogus' is not accepted"),
    (["--data.bogus", "3"], "unrecognized arguments: --data.bogus"),
    (["--trainer.max_steps", "x"], 'Parser key "trainer.max_steps"'),
])
def test_bad_config_key_or_value_gets_one_line_error(capsys, args, needle):
    rc = main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("taosr: error: ") and needle in err[0], err
