"""Quick-start budgets per model (configs/quickstart/*.yaml, taosr/quickstart_plan.py): the tiny
default runs exactly the commands it ran when its budgets were code, the smollm2 table puts LoRA
and its learning rates on every training stage, and a bad --model or budgets file is one line."""
import json
import os

import pytest

from taosr.errors import ConfigError, TaosrError
from taosr.pipeline import Step, commands
from taosr.quickstart_plan import load_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
LORA = '{"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}'


def as_recorded(steps: list[Step]) -> list[list[str]]:
    return [["sample" if s.kind == "sample" else "lightning", *s.argv] for s in steps]


def opt(argv: list[str], key: str) -> str | None:
    """The last value given to ``key`` (the one LightningCLI keeps)."""
    vals = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == key]
    return vals[-1] if vals else None


@pytest.mark.parametrize("variant", ["full", "small"])
def test_tiny_runs_the_commands_of_the_budgets_in_code(variant, monkeypatch):
    """tests/data/quickstart_tiny_commands.json: every fit/sample/test argument list that
    `taosr quickstart [--small]` ran at commit 75dbf06 (budgets in pipeline.plan()), recorded by
    calling that code's run() with run_lightning and sample_main replaced by recorders."""
    monkeypatch.chdir(ROOT)
    want = json.load(open(os.path.join(ROOT, "tests", "data", "quickstart_tiny_commands.json")))[variant]
    qp = load_plan("tiny", small=variant == "small")
    assert qp.model_args == [] and qp.device_args(cuda_available=True) == []  # no GPU switch for tiny either
    assert as_recorded(commands("<OUT>", qp, qp.budgets)) == want


def test_smollm2_table_applies_lora_rates_and_sizes():
    qp = load_plan("smollm2-135m", small=True, configs=CONFIGS)
    assert qp.budgets_file.endswith(os.path.join("quickstart", "smollm2-135m.yaml")) and qp.variant == "small"
    steps = commands("out", qp, qp.budgets, configs=CONFIGS)
    fits = {s.argv[4].split("/")[-1]: s.argv for s in steps if s.kind == "fit"}
    assert list(fits) == ["sft", "dpo", "grm", "grpo", "srpo"]
    assert opt(fits["sft"], "--model.init_args.model.name_or_path") == "smollm2-135m"
    for stage, argv in fits.items():
        assert opt(argv, "--model.init_args.model.lora") == LORA, stage
        assert opt(argv, "--trainer.limit_val_batches") == ("1.0" if stage == "grm" else "0"), stage
    rates = {st: float(opt(a, "--model.init_args.lr")) for st, a in fits.items()}
    assert rates == {"sft": 1e-3, "dpo": 5e-5, "grm": 5e-4, "grpo": 2e-5, "srpo": 2e-5}
    assert opt(fits["dpo"], "--model.init_args.model.name_or_path") == "out/sft/export"  # reference: adapter off = SFT
    assert opt(fits["srpo"], "--model.init_args.model.name_or_path") == "out/dpo/export"
    assert opt(fits["grpo"], "--data.batch_size") == "1" and opt(fits["sft"], "--data.batch_size") == "4"
    sample = next(s.argv for s in steps if s.kind == "sample")
    assert opt(sample, "--batch-size") == "8" and opt(sample, "--n") == "2" and opt(sample, "--max-new-tokens") == "96"
    tests = [s for s in steps if s.kind == "test"]
    assert len(tests) == 8 and all(opt(s.argv, "--model.init_args.model.lora") is None for s in tests)
    assert all(opt(s.argv, "--data.eval_batch_size") == "8" for s in tests)
    # the full variant keeps the shared stage table and its own budgets: one SFT epoch of 3000 at batch 8
    full = load_plan("smollm2-135m", configs=CONFIGS)
    sft = commands("out", full, full.budgets, configs=CONFIGS)[0].argv
    assert (full.budgets["n_train"], opt(sft, "--data.batch_size"), opt(sft, "--trainer.max_epochs")) == (3000, "8", "1")
    assert opt(sft, "--model.init_args.lr") == "0.0005" and opt(sft, "--trainer.limit_val_batches") is None


def test_device_arguments_cuda_cpu_and_explicit_overrides_win():
    qp = load_plan("smollm2-135m", small=True, configs=CONFIGS)
    assert qp.device_args(cuda_available=True) == ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed"]
    assert qp.device_args(cuda_available=False) == []
    assert qp.device_args(cpu=True, cuda_available=True) == ["--trainer.accelerator", "cpu"]
    # a GPU without bfloat16 (T4, V100) trains in 16-mixed (the grad scaler's path, tested in test_grpo_module);
    # torch calls emulated bf16 "supported" unless asked for the hardware's own
    import torch

    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: calls.append(0) or including_emulation)
        assert qp.device_args(cuda_available=True)[-1] == "16-mixed" and calls
    assert qp.device_args(cuda_available=True, bf16_supported=False) == ["--trainer.accelerator", "gpu",
                                                                         "--trainer.precision", "16-mixed"]
    extra = qp.device_args(cuda_available=True) + ["--trainer.precision", "32-true"]
    for s in commands("out", qp, qp.budgets, configs=CONFIGS, extra=extra):
        if s.kind != "sample":
            assert opt(s.argv, "--trainer.precision") == "32-true" and opt(s.argv, "--trainer.accelerator") == "gpu"


def test_other_models_use_the_pretrained_default(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    for model in (str(folder), "HuggingFaceTB/SmolLM2-360M-Instruct"):
        qp = load_plan(model, small=True, configs=CONFIGS)
        assert qp.budgets_file.endswith("smollm2-135m.yaml") and qp.model_args == ["--model.init_args.model.name_or_path", model]
    own = tmp_path / "budgets.yaml"
    own.write_text(open(os.path.join(CONFIGS, "quickstart", "tiny.yaml")).read())
    assert load_plan(str(folder), small=True, budgets_file=str(own), configs=CONFIGS).budgets["n_train"] == 800


def test_unknown_model_is_one_line_naming_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--model: 'gpt-9' is not a model with budgets in .*smollm2-135m, tiny"):
        load_plan("gpt-9", configs=CONFIGS)
    from taosr.cli import main

    assert main(["quickstart", "--model", "no-such-model", "--configs", CONFIGS, "--out", str(tmp_path / "qs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taosr: error: --model: 'no-such-model'") and "\n" not in err
    assert not (tmp_path / "qs").exists()


GOOD = ("n_train: 8, n_test: 4, sft_epochs: 1, sample_prompts: 4, samples: 2, rl_steps: 1, rl_prompts: 1, "
        "grm_steps: 1, dpo_epochs: 1, rejection_band: [0, 1], heldout: 4")


@pytest.mark.parametrize("text, match", [
    ("small: {budgets: {n_train: 8}}", r"small.budgets: missing \['n_test'"),
    ("small: {budgets: {%s, epochz: 3}}" % GOOD, r"unknown \['epochz'\]"),
    ("small: {budgets: {%s, rejection_band: 0.5}}" % GOOD.replace(", rejection_band: [0, 1]", ""), "expected \\[low, high\\]"),
    ("small: {budgets: {%s}}\nstages: {ppo: {a: 1}}" % GOOD, r"stages: unknown stage\(s\) \['ppo'\]"),
    ("small: {budgets: {%s}, stages: {sft: [1]}}" % GOOD, r"small.stages.sft: expected a mapping"),
    ("full: {budgets: {}}", r"small is missing|small.budgets is missing"),
    ("small: [", "not valid YAML"),
])
def test_bad_budgets_file_is_one_line(tmp_path, text, match):
    f = tmp_path / "b.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_plan("tiny", small=True, budgets_file=str(f), configs=CONFIGS)
    assert "\n" not in str(e.value) and str(f) in str(e.value)
    with pytest.raises(ConfigError, match="--model-budgets: .* does not exist"):
        load_plan("tiny", budgets_file=str(tmp_path / "missing.yaml"))


def test_sample_step_follows_data_overrides_given_after_the_separator():
    """`taosr quickstart -- --data.synth.n_val 6` changed the fits' data but not the sample step's: the
    split of each query depends on every split's size, so the sampled prompts were no training
    example of the fits and DPO stopped ("has no sample of a training example")."""
    from taosr.errors import TaosrError

    qp = load_plan("tiny", small=True, configs=CONFIGS)
    extra = ["--data.synth.n_val", "6", "--data.synth.seed=3", "--data.data_dir", "/d", "--trainer.max_steps", "2",
             "--data.synth.annotate_evidence", "true", "--data.synth.price_share", "0.7",
             "--data.synth.category_share=0.3", "--data.synth.description_share", "0.4"]
    steps = commands("out", qp, qp.budgets, configs=CONFIGS, extra=extra)
    sample = next(s for s in steps if s.kind == "sample").argv
    assert (opt(sample, "--synth-n-val"), opt(sample, "--synth-seed"), opt(sample, "--data-dir")) == ("6", "3", "/d")
    # the prompts change: the sampler must show the same items
    assert (opt(sample, "--synth-price-share"), opt(sample, "--synth-category-share"),
            opt(sample, "--synth-description-share")) == ("0.7", "0.3", "0.4")
    assert opt(sample, "--synth-n-train") == str(qp.budgets["n_train"]) and "--trainer.max_steps" not in sample
    for bad in (["--data.synth.items_per_query", "2"], ["--data.train=my.jsonl"], ["--data.synth", "{n_val: 6}"]):
        with pytest.raises(TaosrError, match=rf"^quickstart: {bad[0].split('=')[0]} \(after --\) changes the training data"):
            commands("out", qp, qp.budgets, configs=CONFIGS, extra=bad)
    # what leaves the training examples as they are is accepted (the sample step samples the training split)
    for fine in (["--data.val", "null"], ["--data.test", "mine.jsonl"], ["--data.reader.on_error", "skip"],
                 ["--data.train", "synth"]):
        commands("out", qp, qp.budgets, configs=CONFIGS, extra=fine)


def test_the_heldout_set_avoids_the_queries_of_the_data_the_overrides_make():
    """The quick start's held-out set was drawn against the budgets' data (seed, sizes), not the data
    the overrides after -- make: with --data.synth.seed 1, 103 of 200 held-out queries were training
    queries."""
    from taosr.data.synth import generate, heldout
    from taosr.errors import TaosrError
    from taosr.pipeline import synth_base

    budgets = {"n_train": 200, "n_test": 20}
    base = synth_base(budgets, 0, ["--data.synth.seed", "1", "--data.synth.n_train=400", "--trainer.max_steps", "2"])
    assert (base.seed, base.n_train, base.n_val, base.n_test) == (1, 400, 200, 20)
    assert synth_base(budgets, 3, []).seed == 3
    shares = synth_base(budgets, 0, ["--data.synth.price_share=0.5", "--data.synth.category_share", "0.2",
                                     "--data.synth.description_share=0.3"])
    assert (shares.price_share, shares.category_share, shares.description_share) == (0.5, 0.2, 0.3)  # as the fits'
    with pytest.raises(TaosrError, match=r"^quickstart: --data.synth.price_share \(after --\): must be a number"):
        synth_base(budgets, 0, ["--data.synth.price_share", "half"])
    train = {ex.query for rows in generate(base).values() for ex in rows}
    held = heldout(60, seed=base.seed + 1, base=base)
    assert train and not {ex.query for ex in held} & train


def test_step_record_resumes_only_its_own_interrupted_fit(tmp_path):
    """An interrupted fit of the same command resumes from its last.ckpt; a fit whose command changed
    starts fresh and removes the other command's last.ckpt, so that its own interrupt cannot resume it."""
    from taosr.pipeline import StepRecord

    root = tmp_path / "grpo"
    (root / "checkpoints").mkdir(parents=True)
    ckpt = root / "checkpoints" / "last.ckpt"
    ckpt.write_text("x")
    step = Step("fit", ["fit", "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2"], "grpo")
    rec = StepRecord(str(tmp_path))
    assert rec.finished(step) == (None, "") and rec.start(step)[-2:] == ["--trainer.max_steps", "2"]  # never ran
    assert not ckpt.exists()
    rec.stop(step, 3.0)
    ckpt.write_text("x")  # what the interrupted fit saved
    again = StepRecord(str(tmp_path))
    assert again.finished(step) == (None, "interrupted before: resuming it")
    assert again.start(step)[-2:] == ["--ckpt_path", str(ckpt)] and ckpt.exists()
    again.stop(step, 2.0)
    other = Step("fit", ["fit", "--trainer.default_root_dir", str(root), "--trainer.max_steps", "4"], "grpo")
    later = StepRecord(str(tmp_path))
    assert later.finished(other)[1].startswith("ran before with other settings (was `--trainer.max_steps 2`")
    assert "--ckpt_path" not in later.start(other) and not ckpt.exists()
    later.stop(other, 1.0)
    later.done(other)
    assert later.seconds(other) == 1.0
    (root / "export").mkdir()
    (root / "export" / "config.json").write_text("{}")
    assert StepRecord(str(tmp_path)).finished(other) == (1.0, "")
    (tmp_path / "quickstart-steps.json").write_text("{not json")
    with pytest.raises(TaosrError, match=r"quickstart-steps.json cannot be read"):
        StepRecord(str(tmp_path))


def test_a_fresh_start_forgets_the_steps_after_it_and_a_rerun_chain_never_resumes(tmp_path):
    """A step that starts fresh drops the records of the chain after it (they read its old output), so a
    fit after it starts fresh even with its own interrupted checkpoint, which it removes."""
    from taosr.pipeline import StepRecord

    def fit(name):
        return Step("fit", ["fit", "--trainer.default_root_dir", str(tmp_path / name)], name)

    sft, dpo, grm = fit("sft"), fit("dpo"), fit("grm")
    rec = StepRecord(str(tmp_path))
    for s in (sft, dpo, grm):
        rec.start(s)
        rec.stop(s, 1.0)
    rec.done(sft)
    (tmp_path / "dpo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "dpo" / "checkpoints" / "last.ckpt").write_text("x")  # dpo interrupted
    assert rec.resumable(dpo) is not None
    rec.start(sft, later=["fit dpo", "fit grm"])  # sft runs again
    assert set(StepRecord(str(tmp_path)).steps) == {"fit sft"}  # dpo and grm forgotten, on disk too
    assert rec.resumable(dpo) is None and rec.finished(dpo) == (None, "")
    assert "--ckpt_path" not in rec.start(dpo, later=["fit grm"])
    assert not (tmp_path / "dpo" / "checkpoints" / "last.ckpt").exists()


def test_a_moved_quick_start_keeps_its_finished_steps_and_resumes_its_fit(tmp_path, monkeypatch):
    """The records name the folder they were written in: the whole folder moved (a checkout copied to
    another path), the same command from the new place keeps what finished and resumes what was cut."""
    import shutil

    from taosr.pipeline import StepRecord

    def steps(base):
        cfg = base / "sft.yaml"
        return (Step("fit", ["fit", "--config", str(cfg), "--trainer.default_root_dir", str(base / "qs" / "sft")], "sft"),
                Step("fit", ["fit", "--config", str(cfg), "--trainer.default_root_dir", str(base / "qs" / "dpo"),
                             "--model.init_args.model.name_or_path", str(base / "qs" / "sft" / "export")], "dpo"))

    a = tmp_path / "a" / "main"
    (a / "qs" / "sft" / "export").mkdir(parents=True)
    (a / "qs" / "sft" / "export" / "config.json").write_text("{}")
    (a / "sft.yaml").write_text("trainer: {max_steps: 2}\n")
    monkeypatch.chdir(a)
    sft, dpo = steps(a)
    rec = StepRecord("qs")
    for s in (sft, dpo):
        rec.start(s)
        rec.stop(s, 2.0)
    rec.done(sft)
    (a / "qs" / "dpo" / "checkpoints").mkdir(parents=True)
    (a / "qs" / "dpo" / "checkpoints" / "last.ckpt").write_text("x")  # dpo interrupted
    b = tmp_path / "elsewhere" / "main"
    shutil.move(str(a.parent), str(b.parent))
    monkeypatch.chdir(b)
    sft, dpo = steps(b)
    moved = StepRecord("qs")
    assert moved.finished(sft) == (2.0, "")
    assert moved.finished(dpo) == (None, "interrupted before: resuming it")
    assert moved.start(dpo)[-2:] == ["--ckpt_path", str(b / "qs" / "dpo" / "checkpoints" / "last.ckpt")]
    # a config whose content changed still counts as another command, wherever the folder is
    (b / "sft.yaml").write_text("trainer: {max_steps: 3}\n")
    assert StepRecord("qs").finished(sft)[1].startswith("ran before with other settings")
