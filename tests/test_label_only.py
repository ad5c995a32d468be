"""configs/experiment/label_only.yaml (data.target: label, issue #14) smoke-runs with the SFT, DPO
and GRPO configs on the micro model; SRPO refuses it in one line."""
import glob
import json
import math
import os
import re

import lightning.pytorch  # noqa: F401 - imported at collection: its log handler then writes to the session's
import pytest              # stderr, not to the capsys stream of the first test that imports it (closed later)

from taosr.cli import main
from tests.conftest import ROOT, fit, rl_samples_overrides, small_overrides

LABEL_ONLY = "configs/experiment/label_only.yaml"
LABEL_LINE = re.compile(r"^Label: [1-4]$")


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_overlay_sets_the_target_and_short_generations(capsys, method):
    import yaml

    assert main(["fit", "--config", os.path.join(ROOT, "configs", f"{method}.yaml"), "--config",
                 os.path.join(ROOT, LABEL_ONLY), "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["target"] == "label" and cfg["model"]["init_args"]["eval_generation"]["max_new_tokens"] == 8
    # the method config is otherwise intact (the overlay replaces no list)
    names = [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]]
    assert ("RolloutCallback" in names) == (method == "grpo") and "Checkpoint" in names


@pytest.fixture(scope="module")
def label_sft(tmp_path_factory, cache_dir):
    """36 label-only SFT steps of the micro model (3 epochs of the 48 smoke rows), evaluated at the end."""
    root = str(tmp_path_factory.mktemp("label_sft"))
    fit("configs/sft.yaml", root, cache_dir, "--trainer.max_steps", "36", "--trainer.max_epochs", "-1",
        "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "36",
        "--model.init_args.eval_generation.max_new_tokens", "8", overlays=(LABEL_ONLY,))
    return root


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_label_sft_writes_label_lines_and_scores_them(label_sft, cache_dir):
    """After a few dozen steps the policy writes `Label: N` and stops; the metrics have a finite macro
    F1 and NaN step metrics (no steps are written or judged); `taosr test` scores the test split the same way."""
    val = _records(glob.glob(os.path.join(label_sft, "eval", "val-step36-predictions.jsonl"))[0])
    assert len(val) == 4 and all(LABEL_LINE.match(r["reasoning"]) for r in val), [r["reasoning"] for r in val]
    assert all(not r["format_error"] and r["pred"] == int(r["reasoning"][-1]) and r["steps"] == {} for r in val)
    assert all(set(r["step_verdicts"].values()) == {None} for r in val)
    m = json.load(open(os.path.join(label_sft, "eval", "val-step36-metrics.json")))
    assert math.isfinite(m["macro_f1"]) and m["format_error_rate"] == 0.0 and math.isnan(m["step_accuracy"])

    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), "--config", os.path.join(ROOT, LABEL_ONLY)]
    args += small_overrides(label_sft, cache_dir) + ["--model.init_args.eval_generation.max_new_tokens", "8",
                                                     "--ckpt_path", os.path.join(label_sft, "checkpoints", "last.ckpt")]
    assert main(args) == 0
    test = _records(os.path.join(label_sft, "eval", "test-predictions.jsonl"))
    assert len(test) == 6 and sum(bool(LABEL_LINE.match(r["reasoning"])) for r in test) >= 5
    m = json.load(open(os.path.join(label_sft, "eval", "test-metrics.json")))
    assert math.isfinite(m["macro_f1"]) and math.isnan(m["step_accuracy"])


def test_the_export_records_its_target_and_evaluation_and_score_use_it(label_sft, cache_dir, capsys, tmp_path):
    """A label-only export says so (taosr_export.json): `taosr score` prompts it the way it was trained
    without --target, and an evaluation with the reasoning prompt warns."""
    from taosr.models.factory import export_meta

    export = os.path.join(label_sft, "export")
    assert export_meta(export)["target"] == "label"
    out = tmp_path / "scores.jsonl"
    heldout = tmp_path / "h.jsonl"
    assert main(["data", "heldout", "--out", str(heldout), "--n", "6"]) == 0
    assert main(["score", str(heldout), "--model", export, "--out", str(out), "--max-new-tokens", "8"]) == 0
    rows = _records(str(out))
    assert len(rows) == 6 and sum(bool(LABEL_LINE.match(r["reasoning"])) for r in rows) >= 5  # the label prompt
    capsys.readouterr()
    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(str(tmp_path / "t"), cache_dir),
            "--model.init_args.model.name_or_path", export, "--model.init_args.eval_generation.max_new_tokens", "8",
            "--trainer.logger", "false"]
    assert main(args) == 0
    assert f"{export} was trained with data.target: label, and this evaluation prompts it with data.target: " \
           "reasoning (add --data.target label)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def label_samples(tmp_path_factory, label_sft, cache_dir):
    out = str(tmp_path_factory.mktemp("label_samples") / "samples.jsonl")
    assert main(["sample", "--model", os.path.join(label_sft, "export"), "--target", "label", "--out", out,
                 "--n", "4", "--limit", "12", "--max-new-tokens", "8", "--synth-n-train", "48", "--synth-n-val", "6",
                 "--synth-n-test", "6", "--data-dir", os.path.join(cache_dir, "data")]) == 0
    return out


def test_label_samples_are_parsed_as_labels(label_samples):
    rows = _records(label_samples)
    assert len(rows) == 12 and all(r["sampler"]["target"] == "label" for r in rows)
    for r in rows:
        for s in r["samples"]:
            assert set(s["step_verdicts"].values()) == {None}
            alone = re.fullmatch(r"\s*Label\s*:\s*[1-4]\s*", s["text"]) is not None
            assert s["format_error"] == (not alone)  # the label parser's verdict
            assert s["correct"] == (s["pred"] == r["example"]["label"])


def test_label_dpo_config(tmp_path, label_sft, label_samples, cache_dir):
    fit("configs/dpo.yaml", str(tmp_path), cache_dir, "--data.samples_path", label_samples,
        "--model.init_args.model.name_or_path", os.path.join(label_sft, "export"), overlays=(LABEL_ONLY,))
    assert os.path.exists(tmp_path / "export" / "config.json")


def _train_metrics(save_dir) -> list[dict[str, float]]:
    from taosr.history import csv_history

    return [r for path in glob.glob(os.path.join(str(save_dir), "**", "metrics.csv"), recursive=True)
            for r in csv_history(path) if "train/reward" in r]


def _write_label_rollouts(monkeypatch):
    """Sampling at temperature 1.3 from the briefly trained micro policy mostly writes noise; replace
    every sampled completion by one of four kinds, in turn: the gold label line; a wrong label line;
    the gold label line and a sentence; the full gold reasoning (right label, but not a label-only
    completion). Everything after sampling (parsing, rewards, advantages, update) runs as configured."""
    import torch

    from taosr.callbacks.rollout import RolloutCallback
    from taosr.reasoning.format import render_reasoning

    sample = RolloutCallback.on_train_batch_start

    def with_labels(self, trainer, pl_module, batch, batch_idx):
        sample(self, trainer, pl_module, batch, batch_idx)
        r, tok = batch["rollout"], pl_module.tokenizer
        # the label target caps what was sampled (the RL config's budget is 96)
        assert r.max_new_tokens == 8 and r.completion_ids.shape[1] <= 8
        rows = trainer.datamodule.train_rows_cache
        texts = []
        for n, i in enumerate(r.example_index.tolist()):
            ex = rows[int(i)]
            texts.append([f"Label: {ex.label}", f"Label: {1 + ex.label % 4}", f"Label: {ex.label}\nthe brand matches",
                          render_reasoning(ex.steps, ex.label)][n % 4])
        ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
        T = max(map(len, ids))
        r.completion_ids = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in ids])
        r.completion_mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
        r.texts, r.clipped = [tok.decode(x, skip_special_tokens=True) for x in ids], torch.zeros(len(ids), dtype=torch.bool)

    monkeypatch.setattr(RolloutCallback, "on_train_batch_start", with_labels)


def test_label_grpo_config_rewards_label_lines(tmp_path, label_sft, label_samples, cache_dir, monkeypatch):
    """GRPO on the label target: rollouts are parsed as label lines, so a label line alone is the only
    well-formed completion (format 1/2 of the four kinds, where the reasoning parser would give 1/4),
    and the label of each is read (correct 3/4); the groups have reward spread, so the policy updates."""
    _write_label_rollouts(monkeypatch)
    logs = tmp_path / "logs"
    fit("configs/grpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(label_sft, "export"), *rl_samples_overrides(label_samples),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(logs),
        overlays=(LABEL_ONLY,))
    assert os.path.exists(tmp_path / "export" / "config.json")
    rows = _train_metrics(logs)
    assert len(rows) == 2, rows  # one per rollout batch
    for m in rows:
        assert m["train/rewards/format/mean"] == pytest.approx(0.5)
        assert m["train/rewards/correct/mean"] == pytest.approx(0.75)
        assert m["train/reward"] == pytest.approx(0.75 + 0.2 * 0.5)  # outcome: correct_weight 1, format_weight 0.2
        assert m["train/dynamic_sampling/dropped_groups"] == 0.0 and m["train/dynamic_sampling/skipped_update"] == 0.0


def test_srpo_refuses_the_label_target(tmp_path, capsys, cache_dir):
    from tests.test_bad_runs import assert_nothing_written, assert_one_line

    rc = main(["fit", "--config", os.path.join(ROOT, "configs/srpo.yaml"), "--config", os.path.join(ROOT, LABEL_ONLY),
               *small_overrides(str(tmp_path), cache_dir), "--model.init_args.examiner.mode", "verifier",
               "--data.samples_path", str(tmp_path / "unused.jsonl")])
    assert_one_line(rc, capsys.readouterr().err, "data.target: 'label' completions have no reasoning steps",
                    "configs/grpo.yaml")
    assert_nothing_written(str(tmp_path))


def test_label_target_caps_the_rollout_budget():
    """data.target: label samples rollouts of at most 8 new tokens whatever the RL config's budget;
    the reasoning target and a smaller budget are left alone."""
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.eval.generation import GenerationSpec

    def budget(target, max_new_tokens=96):
        cb = RolloutCallback(generation=GenerationSpec(do_sample=True, temperature=1.3, max_new_tokens=max_new_tokens))
        cb._cap_to_target(target)
        return cb.spec.max_new_tokens, cb.spec.num_return_sequences

    assert budget("label") == (8, 8)
    assert budget("reasoning") == (96, 8)
    assert budget("label", 5) == (5, 8)
