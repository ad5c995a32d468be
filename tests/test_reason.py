"""`taosr reason` (taosr.bootstrap): teacher prompts, choosing a rationale, yield accounting, resume,
bad inputs, and the output training SFT (through --rounds 2).

The teacher is a micro SFT export that has memorised 8 synthetic training pairs, so it writes the
format for those (yield > 0) and fails on unseen ones (pairs left for round 2)."""
from __future__ import annotations

import glob
import json
import os

import pytest

from taosr.bootstrap import (DEMO, PROMPT_VERSION, build_report, format_report, hint_line, merge_tries, pick_rationale,
                             resolve_style, teacher_prompt_text)
from taosr.cli import main
from taosr.reasoning.format import parse_reasoning, render_reasoning
from taosr.schema import load_jsonl
from tests.conftest import ROOT, SMOKE, fit

STEPS = DEMO.steps


# ----------------------------------------------------------------------------- prompts and choice
def test_hint_line_changes_the_prompt_and_only_by_the_hint():
    for style in ("policy", "fewshot"):
        on, off = teacher_prompt_text(DEMO, style, hint=True), teacher_prompt_text(DEMO, style, hint=False)
        assert hint_line(4) in on and "Hint" not in off
        assert on.replace(hint_line(4) + "\n", "") == off
        assert on.endswith("Reasoning:\n") and off.endswith("Reasoning:\n")


def test_fewshot_prompt_shows_the_exact_format_and_auto_style(tmp_path):
    text = teacher_prompt_text(DEMO, "fewshot", hint=False)
    demo = render_reasoning(STEPS, 4)
    assert demo in text and not parse_reasoning(demo).format_error
    assert teacher_prompt_text(DEMO, "policy", hint=False) == "\n".join(text.split("Now this one:\n")[1:])
    export = tmp_path / "export"
    export.mkdir()
    assert resolve_style("auto", str(export)) == "fewshot"
    (export / "taosr_export.json").write_text("{}")
    assert resolve_style("auto", str(export)) == "policy"
    assert resolve_style("fewshot", str(export)) == "fewshot"


def test_pick_rationale_keeps_the_first_sample_with_the_gold_label():
    good, other = render_reasoning(STEPS, 4), render_reasoning(STEPS, 2)
    broken = good.replace("Category match", "Category")
    r = pick_rationale([broken, other, good, good], gold=4)
    assert r["sample"] == 2 and r["steps"] == STEPS
    assert (r["format_errors"], r["mismatches"]) == (1, 1) and "unknown step heading" in r["error"]
    none = pick_rationale([broken, other], gold=4)
    assert none["sample"] is None and none["steps"] is None and none["samples"] == 2


def test_merge_tries_numbers_the_hinted_samples_after_the_plain_ones():
    good, other = render_reasoning(STEPS, 4), render_reasoning(STEPS, 2)
    plain = pick_rationale([other, other], gold=4)
    assert merge_tries(plain, None)["hinted"] is None
    both = merge_tries(plain, pick_rationale([other, good], gold=4))
    assert (both["sample"], both["hinted"], both["samples"], both["mismatches"]) == (3, True, 4, 3)
    assert both["steps"] == STEPS
    failed = merge_tries(plain, pick_rationale([other, "junk"], gold=4))
    assert (failed["sample"], failed["hinted"], failed["samples"], failed["format_errors"]) == (None, None, 4, 1)
    alone = merge_tries(pick_rationale([good], gold=4), None)
    assert (alone["sample"], alone["hinted"]) == (0, False)


def test_report_counts_every_pair_per_tier_type_and_round():
    from taosr.schema import Example, Item

    exs = [Example(query=f"q{i}", item=Item(title="t"), label=(4, 1)[i % 2], query_type=("brand", "qa")[i // 2])
           for i in range(4)]
    ok = {"sample": 0, "steps": STEPS, "format_errors": 0, "mismatches": 0, "samples": 2, "hinted": False}
    bad = {"sample": None, "steps": None, "format_errors": 1, "mismatches": 1, "samples": 2, "hinted": None}
    settings = {"teacher": "t", "prompt_style": "policy", "n": 2}
    results = {1: {0: ok, 1: bad, 2: bad, 3: bad}, 2: {1: bad, 2: ok, 3: bad}}
    rounds = [{"round": 1, "settings": settings, "pairs_sampled_now": 4, "seconds": 2.0},
              {"round": 2, "settings": settings}]
    rep = build_report(exs, results, rounds, skipped=["x"])
    assert (rep["pairs"], rep["kept"], rep["unexplained"], rep["yield"]) == (4, 2, 2, 0.5)
    assert rep["by_tier"] == {"4": {"pairs": 2, "kept": 2, "yield": 1.0}, "1": {"pairs": 2, "kept": 0, "yield": 0.0}}
    assert rep["by_query_type"]["brand"] == {"pairs": 2, "kept": 1, "yield": 0.5}
    r1, r2 = rep["rounds"]
    assert (r1["pairs"], r1["kept"], r1["samples"], r1["format_error_rate"], r1["pairs_per_s"]) == (4, 1, 8, 0.375, 2.0)
    assert r1["label_mismatch_rate"] == 3 / 5
    assert (r2["pairs"], r2["kept"], r2["pairs_per_s"]) == (3, 1, None)
    assert rep["samples"] == 14 and rep["rows_skipped"] == 1
    assert rep["kept_ungrounded"] == 0 and "item step naming nothing of the item" in format_report(rep, "o")
    results[2][2] = dict(ok, kept_ungrounded=1)  # kept, its item step naming nothing of the item: counted
    rep = build_report(exs, results, rounds, skipped=[])
    assert rep["kept_ungrounded"] == 1
    assert "kept with an item step naming nothing of the item 1 of 2 (--require-grounded drops them)" in \
        format_report(rep, "o")


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def memorizer(tmp_path_factory, cache_dir):
    """A micro SFT export trained to memorise 8 synthetic pairs, and a pairs file (no steps): those 8
    plus the 6 unseen validation pairs."""
    root = str(tmp_path_factory.mktemp("memorizer"))
    fit("configs/sft.yaml", root, cache_dir, "--trainer.max_steps", "60", "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "null", "--trainer.logger", "false",
        "--model.init_args.lr", "1e-2", "--model.init_args.warmup_steps", "5", "--data.batch_size", "8",
        "--data.synth.n_train", "8")
    synth = glob.glob(os.path.join(cache_dir, "data", "synth-s0-8-6-6-*"))[0]
    rows = []
    for split in ("train", "val"):
        for ex in load_jsonl(os.path.join(synth, f"{split}.jsonl")):
            d = ex.to_dict()
            d.pop("steps", None)
            rows.append(d)
    pairs = os.path.join(root, "pairs.jsonl")
    with open(pairs, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return os.path.join(root, "export"), pairs


def reason(model, data, out, *extra):
    return main(["reason", "--model", model, "--data", data, "--out", out, "--n", "2", "--max-new-tokens", "96",
                 "--batch-size", "4", "--no-hint", *extra])


def read(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_reason_explains_pairs_and_accounts_for_every_one(memorizer, tmp_path, capsys):
    model, pairs = memorizer
    out = str(tmp_path / "out.jsonl")
    assert reason(model, pairs, out) == 0
    kept, unexplained = read(out), read(out + ".unexplained.jsonl")
    rep = json.load(open(out + ".report.json"))
    assert len(kept) > 0 and len(kept) + len(unexplained) == len(read(pairs)) == rep["pairs"] == 14
    assert {r["id"] for r in kept} | {r["id"] for r in unexplained} == {r["id"] for r in read(pairs)}
    assert rep["kept"] == len(kept) and sum(g["pairs"] for g in rep["by_tier"].values()) == 14
    assert sum(g["kept"] for g in rep["by_query_type"].values()) == len(kept)
    for r in kept:
        p = r["provenance"]
        assert (p["teacher"], p["prompt_version"], p["prompt_style"], p["hint"], p["n"], p["round"]) == \
            (model, PROMPT_VERSION, "policy", "never", 2, 1)
        assert p["sample"] in (0, 1) and p["hinted"] is False and "annotations" not in r
        assert p["selection"] == "label+judgment" and isinstance(p["item_grounded"], bool)
    for ex in load_jsonl(out):  # ordinary taosr data: the schema reads it, steps and provenance included
        assert not parse_reasoning(render_reasoning(ex.steps, ex.label)).format_error and ex.provenance["round"] == 1
    for ex in load_jsonl(out + ".unexplained.jsonl"):
        t = ex.provenance["tries"][0]
        assert ex.steps is None and t["samples"] == 2 and (t["first_error"] is None) == (t["format_errors"] == 0)
    assert not os.path.exists(out + ".partial")
    printed = capsys.readouterr().out
    assert "tier            pairs   kept   yield" in printed and "round  pairs" in printed
    # a complete output is not recomputed
    assert reason(model, pairs, out) == 0
    assert "nothing to do" in capsys.readouterr().out
    rep.pop("run_by_content")  # nor one whose report, of before 2026-12-05, knew its files by path only
    with open(out + ".report.json", "w") as fh:
        json.dump(rep, fh)
    assert reason(model, pairs, out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_files(memorizer, tmp_path, monkeypatch, capsys):
    import taosr.bootstrap as bootstrap

    model, pairs = memorizer
    ref = str(tmp_path / "ref.jsonl")
    assert reason(model, pairs, ref) == 0
    out = str(tmp_path / "out.jsonl")
    real_append, calls = bootstrap.append_jsonl, []

    def append_then_stop(fh, rows):
        real_append(fh, rows)
        calls.append(1)
        if len(calls) == 2:
            fh.write('{"round": 1, "index": 9, "key"')  # a line torn by the crash
            fh.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(bootstrap, "append_jsonl", append_then_stop)
    assert reason(model, pairs, out) == 130
    assert len(read_lines(out + ".partial")) == 9 and not os.path.exists(out)
    monkeypatch.setattr(bootstrap, "append_jsonl", real_append)
    assert reason(model, pairs, out) == 0
    assert "8 of 14 pairs already sampled" in capsys.readouterr().out
    for suffix in ("", ".unexplained.jsonl"):
        assert open(out + suffix).read() == open(ref + suffix).read()
    assert json.load(open(out + ".report.json"))["rounds"][0]["pairs_sampled_now"] == 6


def read_lines(path):
    with open(path) as fh:
        return fh.read().split("\n")


@pytest.mark.parametrize("args, needle", [
    (["--data", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--n", "0"], "--n: must be at least 1"),
    (["--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["--rounds", "0"], "--rounds: must be at least 1"),
    (["--model", "tiny"], "untrained preset"),
    (["--model", "./no/such/export"], "is no folder"),
    (["--column-map", "nonsense"], "--column-map: expected KEY=VALUE"),
    (["--label-map", "E=7"], "--label-map: E=7: a tier must be"),
    (["--prompt-style", "chatty"], "invalid choice"),
    (["--rounds", "2", "--config", "missing.yaml"], "--config: missing.yaml: file not found"),
    (["--rounds", "2", "--fit-args", "'unclosed"], "--fit-args: No closing quotation"),
])
def test_bad_inputs_are_one_line_errors(args, needle, tmp_path, capsys, memorizer):
    model, pairs = memorizer
    base = {"--model": model, "--data": pairs, "--out": str(tmp_path / "out.jsonl")}
    for k in list(base):
        if k in args:
            del base[k]
    argv = ["reason", *[x for kv in base.items() for x in kv], *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not os.listdir(tmp_path)


def test_out_directory_and_bad_row_refused(tmp_path, capsys, memorizer):
    model, pairs = memorizer
    assert main(["reason", "--model", model, "--data", pairs, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(pairs).read() + '{"query": "x", "item": {"title": "t"}, "label": 9}\n')
    assert main(["reason", "--model", model, "--data", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:15: field 'label': unknown label 9" in capsys.readouterr().err


def test_rounds_fine_tune_on_the_kept_rationales_and_retry_the_rest(memorizer, tmp_path, cache_dir):
    """With the hint as fallback (STaR's order), round 1 explains the memorised pairs; `taosr fit --config configs/sft.yaml --data.train <kept>`
    trains a round-1 policy (a 2-step budget); round 2 retries the rest with that export."""
    model, pairs = memorizer
    out = str(tmp_path / "out.jsonl")
    fit_args = "--trainer.max_steps 2 --trainer.logger false --data.batch_size 4"
    assert reason(model, pairs, out, "--hint", "fallback", "--rounds", "2", "--sft-config", os.path.join(ROOT, "configs", "sft.yaml"),
                  "--config", SMOKE, "--fit-args", fit_args) == 0
    rep = json.load(open(out + ".report.json"))
    r1, r2 = rep["rounds"]
    export = os.path.join(out + ".rounds", "round1", "export")
    assert os.path.exists(os.path.join(export, "taosr_export.json"))
    assert (r2["teacher"], r2["prompt_style"]) == (export, "policy")
    assert r2["pairs"] == r1["pairs"] - r1["kept"] and rep["kept"] == r1["kept"] + r2["kept"]
    train = load_jsonl(os.path.join(out + ".rounds", "round1", "train.jsonl"))
    assert len(train) == r1["kept"] and all(ex.steps for ex in train)
    kept, unexplained = read(out), read(out + ".unexplained.jsonl")
    assert len(kept) + len(unexplained) == 14
    assert {r["provenance"]["round"] for r in kept} <= {1, 2}
    for row in unexplained:  # STaR's order: each round n plain samples, then n with the hint
        assert [(t["round"], t["samples"]) for t in row["provenance"]["tries"]] == [(1, 4), (2, 4)]
    assert all(r["provenance"]["hint"] == "fallback" for r in kept)
    assert r1["samples"] == 2 * r1["pairs"] + 2 * (r1["pairs"] - r1["kept"] + r1["kept_with_hint"])


def test_a_moved_tree_given_by_its_new_paths_continues_and_is_not_redone(memorizer, tmp_path, monkeypatch, capsys):
    """A run is known by what its files hold, not by their paths: a second round interrupted, its tree
    copied elsewhere (new modification times), the old one removed and the command given the new
    absolute paths, keeps the ledger of both rounds and the fine-tuned teacher (it used to sample and
    fine-tune everything again), and the finished run is then not recomputed."""
    import shutil

    import taosr.bootstrap as bootstrap

    model, pairs = memorizer
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copytree(model, old / "model")
    shutil.copy(pairs, old / "pairs.jsonl")
    shutil.copy(os.path.join(ROOT, "configs", "sft.yaml"), old / "sft.yaml")

    def run(top):
        return reason(str(top / "model"), str(top / "pairs.jsonl"), str(top / "out.jsonl"), "--hint", "fallback",
                      "--rounds", "2", "--sft-config", str(top / "sft.yaml"), "--config", SMOKE,
                      "--fit-args", "--trainer.max_steps 2 --trainer.logger false --data.batch_size 4")

    real_append = bootstrap.append_jsonl

    def stop_in_round_two(fh, rows):
        real_append(fh, rows)
        if rows[0]["round"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(bootstrap, "append_jsonl", stop_in_round_two)
    assert run(old) == 130
    monkeypatch.setattr(bootstrap, "append_jsonl", real_append)
    ledger = read(str(old / "out.jsonl.partial"))
    sampled = {r: sum(x["round"] == r for x in ledger) for r in (1, 2)}
    assert sampled[1] == 14 and 0 < sampled[2] < 14 - sum(x["result"]["sample"] is not None for x in ledger)
    shutil.copytree(old, new, copy_function=shutil.copy)  # new modification times
    shutil.rmtree(old)
    capsys.readouterr()
    assert run(new) == 0
    printed = capsys.readouterr().out
    assert "sampling it again" not in printed and "fine-tuning" not in printed, printed
    assert "round 1: reusing the fine-tuned teacher" in printed
    assert f"round 2: {sampled[2]} of " in printed and "pairs already sampled" in printed
    export = str(new / "out.jsonl.rounds" / "round1" / "export")
    rep = json.load(open(new / "out.jsonl.report.json"))
    assert [r["teacher"] for r in rep["rounds"]] == [str(new / "model"), export]  # the paths given now
    assert {r["provenance"]["teacher"] for r in read(str(new / "out.jsonl"))} <= {str(new / "model"), export}
    shutil.copytree(new, old, copy_function=shutil.copy)  # finished, and moved once more
    shutil.rmtree(new)
    assert run(old) == 0
    assert "nothing to do" in capsys.readouterr().out
    with open(old / "sft.yaml", "a") as fh:
        fh.write("# a comment: the same settings\n")
    assert run(old) == 0
    assert "nothing to do" in capsys.readouterr().out

    # what the files hold, though: another base config beside the copied one, or another model, is
    # another run (it starts sampling again: stopped at its first batch here)
    def stop_at_once(fh, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(bootstrap, "append_jsonl", stop_at_once)
    (old / "_base").mkdir()
    base = open(os.path.join(ROOT, "configs", "_base", "trainer.yaml")).read()
    assert "seed_everything: 0\n" in base
    (old / "_base" / "trainer.yaml").write_text(base.replace("seed_everything: 0\n", "seed_everything: 7\n"))
    assert run(old) == 130
    shutil.rmtree(old / "_base")
    (old / "model" / "notes.txt").write_text("another file")
    assert run(old) == 130


# ----------------------------------------------------------------------------- scaffolded sampling
def test_scaffold_writes_the_format_and_draws_the_tier_at_the_label_slot(memorizer):
    """Every scaffolded sample is the five headings in order (the teacher writes their lines) and,
    when all five lines ended, a label line whose tier is the teacher's choice at `Label:` (greedy:
    the argmax of label_logprobs); a line that does not end in --step-tokens ends the sample there."""
    import torch

    from taosr.bootstrap import teacher_prompt
    from taosr.eval.generation import GenerationSpec
    from taosr.eval.scores import label_logprobs
    from taosr.labels import STEP_HEADINGS, STEP_KEYS
    from taosr.models.factory import load_for_inference
    from taosr.prompts import encode_prompt
    from taosr.scaffold import scaffold_samples

    model, pairs = memorizer
    m, tok = load_for_inference(model)
    exs = load_jsonl(pairs)[:4]
    prompts = [encode_prompt(tok, teacher_prompt(ex, tok, "policy", hint=False)) for ex in exs]
    torch.manual_seed(0)
    texts = scaffold_samples(m, tok, prompts, GenerationSpec(do_sample=False, max_new_tokens=1), 48)
    assert len(texts) == 4
    headings = [STEP_HEADINGS[k] for k in STEP_KEYS]
    for p, text in zip(prompts, texts):
        lines = text.split("\n")
        assert [ln.split(":", 1)[0] for ln in lines[:5]] == headings[:min(5, len(lines))]
        assert all(ln.split(":", 1)[1].strip() for ln in lines[:5] if ":" in ln)  # no empty line
        parsed = parse_reasoning(text)
        if len(lines) == 6:  # finished: the greedy tier at the label slot
            assert not parsed.format_error, parsed.error
            logp = label_logprobs(m, tok, [p], [text.rsplit("\n", 1)[0] + "\nLabel:"])
            assert parsed.label == int(logp.argmax(-1)) + 1
    assert sum(len(t.split("\n")) == 6 for t in texts) >= 3  # the memoriser ends its lines
    # sampled, n per prompt; a budget too small for any line: each sample stops inside its first step
    short = scaffold_samples(m, tok, prompts[:1], GenerationSpec(do_sample=True, num_return_sequences=2,
                                                                  max_new_tokens=1), 1)
    assert len(short) == 2 and all(t.startswith(headings[0] + ":") and "\n" not in t for t in short)
    assert all(parse_reasoning(t).format_error for t in short)


def test_reason_with_scaffold_records_it_and_refuses_the_free_budget(memorizer, tmp_path, capsys):
    model, pairs = memorizer
    out = str(tmp_path / "out.jsonl")
    assert main(["reason", "--model", model, "--data", pairs, "--out", out, "--n", "2", "--batch-size", "4",
                 "--no-hint", "--scaffold", "--step-tokens", "40"]) == 0
    rep = json.load(open(out + ".report.json"))
    assert rep["rounds"][0]["prompt_style"] == "policy, scaffold" and rep["kept"] > 0
    assert all(r["provenance"]["scaffold"] and r["provenance"]["step_tokens"] == 40 for r in read(out))
    capsys.readouterr()
    for extra, needle in ((["--scaffold", "--max-new-tokens", "50"], "--max-new-tokens: with --scaffold"),
                          (["--step-tokens", "20"], "--step-tokens: the budget of a step's line with --scaffold")):
        assert main(["reason", "--model", model, "--data", pairs, "--out", str(tmp_path / "x.jsonl"), *extra]) == 2
        assert needle in capsys.readouterr().err


def test_a_rationale_whose_item_step_describes_another_product_is_not_kept():
    """The quick start's export explaining another shop's items reached the gold tier with `espresso
    machine (kitchen appliances)` for a cork yoga mat: kept, it teaches the policy to describe another
    product. The item step must name something of the item (a near spelling counts)."""
    from taosr.bootstrap import item_grounded
    from taosr.schema import Example, Item

    mat = Example(query="yoga mat", label=4, item=Item(title="Eco-friendly cork yoga mat", brand="Gaiam"))
    assert not item_grounded("espresso machine (kitchen appliances)", mat)
    assert item_grounded("yoga mats (fitness); brand gaiam", mat)
    assert item_grounded("exercise mat (fitness)", mat)          # one word of the title
    assert item_grounded("floor pad; brand gaim", mat)           # a near spelling of the brand
    assert not item_grounded("the brand and none", mat)          # the step syntax's own words do not count
    shoe = Example(query="red shoes", label=4, item=Item(title="Runner", attributes={"color": "red"}))
    assert item_grounded("sneaker; color red", shoe)             # attributes count
    steps = dict(STEPS, item="espresso machine (kitchen appliances)")
    good, bad = render_reasoning(STEPS, 4), render_reasoning(steps, 4)
    ex = Example(query="q", label=4, item=Item(title=STEPS["item"]))
    r = pick_rationale([bad, good], gold=4, ex=ex)  # required (--require-grounded): the first is rejected
    assert (r["sample"], r["ungrounded"], r["kept_ungrounded"]) == (1, 1, 0)
    r = pick_rationale([bad, good], gold=4, ex=ex, require_grounded=False)  # the default: kept, and marked
    assert (r["sample"], r["ungrounded"], r["kept_ungrounded"]) == (0, 0, 1)
    assert pick_rationale([bad], gold=4)["sample"] == 0  # without the pair: nothing to check


def test_require_grounded_keeps_only_rationales_that_name_the_item(memorizer, tmp_path):
    model, pairs = memorizer
    out = str(tmp_path / "g.jsonl")
    assert reason(model, pairs, out, "--require-grounded", "--limit", "6") == 0
    kept = read(out)
    assert all(r["provenance"]["selection"] == "label+judgment+item" and r["provenance"]["item_grounded"] for r in kept)


def test_every_gold_item_step_of_the_synthetic_data_is_grounded(tmp_path):
    from taosr.bootstrap import item_grounded
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig

    dm = RelevanceDataModule(synth=SynthConfig(n_train=600, n_val=100, n_test=100), data_dir=str(tmp_path))
    dm.setup("fit")
    exs = [ex for split in ("train", "val", "test") for ex in dm.splits[split]]
    assert len(exs) == 800 and all(item_grounded(ex.steps["item"], ex) for ex in exs)
