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


def test_synth_and_heldout_write_the_item_fields_asked_for(tmp_path, capsys):
    """--price-share / --category-share / --description-share: items without a price, with a
    category path, with a description; the same
    examples otherwise (the held-out set's items with and without the fields pair up)."""
    rows = lambda path: [json.loads(line) for line in open(path)]  # noqa: E731
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "60", "--price-share", "0",
                 "--category-share", "1"]) == 0
    assert all(r["item"]["price"] is None and " > " in r["item"]["category"] for r in rows(tmp_path / "s" / "train.jsonl"))
    assert main(["data", "heldout", "--out", str(tmp_path / "full.jsonl"), "--n", "20"]) == 0
    assert main(["data", "heldout", "--out", str(tmp_path / "bare.jsonl"), "--n", "20", "--price-share", "0"]) == 0
    full, bare = rows(tmp_path / "full.jsonl"), rows(tmp_path / "bare.jsonl")
    assert all(f["item"]["price"] is not None and b["item"]["price"] is None for f, b in zip(full, bare))
    assert [(f["query"], f["item"]["title"], f["label"]) for f in full] == [(b["query"], b["item"]["title"], b["label"]) for b in bare]
    assert main(["data", "heldout", "--out", str(tmp_path / "desc.jsonl"), "--n", "20", "--description-share", "1"]) == 0
    desc = rows(tmp_path / "desc.jsonl")
    assert all("description" not in f["item"] and d["item"]["description"] for f, d in zip(full, desc))
    assert [(f["query"], f["item"]["title"], f["label"]) for f in full] == [(d["query"], d["item"]["title"], d["label"]) for d in desc]
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "60", "--description-share", "1"]) == 0
    assert all(r["item"]["description"] for r in rows(tmp_path / "d" / "test.jsonl"))


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
    # a nested option is named whole, with the method's help (was: Parser key "model": Expected a <class 'float'>)
    (["--model.init_args.lr", "abc"], "--model.init_args.lr: Expected a <class 'float'>, got 'abc' "
                                      "(taosr fit --model.help SFTModule lists its options)"),
    (["--model.init_args.lrr", "3"], "--model.init_args.lrr: Option 'lrr' is not accepted"),
    (["--config", "model:\n  init_args:\n    eval_generation:\n      max_new_tokens: 1.5\n"],
     "model.init_args.eval_generation.max_new_tokens: Expected a <class 'int'>. Got value: 1.5 (a nested key of a --config file"),
    # LightningCLI's own optimizer groups are off: the methods configure theirs (model.init_args.lr, scheduler)
    (["--optimizer", "torch.optim.SGD"], "unrecognized arguments: --optimizer"),
    (["--lr_scheduler", "torch.optim.lr_scheduler.StepLR"], "unrecognized arguments: --lr_scheduler"),
    (["--seed_everything", "-5"], "seed_everything: must be in [0, 2**32 - 1]"),  # was a traceback
    # an overlay interpolating a key of another file: one line saying where ${...} resolves (was 106 lines)
    (["--config", "trainer:\n  default_root_dir: runs/lr_${model.init_args.lr}\n"],
     "Interpolation key 'model.init_args.lr' not found: ${...} resolves within one config file"),
])
def test_bad_config_key_or_value_gets_one_line_error(capsys, args, needle):
    rc = main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("taosr: error: ") and needle in err[0], err


def test_short_method_names_and_piped_help(tmp_path, capsys):
    """--model DPOModule resolves (every method is imported before the parser is built); the top-level
    help piped into a reader that leaves early ends quietly."""
    rc = main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"), "--model", "DPOModule", "--print_config"])
    out = capsys.readouterr().out
    assert rc == 0 and "class_path: taosr.methods.dpo.DPOModule" in out
    r = subprocess.run(f"{sys.executable} -m taosr.cli --help | head -1", shell=True, capture_output=True, text=True)
    assert r.stdout.startswith("usage: taosr") and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_a_copied_method_config_finds_its_base(tmp_path, monkeypatch, capsys):
    """configs/sft.yaml copied into a project folder: its base (_base/trainer.yaml) comes from taosr's
    checkout, as the file itself would (was: base config '_base/trainer.yaml' not found)."""
    import shutil

    from taosr.configfiles import resolve_file

    (tmp_path / "configs").mkdir()
    shutil.copy(os.path.join(ROOT, "configs", "sft.yaml"), tmp_path / "configs" / "sft.yaml")
    monkeypatch.chdir(tmp_path)
    data, had_bases = resolve_file("configs/sft.yaml")
    assert had_bases and "trainer" in data
    assert "using taosr's own" in capsys.readouterr().err
    shutil.copy(os.path.join(ROOT, "configs", "sft.yaml"), tmp_path / "mysft.yaml")  # another name, another folder
    assert resolve_file(str(tmp_path / "mysft.yaml"))[0] == data


def test_taosr_files_missing_outside_a_checkout_say_why(tmp_path, monkeypatch):
    """Installed from a wheel (no checkout beside the package), configs/, comparisons/ and sweeps/
    paths are missing: the error says so (the quick start said "'tiny' is not a model with budgets")."""
    import taosr.configfiles as cf
    from taosr.errors import ConfigError
    from taosr.quickstart_plan import budgets_file_for

    monkeypatch.setattr(cf, "project_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"configs/sft.yaml: config file not found here, and taosr is not installed "
                                          r"from its source checkout.*pip install -e"):
        cf.load_yaml("configs/sft.yaml")
    with pytest.raises(ConfigError, match=r"configs/quickstart: folder of per-model budgets not found here, and taosr"):
        budgets_file_for("tiny")
    with pytest.raises(ConfigError, match=r"^mine.yaml: config file not found$"):  # a user's own file: as before
        cf.load_yaml("mine.yaml")
