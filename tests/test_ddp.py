"""GRPO under Lightning DDP with 2 CPU processes (gloo): rollouts per rank, groups never split
across ranks (each rank samples all G completions of its own prompts), normalisers shared, a
curriculum's filtered prompts sharded by the training sampler itself; SFT from the `taosr` script."""
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, rl_samples_overrides, small_overrides

pytestmark = pytest.mark.slow  # end to end: subprocesses / notebook kernels


def test_grpo_two_processes_gloo(tmp_path, sft_run, samples, cache_dir):
    root = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "taosr.cli", "fit", "--config", os.path.join(ROOT, "configs/grpo.yaml"),
           *small_overrides(root, cache_dir),
           "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", root,
           "--model.init_args.dynamic_sampling", "false", *rl_samples_overrides(samples),
           # a curriculum filters the epoch's prompts, so the sampler yields fewer than its length
           "--data.curriculum", '{"stages": [{"max_difficulty": 0.5, "until_step": 1}, {"max_difficulty": 1.0}]}']
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "distributed_backend=gloo" in r.stderr or "gloo" in r.stderr
    assert r.stdout.count("curriculum advanced to stage 1 at step 1") == 2  # on both ranks, at the same step
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert os.path.exists(os.path.join(root, "export", "config.json"))
    metrics = open(next(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f == "metrics.csv")).read()
    assert "train/reward" in metrics and "val/macro_f1" in metrics


def test_sft_two_processes_from_the_console_script_with_a_cold_model_cache(tmp_path, cache_dir):
    """`taosr fit ... --trainer.devices 2` as the README writes it: Lightning restarts the script for
    rank 1 (`python <argv[0]> fit ...`: argv[0] must be the script, not a bare `taosr` resolved
    against the working folder), and the micro preset, absent from the cache, is built once (rank 1
    alone would publish a folder without weights: transformers saves on rank 0 only)."""
    import shutil

    script = shutil.which("taosr") or os.path.join(os.path.dirname(sys.executable), "taosr")
    root, models = str(tmp_path / "ddp"), str(tmp_path / "models")
    cmd = [script, "fit", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(root, cache_dir),
           "--model.init_args.model.cache_dir", models, "--trainer.max_steps", "2",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.logger", "false"]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    built = [d for d in os.listdir(models) if d.startswith("micro-")]
    assert len(built) == 1 and os.path.exists(os.path.join(models, built[0], "model.safetensors")), os.listdir(models)
    assert os.path.exists(os.path.join(root, "export", "config.json"))
