import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker: with `-n 2` on 2 cores, two threads per worker oversubscribe
    # the cores and OpenMP's spin-waiting slows every forward pass many times over.
    import torch

    torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test tiers (markers registered in pyproject.toml): `pytest -m unit` (pure functions, seconds),
# `-m integration` (modules, engines, models, resume), `-m e2e` (configs, CLI, DDP, notebooks).
# A file not listed here is an integration test until it is placed; `gpu` tests mark themselves.
TIERS = {
    "unit": ("test_split", "test_advantages", "test_format", "test_layers", "test_losses", "test_metrics", "test_readers",
             "test_registry", "test_synth", "test_trl_parity", "test_join", "test_ranking", "test_targets", "test_quickstart_plan", "test_flips"),
    "integration": ("test_datamodule", "test_scores", "test_reason", "test_engines", "test_examiner", "test_grpo_module", "test_models",
                    "test_resume", "test_kvcache", "test_jobs", "test_history", "test_delta"),
    "e2e": ("test_bad_inputs", "test_score_cli", "test_label_only", "test_your_data", "test_quickstart", "test_architectures", "test_bad_runs", "test_cli", "test_compare", "test_configs", "test_ddp", "test_notebooks", "test_benchmarks"),
}
TIER_OF = {name: tier for tier, names in TIERS.items() for name in names}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = os.path.splitext(os.path.basename(str(item.fspath)))[0]
        if item.get_closest_marker("gpu") is not None:
            continue
        item.add_marker(getattr(pytest.mark, TIER_OF.get(name, "integration")))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Shared cache for synthetic data and tiny models across tests of one session."""
    return str(tmp_path_factory.mktemp("cache"))


SMOKE = os.path.join(ROOT, "configs", "experiment", "smoke.yaml")
SMOKE_RL = os.path.join(ROOT, "configs", "experiment", "smoke_rl.yaml")


def small_overrides(root: str, cache: str, model: str = "micro", n_train: int = 48) -> list[str]:
    """Arguments that turn any config into a few-second CPU smoke run: the smoke overlay
    (configs/experiment/smoke.yaml) plus this run's folder, caches and model."""
    args = ["--config", SMOKE,
            "--trainer.default_root_dir", root,
            "--model.init_args.model.name_or_path", model,
            "--model.init_args.model.cache_dir", os.path.join(cache, "models"),
            "--data.data_dir", os.path.join(cache, "data")]
    return args + (["--data.synth.n_train", str(n_train)] if n_train != 48 else [])


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
    return sample_smoke(os.path.join(sft_run, "export"), str(tmp_path_factory.mktemp("samples") / "samples.jsonl"),
                        cache_dir)


def sample_smoke(model: str, out: str, cache: str) -> str:
    """`taosr sample` in-process: pass@4 of ``model`` on 12 training prompts of the smoke data."""
    from taosr.cli import main

    assert main(["sample", "--model", model, "--out", out, "--n", "4", "--limit", "12",
                 "--max-new-tokens", "24", "--synth-n-train", "48", "--synth-n-val", "6", "--synth-n-test", "6",
                 "--data-dir", os.path.join(cache, "data")]) == 0
    return out


class TinyTok:
    """Tokenizer stand-in for engine tests on :func:`tiny_llama`: pad 0, end-of-sequence 2."""
    pad_token_id, eos_token_id = 0, 2


def tiny_llama(seed: int = 0, layers: int = 2):
    """A seeded 40-token Llama with grouped-query attention, in eval mode (engine and cache tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2,
                                        bos_token_id=1)).eval()


def rl_samples_overrides(samples_path: str) -> list[str]:
    """The RL configs train on rejection-sampled prompts; a micro model's pass rates are mostly 0, so
    the smoke runs widen the band to keep every sampled prompt (the hook still runs on the file):
    configs/experiment/smoke_rl.yaml."""
    return ["--data.samples_path", samples_path, "--config", SMOKE_RL]
