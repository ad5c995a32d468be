"""Flags of `taosr sample`, `taosr reason` and `taosr score` that other flags would make silent no-ops
are refused in one line (exit 2) before any work; and those commands prompt a taosr export with or
without its tokenizer's chat template as it was trained (``use_chat_template`` in its
``taosr_export.json``).

The argument checks run without a model (``--model`` names nothing loadable, so a check that does not
fire ends in another error, never in work). The prompt tests build a micro model (no training) whose
tokenizer gets a chat template, export it with and without ``use_chat_template: false`` and decode
the token ids each command actually feeds the model.
"""
from __future__ import annotations

import json
import os

import pytest

from taosr.bootstrap import _check_args, build_parser
from taosr.cli import main
from taosr.data.synth import SynthConfig, generate

SYNTH = ["--synth-n-train", "8", "--synth-n-val", "2", "--synth-n-test", "2"]


def _pairs(tmp, n=3) -> str:
    path = tmp / "pairs.jsonl"
    rows = [{"query": f"red shoes {i}", "item": {"title": f"Red Running Shoes {i}"}, "label": 1 + i % 4} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def options_given(p, argv):
    from taosr.cliargs import options_given  # (imported here: the CLI tests also run where it is missing)

    return options_given(p, argv)


def _refused(argv, capsys, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------------- options_given
def test_options_given_counts_flags_on_the_command_line_only():
    p = build_parser()
    argv = ["--model", "m", "--data", "d", "--out", "o", "--top-p", "0.95", "--no-hint", "--config", "x.yaml"]
    given = options_given(p, argv)
    assert {"top_p", "hint", "config", "model", "data", "out"} == given  # --top-p at its default counts
    assert p.get_default("top_p") == 0.95 and p.get_default("config") == []  # the parser's defaults are back
    assert p.parse_args(["--model", "m", "--data", "d", "--out", "o"]).temperature == 0.7
    assert "top_p" in options_given(p, ["--model", "m", "--data", "d", "--out", "o", "--top", "0.5"])  # abbreviated


# ----------------------------------------------------------------------------- 1. greedy with --n > 1
@pytest.mark.parametrize("extra, needles", [
    (["--temperature", "0", "--n", "4"], ("--n 4", "--temperature 0 is greedy", "same text")),
    (["--temperature", "0"], ("--n 8", "--temperature 0 is greedy")),  # sample's default --n is 8
    (["--temperature", "0", "--n", "1", "--top-p", "0.9"], ("--top-p", "--temperature 0")),
    (["--temperature", "0.0", "--n", "1", "--top-p", "1.0"], ("--top-p", "--temperature 0")),
])
def test_sample_refuses_n_and_top_p_when_greedy(extra, needles, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    _refused(["sample", "--model", str(tmp_path / "nomodel"), "--out", str(out), *SYNTH, "--data-dir",
              str(tmp_path / "data"), *extra], capsys, *needles)
    assert sorted(os.listdir(tmp_path)) == []  # refused before any work: no data, no output


@pytest.mark.parametrize("extra, needles", [
    (["--temperature", "0"], ("--n 4", "--temperature 0 is greedy")),  # reason's default --n is 4
    (["--temperature", "0", "--n", "2"], ("--n 2", "greedy")),
    (["--temperature", "0", "--n", "1", "--top-p", "0.95"], ("--top-p", "--temperature 0")),  # its default, given
])
def test_reason_refuses_n_and_top_p_when_greedy(extra, needles, tmp_path, capsys):
    (tmp_path / "teacher").mkdir()
    data = _pairs(tmp_path)
    _refused(["reason", "--model", str(tmp_path / "teacher"), "--data", data, "--out", str(tmp_path / "o.jsonl"),
              *extra], capsys, *needles)
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl", "teacher"]


def test_greedy_with_one_sample_passes_the_checks(tmp_path):
    (tmp_path / "teacher").mkdir()
    data = _pairs(tmp_path)
    p = build_parser()
    argv = ["--model", str(tmp_path / "teacher"), "--data", data, "--out", str(tmp_path / "o.jsonl"),
            "--temperature", "0", "--n", "1"]
    assert _check_args(p.parse_args(argv), options_given(p, argv)) == []


# ----------------------------------------------------------------------------- 2. synthetic-data flags with --data FILE
@pytest.mark.parametrize("flag, value", [("--synth-n-train", "100"), ("--synth-n-val", "5"), ("--synth-n-test", "5"),
                                         ("--synth-seed", "3"), ("--synth-seed", "0"),  # 0: its default, still given
                                         ("--synth-price-share", "0.5"), ("--synth-category-share", "0.5"),
                                         ("--synth-description-share", "0.5"),
                                         ("--data-dir", "somewhere")])
def test_sample_refuses_synth_flags_with_a_data_file(flag, value, tmp_path, capsys):
    data = _pairs(tmp_path)
    err = _refused(["sample", "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "s.jsonl"),
                    "--data", data, flag, value], capsys, flag, "--data synth", data)
    assert err.startswith(f"taosr: error: {flag}:")
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl"]


def test_score_refuses_max_new_tokens_with_direct(tmp_path, capsys):
    """--direct scores 'Label:' after the prompt in one forward pass: it generates nothing."""
    data = _pairs(tmp_path)
    _refused(["score", data, "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o.jsonl"), "--direct",
              "--max-new-tokens", "16"], capsys, "--max-new-tokens", "--direct")
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl"]


# ----------------------------------------------------------------------------- 3. fine-tuning flags with --rounds 1
@pytest.mark.parametrize("extra", [
    ["--sft-config", "configs/sft.yaml"],  # its default, given
    ["--config", "configs/experiment/smoke.yaml"],
    ["--fit-args", "--trainer.max_steps 2"],
    ["--rounds", "1", "--fit-args", "--trainer.max_steps 2"],
])
def test_reason_refuses_fine_tuning_flags_with_one_round(extra, tmp_path, capsys):
    (tmp_path / "teacher").mkdir()
    data = _pairs(tmp_path)
    flag = next(x for x in extra if x != "--rounds" and x.startswith("--"))
    err = _refused(["reason", "--model", str(tmp_path / "teacher"), "--data", data, "--out", str(tmp_path / "o.jsonl"),
                    *extra], capsys, flag, "only used between rounds; add --rounds 2 or more")
    assert err.startswith(f"taosr: error: {flag}:")
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl", "teacher"]


def test_reason_keeps_fine_tuning_flags_with_two_rounds(tmp_path):
    from tests.conftest import ROOT, SMOKE

    (tmp_path / "teacher").mkdir()
    data = _pairs(tmp_path)
    p = build_parser()
    argv = ["--model", str(tmp_path / "teacher"), "--data", data, "--out", str(tmp_path / "o.jsonl"), "--rounds", "2",
            "--sft-config", os.path.join(ROOT, "configs", "sft.yaml"), "--config", SMOKE, "--fit-args",
            "--trainer.max_steps 2"]
    assert _check_args(p.parse_args(argv), options_given(p, argv)) == ["--trainer.max_steps", "2"]


# ----------------------------------------------------------------------------- 4. the export's chat template setting
TEMPLATE = ("{% for m in messages %}[USER] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[BOT] {% endif %}")


@pytest.fixture(scope="module")
def chat_exports(tmp_path_factory):
    """Two exports of one untrained micro model whose tokenizer has a chat template: ``plain`` records
    ``use_chat_template: false`` (trained without it), ``chat`` records nothing (the tokenizer decides);
    and a pairs file."""
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer, save_export
    from taosr.prompts import INSTRUCTION, policy_prompt
    from taosr.reasoning.format import render_reasoning

    root = tmp_path_factory.mktemp("chat")
    splits = generate(SynthConfig(n_train=8, n_val=4, n_test=0, seed=3))
    rows = splits["train"] + splits["val"]
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({k: v for k, v in ex.to_dict().items() if k != "steps"}) + "\n"
                             for ex in splits["val"]))
    corpus = lambda: [policy_prompt(ex) for ex in rows] + [render_reasoning(ex.steps, ex.label) for ex in rows  # noqa: E731
                                                             if ex.steps] + [INSTRUCTION]
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(root / "models"), vocab_size=512),
                                          corpus=corpus)
    tok.chat_template = TEMPLATE
    out = {name: save_export(model, tok, str(root / name), meta=meta)
           for name, meta in (("plain", {"target": "reasoning", "use_chat_template": False}),
                              ("chat", {"target": "reasoning"}))}
    return out, str(pairs)


def _spy_datamodule_prompts(monkeypatch, tok) -> list[str]:
    """The prompts a DataModule feeds the model (collate_prompts' ids, padding dropped), decoded."""
    from taosr.data.datamodule import RelevanceDataModule

    seen, real = [], RelevanceDataModule.collate_prompts

    def spy(self, batch):
        out = real(self, batch)
        for ids, mask in zip(out["input_ids"].tolist(), out["attention_mask"].tolist()):
            seen.append(tok.decode([t for t, m in zip(ids, mask) if m]))
        return out

    monkeypatch.setattr(RelevanceDataModule, "collate_prompts", spy)
    return seen


def _check_prompts(seen: list[str], chat: bool, n: int):
    assert len(seen) == n, seen
    for text in seen:
        assert ("[USER]" in text) == chat and ("[BOT]" in text) == chat, text
        # the instruction (each target's own) comes with the template, as in training
        assert ("Judge how relevant the product is" in text) == chat, text
        if not chat:
            assert text.startswith("Query: "), text


@pytest.mark.parametrize("name, chat", [("plain", False), ("chat", True)])
def test_sample_prompts_the_export_as_it_was_trained(name, chat, chat_exports, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    exports, pairs = chat_exports
    tok = AutoTokenizer.from_pretrained(exports[name])
    assert tok.chat_template == TEMPLATE
    seen = _spy_datamodule_prompts(monkeypatch, tok)
    assert main(["sample", "--model", exports[name], "--out", str(tmp_path / "s.jsonl"), "--data", pairs, "--n", "1",
                 "--limit", "2", "--max-new-tokens", "2"]) == 0
    _check_prompts(seen, chat, 2)
    err = capsys.readouterr().err
    assert ("data.use_chat_template: false: prompting it alike" in err) == (not chat), err


@pytest.mark.parametrize("name, chat", [("plain", False), ("chat", True)])
@pytest.mark.parametrize("mode", ["--direct", "--reasoning"])
def test_score_prompts_the_export_as_it_was_trained(name, chat, mode, chat_exports, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    exports, pairs = chat_exports
    seen = _spy_datamodule_prompts(monkeypatch, AutoTokenizer.from_pretrained(exports[name]))
    args = ["--max-new-tokens", "2"] if mode == "--reasoning" else []
    assert main(["score", pairs, "--model", exports[name], "--out", str(tmp_path / "o.jsonl"), mode, "--limit", "2",
                 *args]) == 0
    _check_prompts(seen, chat, 2)


@pytest.mark.parametrize("name, chat", [("plain", False), ("chat", True)])
def test_reason_prompts_an_export_teacher_as_it_was_trained(name, chat, chat_exports, tmp_path, monkeypatch):
    import taosr.data.collate as collate
    from transformers import AutoTokenizer

    exports, pairs = chat_exports
    tok = AutoTokenizer.from_pretrained(exports[name])
    seen, real = [], collate.pad_left

    def spy(ids, pad):
        seen.extend(tok.decode(x) for x in ids)
        return real(ids, pad)

    monkeypatch.setattr(collate, "pad_left", spy)
    assert main(["reason", "--model", exports[name], "--data", pairs, "--out", str(tmp_path / "o.jsonl"), "--n", "1",
                 "--limit", "2", "--max-new-tokens", "2", "--no-hint"]) == 0
    _check_prompts(seen, chat, 2)
    assert all("Reasoning:" in t for t in seen)
