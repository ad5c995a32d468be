"""GRPO under Lightning DDP with 2 CPU processes (gloo): rollouts per rank, groups never split
across ranks (each rank samples all G completions of its own prompts), normalisers shared."""
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
           "--model.init_args.dynamic_sampling", "false", *rl_samples_overrides(samples)]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "distributed_backend=gloo" in r.stderr or "gloo" in r.stderr
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert os.path.exists(os.path.join(root, "export", "config.json"))
    metrics = open(next(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f == "metrics.csv")).read()
    assert "train/reward" in metrics and "val/macro_f1" in metrics
