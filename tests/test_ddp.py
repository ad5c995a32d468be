"""GRPO under Lightning DDP with 2 CPU processes (gloo): rollouts per rank, groups never split
across ranks (each rank samples all G completions of its own prompts), normalisers shared, a
curriculum's filtered prompts sharded by the training sampler itself; SFT from the `taosr` script;
one rank's failure ends every rank, SIGTERM still saves."""
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


def _faulty_sft(tmp_path, cache_dir, extra=(), **fault):
    """A 2-process SFT run with ``tests.ddp_faults.FailOneRank`` (``fault``: its TAOSR_* settings);
    returns (exit code, seconds, stderr, run folder). The output goes to files (a pipe would also
    wait for an orphaned rank that still holds it), and whatever is left of the run (a hung rank on
    the old code) is killed at the end."""
    import signal
    import time

    root = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "taosr.cli", "fit", "--config", os.path.join(ROOT, "configs/sft.yaml"),
           *small_overrides(root, cache_dir), "--trainer.max_steps", "5", "--trainer.logger", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.callbacks+=tests.ddp_faults.FailOneRank", *extra]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
           **{f"TAOSR_{k.upper()}": str(v) for k, v in fault.items()}}
    start = time.monotonic()
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, time.monotonic() - start, (tmp_path / "err").read_text(), root


@pytest.mark.parametrize("rank", [0, 1])
def test_one_rank_failing_ends_every_rank(tmp_path, cache_dir, rank):
    """An error on one rank while the other is inside its step: the failing rank used to write
    last.ckpt, whose barrier the other never reaches, and the run hung for good (rank 0, measured:
    still waiting after 10 minutes, SIGTERM included). Now it does not save there (saying so), the
    ranks it started are killed (rank 0), and a failed child rank is reaped by Lightning's observer:
    the command ends well before the busy rank would have woken up."""
    rc, took, stderr, root = _faulty_sft(tmp_path, cache_dir, fail_rank=rank, busy_seconds=400, fault="raise")
    assert rc != 0, stderr[-3000:]
    assert took < 250, f"{took:.0f} s"
    assert f"injected failure on rank {rank}" in stderr
    assert f"RuntimeError on rank {rank} of 2: no last.ckpt at step 2" in stderr, stderr[-3000:]
    if rank == 0:
        assert "RuntimeError on rank 0: ending the other ranks" in stderr
    assert not os.path.exists(os.path.join(root, "checkpoints", "last.ckpt"))


def test_sigterm_to_rank_0_stops_every_rank_with_a_checkpoint(tmp_path, cache_dir):
    """SIGTERM (a preempted job) is the one stop every rank makes together (Lightning forwards it
    and raises at the same batch boundary), so a multi-process run still writes last.ckpt then, and
    ends with 143 (the resume note), not a hang."""
    rc, _, stderr, root = _faulty_sft(tmp_path, cache_dir, fail_rank=0, fault="sigterm")
    assert rc == 143, stderr[-3000:]
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    assert 2 <= ckpt["global_step"] < 5
    assert f"(checkpoint: {root}/checkpoints/last.ckpt, step {ckpt['global_step']})" in stderr


@pytest.mark.parametrize("fault,rank", [("sigint_group", 0), ("sigint", 1)])
def test_ctrl_c_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path, cache_dir, fault, rank):
    """Ctrl-C in a terminal reaches every rank at a different point of its step; `kill -INT` may reach
    one rank only. Either way every rank ends the step it is in and they stop together, so last.ckpt
    holds that step (it used to keep only the last periodic save: the ranks cannot save alone), the
    command ends with 130 and its resume note, and the resume finishes the run."""
    rc, _, stderr, root = _faulty_sft(tmp_path, cache_dir, fail_rank=rank, fault=fault)
    assert rc == 130, stderr[-3000:]
    assert "every rank stops at the end of this step" in stderr
    ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # the step the signal came in (step 2) was finished, then every rank stopped
    assert f"interrupted (checkpoint: {root}/checkpoints/last.ckpt, step 3)" in stderr, stderr[-3000:]
    if rank == 0:  # the resume finishes the run
        rc, _, stderr, _ = _faulty_sft(tmp_path, cache_dir, fail_rank=rank, fault="none",
                                       extra=["--ckpt_path", os.path.join(root, "checkpoints", "last.ckpt")])
        assert rc == 0, stderr[-3000:]
        ckpt = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 5


def test_a_second_ctrl_c_stops_every_rank_at_once_without_saving(tmp_path, cache_dir):
    rc, took, stderr, root = _faulty_sft(tmp_path, cache_dir, fail_rank=0, fault="sigint_twice")
    assert rc == 130, stderr[-3000:]
    assert took < 250, f"{took:.0f} s"
    assert not os.path.exists(os.path.join(root, "checkpoints", "last.ckpt"))


def test_a_ddp_update_applies_the_single_process_gradient(tmp_path):
    """Two GRPO updates of fixed rollout batches, on 2 ranks (each its own prompts, several micro-batch
    backward passes inside no_sync, then one synchronised pass; normalisers summed over ranks) and in
    one process over every row: the gradients applied are the same. (Checked by reasoning in an audit
    before: DDP's forward arms the first micro-batch's backward to all-reduce inside no_sync, and the
    later reduction averages that part again, which changes nothing; a rank-local normaliser moves them
    by 0.12.)"""
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    got = {}
    for devices in (1, 2):
        out = str(tmp_path / f"grads{devices}.pt")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "ddp_grads.py"), out, str(devices)],
                           cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        got[devices] = torch.load(out)
    assert len(got[1]) == len(got[2]) == 2
    for one, two in zip(got[1], got[2]):
        assert max(float(v.abs().max()) for v in one.values()) > 0.05
        for name, g in one.items():
            assert torch.allclose(g, two[name], atol=1e-6, rtol=1e-5), name
