"""Bad configs, checkpoints, model folders and sweeps: one line naming the file/line/option, exit 2,
no traceback, nothing half-written; runs that used to exit 0 with a wrong result are refused first.

Each case runs `taosr.cli.main([...])` in-process."""
import os
import shutil

import lightning.pytorch  # noqa: F401 - imported at collection: its log handler then writes to the session's
import pytest              # stderr, not to the capsys stream of the first test that imports it (closed later)
import torch

from taosr.cli import main
from tests.conftest import ROOT, small_overrides

SFT = os.path.join(ROOT, "configs", "sft.yaml")
DPO = os.path.join(ROOT, "configs", "dpo.yaml")
GRM = os.path.join(ROOT, "configs", "grm.yaml")
GRPO = os.path.join(ROOT, "configs", "grpo.yaml")
SRPO = os.path.join(ROOT, "configs", "srpo.yaml")


def taosr(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, *needles):
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("taosr: error: ")]
    assert rc == 2 and len(errors) == 1, (rc, err)
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def assert_nothing_written(root):
    """A refused run leaves no export, no config and no temporary file behind."""
    if not os.path.exists(root):
        return
    names = [os.path.relpath(os.path.join(d, f), root) for d, ds, fs in os.walk(root) for f in fs + ds]
    assert not [n for n in names if n.startswith(("export", "config")) or ".tmp" in n], names


# ---------------------------------------------------------------- config files and options (parse time)
YAML_CASES = {
    "syntax_error": ("model:\n  init_args:\n    lr: [1\n", ["bad.yaml:4:", "YAML error"]),
    "key_set_twice": ("trainer:\n  max_steps: 3\n  max_steps: 4\n", ["bad.yaml:3:", "'max_steps' is set twice"]),
    "nested_key_set_twice": ("model:\n  init_args:\n    lr: 1\n    lr: 2\n", ["bad.yaml:4:", "'lr' is set twice"]),
    "tab_indent": ("trainer:\n\tmax_steps: 3\n", ["bad.yaml:2:", "YAML error"]),
    "not_a_mapping": ("- a\n- b\n", ["bad.yaml", "must be a mapping"]),
    "unknown_key": ("model:\n  init_args:\n    bogus: 3\n", ["Option 'bogus' is not accepted"]),
    "missing_base": ("base: [nope.yaml]\n", ["bad.yaml: base config 'nope.yaml' not found"]),
    "base_cycle": ("base: [bad.yaml]\n", ["includes itself"]),
    "wrong_type_in_yaml": ("trainer:\n  max_steps: many\n", ["trainer.max_steps"]),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_overlay_file(tmp_path, capsys, case):
    text, needles = YAML_CASES[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    root = tmp_path / "run"
    rc, err = taosr(capsys, "fit", "--config", SFT, "--config", bad, "--trainer.default_root_dir", root)
    assert_one_line(rc, err, *needles)
    assert_nothing_written(root)


def test_syntax_error_in_a_method_file_with_bases(tmp_path, capsys):
    shutil.copytree(os.path.join(ROOT, "configs", "_base"), tmp_path / "_base")
    (tmp_path / "m.yaml").write_text("base: [_base/trainer.yaml]\nmodel:\n  class_path: x\n   init_args: {}\n")
    rc, err = taosr(capsys, "fit", "--config", tmp_path / "m.yaml")
    assert_one_line(rc, err, "m.yaml:4:")


def test_syntax_error_in_a_base_names_the_base(tmp_path, capsys):
    shutil.copytree(os.path.join(ROOT, "configs", "_base"), tmp_path / "_base")
    (tmp_path / "_base" / "trainer.yaml").write_text("trainer: {max_steps: 3\n")
    (tmp_path / "m.yaml").write_text("base: [_base/trainer.yaml]\n")
    rc, err = taosr(capsys, "fit", "--config", tmp_path / "m.yaml")
    assert_one_line(rc, err, os.path.join("_base", "trainer.yaml") + ":2:")


OPTION_CASES = {
    "lr_not_a_number": (["--model.init_args.lr", "fast"], ["--model.init_args.lr", "float", "'fast'"]),
    "lr_equals_form": (["--model.init_args.lr=fast"], ["--model.init_args.lr", "'fast'"]),
    "max_steps_not_int": (["--trainer.max_steps", "x"], ["trainer.max_steps"]),
    "unknown_model_option": (["--model.init_args.bogus", "3"], ["Option 'bogus' is not accepted"]),
    "unknown_data_option": (["--data.bogus", "3"], ["--data.bogus"]),
    "missing_config_file": (["--config", "/nonexistent/overlay.yaml"], ["/nonexistent/overlay.yaml", "not found"]),
    "config_is_a_directory": (["--config", ROOT], ["is a directory"]),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option(capsys, case):
    args, needles = OPTION_CASES[case]
    rc, err = taosr(capsys, "fit", "--config", SFT, *args)
    assert_one_line(rc, err, *needles)
    assert len(err.strip().splitlines()) == 1, err


# Values a module, callback or spec refuses while the CLI builds it: jsonargparse wraps the
# ConfigError; the launcher prints the ConfigError's own line.
BUILD_CASES = {
    "unknown_loss_agg": (SRPO, ["--model.init_args.loss_agg", "bogus"], ["model.init_args.loss_agg: 'bogus' is unknown"]),
    "eval_zero_new_tokens": (SFT, ["--model.init_args.eval_generation.max_new_tokens", "0"], ["max_new_tokens must be >= 1"]),
    # n completions per example were zipped with the batch's n-times-fewer indices: wrong examples' metrics
    "eval_several_sequences": (SFT, ["--model.init_args.eval_generation.do_sample", "true",
                                     "--model.init_args.eval_generation.num_return_sequences", "2"],
                               ["eval_generation.num_return_sequences: must be 1", "taosr sample --n"]),
    "foreign_estimator_option": (SRPO, ["--model.init_args.step_advantage.name", "process_sum",
                                        "--model.init_args.step_advantage.lam", "1"],
                                 ["model.init_args.step_advantage.lam: not an option", "process_sum"]),
    "negative_lr": (SFT, ["--model.init_args.lr", "-1"], ["model.init_args.lr: must be > 0"]),
    "unknown_scheduler": (SFT, ["--model.init_args.scheduler", "cosin"], ["model.init_args.scheduler: 'cosin' is unknown"]),
    "one_generation": (GRPO, ["--trainer.callbacks.init_args.num_generations", "1"], ["num_generations"]),
}


@pytest.mark.parametrize("case", sorted(BUILD_CASES))
def test_value_refused_while_building(tmp_path, capsys, case):
    cfg, args, needles = BUILD_CASES[case]
    rc, err = taosr(capsys, "fit", "--config", cfg, "--trainer.default_root_dir", tmp_path / "run", *args)
    assert_one_line(rc, err, *needles)
    assert not (tmp_path / "run" / "export").exists()


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def sft_ckpt(sft_run):
    return os.path.join(sft_run, "checkpoints", "last.ckpt")


def _truncated(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) // 2])
    return dst


CKPT_CASES = {
    "missing": (lambda d, c: os.path.join(d, "nope.ckpt"), ["--ckpt_path", "nope.ckpt", "not found"]),
    "directory": (lambda d, c: d, ["is a directory"]),
    "text_file": (lambda d, c: (open(os.path.join(d, "t.ckpt"), "w").write("hello\n"), os.path.join(d, "t.ckpt"))[1],
                  ["t.ckpt", "not a readable Lightning checkpoint"]),
    "truncated": (lambda d, c: _truncated(c, os.path.join(d, "half.ckpt")), ["half.ckpt", "truncated or corrupt"]),
    "not_lightning": (lambda d, c: (torch.save({"w": torch.zeros(2)}, os.path.join(d, "w.ckpt")), os.path.join(d, "w.ckpt"))[1],
                      ["w.ckpt", "not a Lightning checkpoint"]),
}


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_bad_checkpoint(tmp_path, capsys, cache_dir, sft_ckpt, case):
    make, needles = CKPT_CASES[case]
    path = make(str(tmp_path), sft_ckpt)
    root = str(tmp_path / "run")
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(root, cache_dir), "--ckpt_path", path)
    assert_one_line(rc, err, *needles)
    assert_nothing_written(root)


@pytest.mark.parametrize("config,name", [(DPO, "DPOModule"), (GRM, "GRMModule")])
def test_checkpoint_of_another_method_is_refused_before_work(tmp_path, capsys, cache_dir, sft_run, sft_ckpt, config, name):
    """Formerly exit 0: the SFT checkpoint made the 'DPO' run an SFT resume that ran zero DPO steps and
    exported the SFT weights. Now refused, and nothing is trained or written."""
    root = str(tmp_path / "run")
    rc, err = taosr(capsys, "fit", "--config", config, *small_overrides(root, cache_dir),
                    "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
                    "--data.samples_path", os.path.join(tmp_path, "unused.jsonl"), "--ckpt_path", sft_ckpt)
    assert_one_line(rc, err, "SFTModule", name, "last.ckpt")
    assert_nothing_written(root)


# ---------------------------------------------------------------- model folders
def _no_tokenizer(d, sft_run):
    dst = os.path.join(d, "export")
    shutil.copytree(os.path.join(sft_run, "export"), dst)
    for f in os.listdir(dst):
        if f.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            os.remove(os.path.join(dst, f))
    return dst


MODEL_CASES = {
    "empty_dir": (lambda d, r: (os.makedirs(os.path.join(d, "empty")), os.path.join(d, "empty"))[1],
                  ["model.name_or_path", "empty", "has no config.json"]),
    "export_without_tokenizer": (_no_tokenizer, ["model.name_or_path", "export", "has no tokenizer"]),
    "missing_local_path": (lambda d, r: os.path.join(d, "runs", "nope", "export"), ["model.name_or_path", "nope"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_folder(tmp_path, capsys, cache_dir, sft_run, case):
    make, needles = MODEL_CASES[case]
    path = make(str(tmp_path), sft_run)
    root = str(tmp_path / "run")
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(root, cache_dir),
                    "--model.init_args.model.name_or_path", path)
    assert_one_line(rc, err, *needles)
    assert_nothing_written(root)


# ---------------------------------------------------------------- re-runs into a finished run's folder
@pytest.fixture
def finished_copy(tmp_path, sft_run):
    dst = tmp_path / "finished"
    shutil.copytree(sft_run, dst, ignore=shutil.ignore_patterns("wandb"))
    return dst


def _snapshot(root):
    return {f: open(os.path.join(root, f), "rb").read() for f in ("config.yaml", "export/model.safetensors")}


def test_failed_rerun_keeps_the_finished_runs_files(capsys, cache_dir, finished_copy):
    before = _snapshot(finished_copy)
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(str(finished_copy), cache_dir),
                    "--model.init_args.model.name_or_path", str(finished_copy / "nope"))
    assert_one_line(rc, err, "nope")
    assert _snapshot(finished_copy) == before  # formerly: config.yaml overwritten by the failed run's
    assert not [f for f in os.listdir(finished_copy) if ".tmp" in f]


def test_test_command_never_overwrites_its_input_config(capsys, cache_dir, finished_copy):
    """`taosr test --config <run>/config.yaml` into the same folder: the input stays as it is, the
    test command's resolved config goes to config-test.yaml."""
    before = _snapshot(finished_copy)
    rc = main(["test", "--config", str(finished_copy / "config.yaml"), "--trainer.default_root_dir", str(finished_copy),
               "--ckpt_path", str(finished_copy / "checkpoints" / "last.ckpt")])
    assert rc == 0, capsys.readouterr().err
    assert _snapshot(finished_copy) == before
    assert (finished_copy / "config-test.yaml").exists() and (finished_copy / "eval" / "test-metrics.json").exists()


def test_a_saved_config_rerun_elsewhere_writes_only_there(tmp_path, capsys, finished_copy):
    """<run>/config.yaml re-run with another --trainer.default_root_dir: its checkpoints and logs go
    to the new folder. The saved file held the first run's filled-in checkpoint dirpath and logger
    save_dir, so the re-run replaced the first run's last.ckpt."""
    import yaml

    ckpt = finished_copy / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    saved = yaml.safe_load((finished_copy / "config.yaml").read_text())
    assert all((cb.get("init_args") or {}).get("dirpath") is None for cb in saved["trainer"]["callbacks"])
    new = tmp_path / "again"
    rc = main(["fit", "--config", str(finished_copy / "config.yaml"), "--trainer.default_root_dir", str(new),
               "--trainer.max_steps", "1"])
    assert rc == 0, capsys.readouterr().err
    assert ckpt.read_bytes() == before and (new / "checkpoints" / "last.ckpt").exists()
    assert sorted(os.listdir(finished_copy / "checkpoints")) == ["last.ckpt"]


def test_ckpt_path_last_starts_then_resumes(tmp_path, capsys, finished_copy):
    """--ckpt_path last (Lightning's keyword, refused as "file not found"): a fresh folder starts from
    the beginning, the same command then resumes from its last.ckpt."""
    import torch

    run = tmp_path / "pre"
    args = ["fit", "--config", str(finished_copy / "config.yaml"), "--trainer.default_root_dir", str(run),
            "--ckpt_path", "last", "--trainer.max_epochs", "-1"]  # a max_steps stop ends the epoch (Lightning)
    assert main([*args, "--trainer.max_steps", "1"]) == 0
    assert "--ckpt_path last: no " in capsys.readouterr().err
    assert main([*args, "--trainer.max_steps", "2"]) == 0
    assert f"resuming from {run}/checkpoints/last.ckpt" in capsys.readouterr().err
    # the saved config keeps `last`, not this run's file: re-run elsewhere, it starts there
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"] == "last"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    # a third run into the folder replaces last.ckpt: no full-size last-v1.ckpt beside it
    assert main(["fit", "--config", str(finished_copy / "config.yaml"), "--trainer.default_root_dir", str(run),
                 "--trainer.max_steps", "1"]) == 0
    assert os.listdir(run / "checkpoints") == ["last.ckpt"]


# ---------------------------------------------------------------- logger off, mixed precision
def test_logger_off_and_bf16_mixed_with_the_lr_monitor_config(tmp_path, capsys, cache_dir):
    """configs/sft.yaml has a LearningRateMonitor, which raises without a logger: it is skipped with a
    one-line warning; bf16-mixed autocast runs on CPU with every module."""
    root = tmp_path / "run"
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(str(root), cache_dir), "--trainer.logger", "false",
                    "--trainer.precision", "bf16-mixed")
    assert rc == 0 and "Traceback" not in err, err
    assert "taosr: warning: trainer.logger is off: skipping LearningRateMonitor" in err
    assert (root / "export" / "config.json").exists() and (root / "checkpoints" / "last.ckpt").exists()


def test_missing_wandb_logs_to_csv_in_the_run_folder(tmp_path, capsys, cache_dir, monkeypatch):
    """On a machine without the wandb package (bare GPU images) the configs' W&B logger becomes a
    CSVLogger in the same folder with a one-line warning, and the run completes."""
    import taosr.launcher as launcher

    monkeypatch.setattr(launcher, "_wandb_installed", lambda: False)
    root = tmp_path / "run"
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(str(root), cache_dir))
    assert rc == 0 and "Traceback" not in err, err
    assert f"taosr: warning: wandb is not installed: logging to CSV under {root}" in err
    metrics = list(root.glob("sft/version_*/metrics.csv"))
    assert metrics and "train/loss" in metrics[0].read_text().splitlines()[0]
    assert not (root / "wandb").exists() and (root / "export" / "config.json").exists()


def test_wandb_disabled_logs_to_csv_so_the_history_is_kept(tmp_path, capsys, cache_dir, monkeypatch):
    """WANDB_MODE=disabled (a user's or gpu_session.sh's way to keep W&B quiet) made wandb write nothing,
    so a fit's history was lost: `taosr compare`'s training-signals table read NaN for every arm. The
    W&B logger becomes a CSVLogger in the run folder with a one-line note, and the history reads back."""
    from taosr.history import run_history

    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "run"
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(str(root), cache_dir))
    assert rc == 0 and "Traceback" not in err, err
    assert f"taosr: W&B is disabled (WANDB_MODE=disabled or WANDB_DISABLED): logging to CSV under {root}" in err
    assert "warning: wandb" not in err
    assert list(root.glob("sft/version_*/metrics.csv")) and not (root / "wandb").exists()
    assert any("train/loss" in row for row in run_history(str(root)))


def test_wandb_disabled_beside_a_listed_csv_logger_logs_each_row_once(tmp_path, capsys, cache_dir, monkeypatch):
    """A config listing a CSVLogger beside W&B got a second CSVLogger under WANDB_MODE=disabled (the
    W&B one swapped): two metrics.csv files of the same rows, and the run's history counted each twice.
    The W&B logger is dropped instead; the listed CSVLogger keeps the history."""
    from taosr.history import run_history

    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "run"
    overlay = tmp_path / "loggers.yaml"
    overlay.write_text("trainer:\n  logger:\n"
                       "    - {class_path: taosr.loggers.AutoWandbLogger, init_args: {name: sft}}\n"
                       f"    - {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}, "
                       "name: mine}}\n")
    rc, err = taosr(capsys, "fit", "--config", SFT, *small_overrides(str(root), cache_dir), "--config", str(overlay))
    assert rc == 0 and "Traceback" not in err, err
    assert "logging to the config's CSVLogger only" in err
    assert [p.relative_to(root).parts[0] for p in root.glob("*/version_*/metrics.csv")] == ["mine"]
    rows = run_history(str(root))
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps and len(steps) == len(set(steps))


def test_wandb_disabled_beside_a_csv_logger_elsewhere_still_keeps_the_run_folders_history():
    """Only a listed CSVLogger that writes where the history is read (the W&B logger's folder, with a
    name) stands in for the fallback; one writing elsewhere or without a name leaves the swap as it was."""
    from jsonargparse import Namespace

    from taosr.launcher import _csv_logger_instead_of_wandb

    def cfg(csv_args):
        return Namespace(trainer=Namespace(default_root_dir="r", logger=[
            Namespace(class_path="taosr.loggers.AutoWandbLogger", init_args=Namespace(save_dir="r", name="x")),
            Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(**csv_args))]))
    for csv_args, kept in (({"save_dir": "r", "name": "mine"}, ["r/mine"]),
                           ({"save_dir": "./r/", "name": "mine"}, ["./r//mine"]),
                           ({"save_dir": "elsewhere", "name": "mine"}, ["r/x", "elsewhere/mine"]),
                           ({"save_dir": "r", "name": ""}, ["r/x", "r/"])):
        c = cfg(csv_args)
        _csv_logger_instead_of_wandb(c, installed=True, mode="disabled")
        assert all(lg.class_path.endswith("CSVLogger") for lg in c.trainer.logger), csv_args
        assert [f"{lg.init_args.save_dir}/{lg.init_args.name}" for lg in c.trainer.logger] == kept, csv_args


def test_csv_fallback_leaves_other_loggers_and_installed_wandb_alone():
    from jsonargparse import Namespace

    from taosr.launcher import _csv_logger_instead_of_wandb

    def cfg(cp):
        return Namespace(trainer=Namespace(default_root_dir="r", logger=Namespace(
            class_path=cp, init_args=Namespace(save_dir="r", name="x"))))
    for mode in (None, "offline", "online", ""):
        c = cfg("taosr.loggers.AutoWandbLogger")
        _csv_logger_instead_of_wandb(c, installed=True, mode=mode or "")
        assert c.trainer.logger.class_path == "taosr.loggers.AutoWandbLogger"
    c = cfg("lightning.pytorch.loggers.TensorBoardLogger")
    _csv_logger_instead_of_wandb(c, installed=True, mode="disabled")
    assert c.trainer.logger.class_path.endswith("TensorBoardLogger")
    from unittest import mock
    for env, csv in (({"WANDB_DISABLED": "true"}, True), ({"WANDB_DISABLED": "false"}, False)):
        c = cfg("taosr.loggers.AutoWandbLogger")
        with mock.patch.dict(os.environ, {**env, "WANDB_MODE": "offline"}):
            _csv_logger_instead_of_wandb(c, installed=True)
        assert c.trainer.logger.class_path.endswith("CSVLogger") == csv, env
    c = cfg("lightning.pytorch.loggers.TensorBoardLogger")
    _csv_logger_instead_of_wandb(c, installed=False)
    assert c.trainer.logger.class_path.endswith("TensorBoardLogger")
    c = cfg("taosr.loggers.AutoWandbLogger")
    _csv_logger_instead_of_wandb(c, installed=False)
    assert c.trainer.logger.class_path == "lightning.pytorch.loggers.CSVLogger"
    assert dict(c.trainer.logger.init_args) == {"save_dir": "r", "name": "x"}


@pytest.mark.parametrize("method", ["sft", "dpo", "grm", "grpo", "srpo"])
def test_no_config_forces_full_precision_or_a_device(method):
    """bf16-mixed / 16-mixed must be choosable on every config: nothing pins precision, the
    accelerator to CPU, or model weights to a dtype other than the default float32 master weights."""
    from taosr.configfiles import resolved_config

    cfg = resolved_config(os.path.join(ROOT, "configs", f"{method}.yaml"))
    assert cfg["trainer"].get("precision") is None and cfg["trainer"]["accelerator"] == "auto"
    assert cfg["model"]["init_args"]["model"].get("dtype", "float32") == "float32"


# ---------------------------------------------------------------- sweeps
SWEEP_CASES = {
    "syntax_error": ("method: grid\nparameters: {a: {values: [1, 2]}\n", [], ["bad.yaml:3:", "YAML error"]),
    "unknown_method": ("method: annealing\nparameters: {a: {values: [1]}}\ncommand: [x]\n", [],
                       ["bad.yaml", "'annealing'", "grid, random, bayes"]),
    "no_parameters": ("method: grid\n", [], ["bad.yaml", "'method' and 'parameters'"]),
    "count_zero": ("method: grid\nparameters: {a: {values: [1]}}\ncommand: [x]\n", ["--count", "0"],
                   ["--count 0", "at least 1"]),
    "count_negative": ("method: grid\nparameters: {a: {values: [1]}}\ncommand: [x]\n", ["--count", "-3"],
                       ["--count -3"]),
    "bad_parameter_spec": ("method: grid\nparameters: {a: {valuez: [1]}}\ncommand: [x]\n", [], ["bad.yaml", "invalid sweep"]),
    # the taosr command is parsed with one value of each parameter before the first run (each run failed on it)
    "override_typo": (f"method: grid\nparameters: {{model.init_args.lr: {{values: [0.001]}}}}\n"
                      f"command: [taosr, fit, --config, {SFT}, '${{args}}']\n", ["--trainer.max_stepz", "2"],
                      ["bad.yaml: unrecognized arguments: --trainer.max_stepz 2", "checked before the first run"]),
    # ... and its data module, module and trainer built (nothing loaded or run): a value a constructor refuses
    "constructor_refuses": (f"method: grid\nparameters: {{model.init_args.lr: {{values: [0.001]}}}}\n"
                            f"command: [taosr, fit, --config, {SFT}, '${{args}}']\n", ["--data.batch_size", "-4"],
                            ["bad.yaml: data.batch_size: must be a whole number >= 1, got -4", "checked before the first run"]),
    "parameter_typo": (f"method: random\nparameters: {{model.init_args.lrr: {{min: 0.001, max: 0.01}}}}\n"
                       f"command: [taosr, fit, --config, {SFT}, '${{args}}']\n", [],
                       ["bad.yaml: --model.init_args.lrr: Option 'lrr' is not accepted"]),
    # every value of every parameter is tried, not the first only (a typo in a later one failed that run, hours in)
    "later_value_refused": (f"method: grid\nparameters: {{model.init_args.step_advantage.name: "
                            f"{{values: [outcome, outcome_plus_step, outcome_plus_stepz]}}, seed_everything: {{values: [0, 1]}}}}\n"
                            f"command: [taosr, fit, --config, {SRPO}, --model.init_args.examiner.mode, verifier, "
                            f"--model.init_args.grm_path, null, '${{args}}']\n", [],
                            ["bad.yaml: model.init_args.step_advantage.name: 'outcome_plus_stepz' is unknown",
                             "with model.init_args.step_advantage.name=outcome_plus_stepz, seed_everything=0"]),
    # a metric no run writes left every row empty, the sweep unranked
    "metric_no_split": (f"method: grid\nmetric: {{name: macro_f1}}\nparameters: {{model.init_args.lr: {{values: [0.001]}}}}\n"
                        f"command: [taosr, fit, --config, {SFT}, '${{args}}']\n", [],
                        ["bad.yaml: metric 'macro_f1'", "val/<metric>"]),
    "metric_test_of_a_fit": (f"method: grid\nmetric: {{name: test/macro_f1}}\nparameters: {{model.init_args.lr: {{values: [0.001]}}}}\n"
                             f"command: [taosr, fit, --config, {SFT}, '${{args}}']\n", [],
                             ["bad.yaml: metric 'test/macro_f1': a `taosr fit` run writes val/<metric>"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweep(tmp_path, capsys, case):
    text, args, needles = SWEEP_CASES[case]
    (tmp_path / "bad.yaml").write_text(text)
    out = tmp_path / "out"
    rc, err = taosr(capsys, "sweep", tmp_path / "bad.yaml", "--out", out, *args)
    assert_one_line(rc, err, *needles)
    assert not out.exists()  # nothing planned or run


def test_missing_sweep_file(tmp_path, capsys):
    rc, err = taosr(capsys, "sweep", tmp_path / "nope.yaml")
    assert_one_line(rc, err, "nope.yaml", "not found")


def test_sweep_where_every_run_fails_exits_non_zero(tmp_path, capsys):
    """Formerly exit 0."""
    sweep = tmp_path / "fail.yaml"
    sweep.write_text("method: grid\nparameters: {x: {values: [1, 2]}}\n"
                     "command:\n  - ${interpreter}\n  - -c\n  - import sys; sys.exit(3)\n  - ${args}\n")
    rc, err = taosr(capsys, "sweep", sweep, "--out", tmp_path / "out")
    assert_one_line(rc, err, "fail.yaml", "every run of the sweep failed")
    assert (tmp_path / "out" / "summary.csv").exists()


def test_compare_names_each_wandb_run_and_sets_its_job_type_in_one_process(tmp_path, monkeypatch):
    """`taosr compare` without --jobs runs every command in one process, and wandb reads its
    environment once per process: the logger must pass each command's group, job type and name on
    itself (before, every run took the first run's job type and the config's name)."""
    from taosr.compare import Run, _wandb_env, load_spec
    from taosr.loggers import AutoWandbLogger

    spec = load_spec(os.path.join(ROOT, "comparisons", "srpo_vs_grpo.yaml"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = []
    for run, verb in ((Run("start", None, "r"), "test"), (Run("grpo", 0, "r"), "fit"), (Run("srpo", 1, "r"), "test")):
        for k, v in _wandb_env(spec, run, verb).items():
            monkeypatch.setenv(k, v)
        init = AutoWandbLogger(name="grpo", save_dir=str(tmp_path))._wandb_init
        seen.append((init["group"], init["job_type"], init["name"]))
    assert seen == [("srpo_vs_grpo", "start", "start-test"), ("srpo_vs_grpo", "grpo", "grpo-seed0"),
                    ("srpo_vs_grpo", "srpo", "srpo-seed1-test")]
    assert "anonymous" not in init  # wandb warned at every run that the (unset) setting has no effect


FAKE_FIT = """
import json, os, sys
args = sys.argv[1:]
root = args[args.index("--trainer.default_root_dir") + 1]
x = int([a for a in args if a.startswith("--x=")][0].split("=")[1])
with open(os.environ["SWEEP_LOG"], "a") as fh:
    fh.write(f"x={x} resumed={'--ckpt_path' in args}\\n")
os.makedirs(os.path.join(root, "eval"), exist_ok=True)
os.makedirs(os.path.join(root, "checkpoints"), exist_ok=True)
open(os.path.join(root, "checkpoints", "last.ckpt"), "w").write("")
if x == 2 and "--ckpt_path" not in args:
    sys.exit(130)  # interrupted: Ctrl-C after saving its checkpoint
json.dump({"macro_f1": x / 10}, open(os.path.join(root, "eval", "val-step1-metrics.json"), "w"))
"""


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch):
    """Finished runs are kept as the engine's history (not re-run, not overwritten in the summary),
    the interrupted run resumes from its checkpoint, and other extra arguments are refused."""
    from taosr.errors import ConfigError, Interrupted
    from taosr.sweep import run_sweep

    (tmp_path / "fake_fit.py").write_text(FAKE_FIT)
    (tmp_path / "s.yaml").write_text(f"name: s\nprogram: {tmp_path / 'fake_fit.py'}\nmethod: grid\n"
                                     "metric: {name: val/macro_f1, goal: maximize}\n"
                                     "parameters: {x: {values: [0, 1, 2, 3]}}\n"
                                     "command: ['${interpreter}', '${program}', '${args}']\n")
    log = tmp_path / "log"
    monkeypatch.setenv("SWEEP_LOG", str(log))
    out = str(tmp_path / "out")
    with pytest.raises(Interrupted, match="interrupted after 2 finished runs"):
        run_sweep(str(tmp_path / "s.yaml"), out, count=4)
    rows = run_sweep(str(tmp_path / "s.yaml"), out, count=4)
    assert log.read_text().splitlines() == ["x=0 resumed=False", "x=1 resumed=False", "x=2 resumed=False",
                                            "x=2 resumed=True", "x=3 resumed=False"]
    assert [(r["run"], r["x"], r["val/macro_f1"]) for r in rows] == [
        ("run000", 0, 0.0), ("run001", 1, 0.1), ("run002", 2, 0.2), ("run003", 3, 0.3)]
    assert "run003" in open(os.path.join(out, "summary.csv")).read()
    with pytest.raises(ConfigError, match=r"run000 ran with other extra arguments \(none; now --trainer.max_steps 2\)"):
        run_sweep(str(tmp_path / "s.yaml"), out, count=5, extra=["--trainer.max_steps", "2"])


def test_a_random_sweep_keeps_every_finished_run_after_an_interruption(tmp_path, monkeypatch):
    """A random proposal interrupted in run000 is left aside (the next proposal differs); later
    commands count every finished run, wherever it sits, and number new ones after the last folder."""
    from taosr.errors import Interrupted
    from taosr.sweep import run_sweep

    script = FAKE_FIT.replace("if x == 2 and", "if os.environ.get('SWEEP_STOP') and")
    (tmp_path / "fake_fit.py").write_text(script)
    (tmp_path / "r.yaml").write_text(f"name: r\nprogram: {tmp_path / 'fake_fit.py'}\nmethod: random\n"
                                     "metric: {name: val/macro_f1, goal: maximize}\n"
                                     "parameters: {x: {values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}\n"
                                     "command: ['${interpreter}', '${program}', '${args}']\n")
    monkeypatch.setenv("SWEEP_LOG", str(tmp_path / "log"))
    out = str(tmp_path / "out")
    monkeypatch.setenv("SWEEP_STOP", "1")
    with pytest.raises(Interrupted):
        run_sweep(str(tmp_path / "r.yaml"), out, count=3)
    monkeypatch.delenv("SWEEP_STOP")
    assert len(run_sweep(str(tmp_path / "r.yaml"), out, count=3)) == 3
    rows = run_sweep(str(tmp_path / "r.yaml"), out, count=5)
    assert len(rows) == 5 and len({r["run"] for r in rows}) == 5
    folders = sorted(d for d in os.listdir(out) if d.startswith("run"))
    # run000 stays aside unless a later proposal happened to draw its x (then it was resumed there)
    assert folders in ([f"run{i:03d}" for i in range(6)], [f"run{i:03d}" for i in range(5)])


def test_a_sweeps_fixed_command_arguments_are_shared_by_its_runs(tmp_path, monkeypatch):
    """A grm_path fixed in the command of a sweep over examiner modes reaches every run: its verifier
    runs take it as the sweep's (a warning), not their own (a refusal, exit 2 half-way through the
    sweep, after the check before the first run had passed on the first mode)."""
    import json

    from taosr import sweep
    from taosr.launcher import SHARED_ARGS_ENV, parse_error, shared_arguments

    grm = tmp_path / "grm"
    grm.mkdir()
    (tmp_path / "s.yaml").write_text(
        "name: modes\nmethod: grid\nparameters: {model.init_args.examiner.mode: {values: [verifier_then_grm, verifier]}}\n"
        f"command: [taosr, fit, --config, {SRPO}, --model.init_args.grm_path, {grm}, '${{args}}']\n")
    cfg = sweep.load_sweep(str(tmp_path / "s.yaml"))
    fixed = sweep.fixed_arguments(cfg)
    assert fixed == ["--config", SRPO, "--model.init_args.grm_path", str(grm)]
    verifier_run = ["fit", *fixed, "--model.init_args.examiner.mode", "verifier"]
    assert "never loads a GRM" in parse_error(verifier_run)  # a run's own grm_path: refused
    with shared_arguments(fixed):
        assert parse_error(verifier_run) is None
    seen = []  # what each run's process is given (the fits themselves are not run here)
    monkeypatch.setattr(sweep, "_run_child", lambda cmd, env: seen.append(json.loads(env[SHARED_ARGS_ENV])) or 0)
    sweep.run_sweep(str(tmp_path / "s.yaml"), str(tmp_path / "out"), count=2)
    assert seen == [fixed, fixed]


def test_the_check_before_the_first_run_leaves_the_process_random_state_alone(monkeypatch):
    """The check builds the command's classes but must not seed the process running it: a random
    sweep draws its next values there, and every re-run of the command drew the same ones."""
    import random

    import numpy as np

    from taosr.launcher import parse_error

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    random.seed(123)
    np.random.seed(7)
    torch.manual_seed(5)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    assert parse_error(["fit", "--config", SFT, "--seed_everything", "0"]) is None
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2]) and "PL_GLOBAL_SEED" not in os.environ


def _fake_sweep(tmp_path, values, method="grid", fail_when="False"):
    (tmp_path / "fake_fit.py").write_text(FAKE_FIT.replace("if x == 2 and", f"if {fail_when}:\n    sys.exit(1)\nif False and"))
    (tmp_path / "s.yaml").write_text(f"name: s\nprogram: {tmp_path / 'fake_fit.py'}\nmethod: {method}\n"
                                     "metric: {name: val/macro_f1, goal: maximize}\n"
                                     f"parameters: {{x: {{values: {values}}}}}\n"
                                     "command: ['${interpreter}', '${program}', '${args}']\n")
    return str(tmp_path / "s.yaml")


def test_a_grid_runs_to_its_end_by_default(tmp_path, monkeypatch, capsys):
    """The default --count was 10 whatever the grid: sweeps/grpo_vs_srpo_seeds.yaml (2 estimators x 10
    seeds) ran the outcome estimator only, and said nothing."""
    from taosr.sweep import run_sweep

    monkeypatch.setenv("SWEEP_LOG", str(tmp_path / "log"))
    path = _fake_sweep(tmp_path, list(range(12)))
    assert [r["x"] for r in run_sweep(path, str(tmp_path / "out"))] == list(range(12))
    assert len(run_sweep(path, str(tmp_path / "out2"), count=5)) == 5
    assert "--count 5 (or run_cap) is less than the grid's 12 points: the last 7 are left out" in capsys.readouterr().err


def test_failed_sweep_runs_exit_non_zero_and_run_again_with_the_same_command(tmp_path, monkeypatch, capsys):
    """Some runs failing exited 0, and a re-run counted the failed runs as finished: never redone."""
    from taosr.cli import main

    monkeypatch.setenv("SWEEP_LOG", str(tmp_path / "log"))
    path = _fake_sweep(tmp_path, [0, 1, 2], fail_when="x == 1 and not os.environ.get('SWEEP_OK')")
    out = str(tmp_path / "out")
    assert main(["sweep", path, "--out", out]) == 2
    assert "1 of 3 runs failed: run001 (the same command runs them again" in capsys.readouterr().err
    monkeypatch.setenv("SWEEP_OK", "1")
    assert main(["sweep", path, "--out", out]) == 0
    assert "1 runs failed before: run again" in capsys.readouterr().out
    assert (tmp_path / "log").read_text().splitlines()[-1] == "x=1 resumed=True"  # in its folder, from its checkpoint
    summary = open(os.path.join(out, "summary.csv")).read()
    assert summary.count("run001") == 1 and ",0.1," in summary


def test_a_dry_run_leaves_the_summary_of_the_runs_that_ran(tmp_path, monkeypatch):
    from taosr.sweep import run_sweep

    monkeypatch.setenv("SWEEP_LOG", str(tmp_path / "log"))
    path = _fake_sweep(tmp_path, [0, 1, 2, 3])
    out = str(tmp_path / "out")
    run_sweep(path, out, count=2)
    before = open(os.path.join(out, "summary.md")).read()
    assert len(run_sweep(path, out, count=4, dry_run=True)) == 4
    assert open(os.path.join(out, "summary.md")).read() == before
    run_sweep(path, str(tmp_path / "fresh"), dry_run=True)
    assert not os.path.exists(os.path.join(str(tmp_path / "fresh"), "summary.md"))


def test_a_wandb_run_holds_the_runs_settings_not_only_the_models(tmp_path, cache_dir):
    """W&B held the model's init arguments only: sweep runs differing in data settings (curriculum,
    diverse sampling) or budget, and compare fits of other seeds, looked alike there."""
    import subprocess
    import sys

    from tests.conftest import small_overrides

    root = str(tmp_path / "r")  # its own process: wandb writes its run file in full when the process ends
    cmd = [sys.executable, "-m", "taosr.cli", "fit", "--config", SFT, *small_overrides(root, cache_dir),
           "--trainer.max_steps", "2", "--data.batch_size", "3", "--seed_everything", "123",
           "--trainer.logger", "taosr.loggers.AutoWandbLogger"]
    env = {**os.environ, "WANDB_MODE": "offline", "TAOSR_RUN_NAME": "mine-run007"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".wandb")]
    assert len(files) == 1
    blob = open(files[0], "rb").read()
    for needle in (b"mine-run007", b"seed_everything", b"max_steps", b"batch_size", b"taosr.methods.sft.SFTModule"):
        assert needle in blob, needle


def test_compare_groups_another_out_folder_apart_in_wandb():
    from taosr.compare import wandb_group

    assert wandb_group("srpo_vs_grpo", "runs/compare/srpo_vs_grpo") == "srpo_vs_grpo"
    assert wandb_group("srpo_vs_grpo", "runs/compare/srpo_vs_grpo/") == "srpo_vs_grpo"
    assert wandb_group("srpo_vs_grpo", "runs/compare/long_budget") == "srpo_vs_grpo@long_budget"


def test_each_sweep_run_is_named_in_wandb_and_not_forced_offline(tmp_path, monkeypatch):
    from taosr import sweep
    from taosr.loggers import RUN_NAME_ENV

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("SWEEP_LOG", str(tmp_path / "log"))
    path = _fake_sweep(tmp_path, [0, 1])
    seen = []
    monkeypatch.setattr(sweep, "_run_child", lambda cmd, env: seen.append(
        (env[RUN_NAME_ENV], env["WANDB_RUN_GROUP"], env["WANDB_JOB_TYPE"], env.get("WANDB_MODE"))) or 0)
    sweep.run_sweep(path, str(tmp_path / "out"))
    assert seen == [("s-run000", "s", "sweep", None), ("s-run001", "s", "sweep", None)]


def test_an_abbreviated_option_is_refused_not_read_as_the_longer_one(capsys):
    """argparse took `--trainer.max_step 3` for --trainer.max_steps: a typo that silently worked, and a
    comparison re-run spelled right then read as other settings."""
    rc, err = taosr(capsys, "fit", "--config", SFT, "--trainer.max_step", "3", "--print_config")
    assert_one_line(rc, err, "unrecognized arguments: --trainer.max_step 3")


def test_a_value_no_type_of_a_union_option_takes_names_them_all(capsys):
    """jsonargparse names only the first type of a union: `--seed_everything 0.5` read "Expected a
    <class 'bool'>", as if a seed had to be true or false."""
    rc, err = taosr(capsys, "fit", "--config", SFT, "--seed_everything", "0.5", "--print_config")
    assert_one_line(rc, err, "seed_everything\": expected bool or int, got '0.5' (option --seed_everything;")
    rc, err = taosr(capsys, "fit", "--config", SFT, "--trainer.limit_val_batches", "abc", "--print_config")
    assert_one_line(rc, err, "expected int or float, got 'abc' (option --trainer.limit_val_batches;")


def test_a_sweep_whose_runs_all_tie_names_no_best(tmp_path, capsys):
    from taosr.sweep import write_summary

    write_summary(str(tmp_path), [{"run": "run000", "m": 0.5, "exit": 0}, {"run": "run001", "m": 0.5, "exit": 0}], "m", "maximize")
    out = capsys.readouterr().out
    assert "all 2 runs tie: m=0.5000" in out and "best:" not in out
