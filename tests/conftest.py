import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Shared cache for synthetic data and tiny models across tests of one session."""
    return str(tmp_path_factory.mktemp("cache"))


def small_overrides(root: str, cache: str, model: str = "micro", n_train: int = 48) -> list[str]:
    """CLI overrides that turn any config into a few-second CPU smoke run."""
    return [
        "--trainer.default_root_dir", root,
        "--trainer.max_steps", "2",
        "--trainer.max_epochs", "1",
        "--trainer.val_check_interval", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1",
        "--model.init_args.model.name_or_path", model,
        "--model.init_args.model.cache_dir", os.path.join(cache, "models"),
        "--model.init_args.eval_generation.max_new_tokens", "24",
        "--data.data_dir", os.path.join(cache, "data"),
        "--data.synth.n_train", str(n_train),
        "--data.synth.n_val", "6",
        "--data.synth.n_test", "6",
        "--data.limit_val", "4",
        "--data.eval_batch_size", "4",
        "--data.batch_size", "4",
    ]


def fit(cfg, root, cache, *extra, overlays=()):
    """`taosr fit` in-process on a config with the smoke-run overrides."""
    from taosr.cli import main

    args = ["fit", "--config", os.path.join(ROOT, cfg)]
    for o in overlays:
        args += ["--config", os.path.join(ROOT, o)]
    args += small_overrides(root, cache) + list(extra)
    assert main(args) == 0
    return root


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, cache_dir):
    """A few SFT steps of the micro model: its export, checkpoint and eval files."""
    root = str(tmp_path_factory.mktemp("sft"))
    fit("configs/sft.yaml", root, cache_dir)
    return root


@pytest.fixture(scope="session")
def samples(tmp_path_factory, sft_run, cache_dir):
    """`taosr sample` output of the SFT run: pass@4 on 12 training prompts."""
    from taosr.cli import main

    out = str(tmp_path_factory.mktemp("samples") / "samples.jsonl")
    assert main(["sample", "--model", os.path.join(sft_run, "export"), "--out", out, "--n", "4", "--limit", "12",
                 "--max-new-tokens", "24", "--synth-n-train", "48", "--synth-n-val", "6", "--synth-n-test", "6",
                 "--data-dir", os.path.join(cache_dir, "data")]) == 0
    return out


def rl_samples_overrides(samples_path: str) -> list[str]:
    """The RL configs train on rejection-sampled prompts; a micro model's pass rates are mostly 0, so
    the smoke runs widen the band to keep every sampled prompt (the hook still runs on the file)."""
    return ["--data.samples_path", samples_path, "--data.rejection_sampling.low", "-1",
            "--data.rejection_sampling.high", "2", "--trainer.check_val_every_n_epoch", "null",
            "--trainer.max_epochs", "-1"]
