"""The benchmark scripts still run (tiny sizes on CPU; what they measure is not asserted). Tests do not
run them otherwise, and two of them broke unseen when the rollout became a typed record."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def _bench(script: str, *args: str, cache_dir: str) -> str:
    env = {**os.environ, "TAOSR_MODELS": os.path.join(cache_dir, "models"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def test_grpo_step_breakdown_runs(cache_dir):
    out = _bench("grpo_gpu_step.py", "--device", "cpu", "--preset", "micro", "--prompts", "2", "--G", "2",
                 "--max-new", "6", "--steps", "1", "--warmup", "1", "--n-train", "24", "--graphs", "off",
                 cache_dir=cache_dir)
    assert "| CUDA graphs | graphs made | step s | rollout s |" in out and "\n| off | none | " in out


def test_rollout_throughput_runs(cache_dir):
    out = _bench("rollout_throughput.py", "--device", "cpu", "--presets", "micro", "--sequences", "4",
                 "--new", "4", "--prompt-len", "8", "--reps", "1", "--skip-static", cache_dir=cache_dir)
    assert "taosr engine, eager steps" in out and "generate (dynamic cache)" in out


def test_eval_generation_runs(cache_dir):
    out = _bench("eval_generation.py", "--model", "micro", "--batch", "3", "--batches", "1", "--new", "5",
                 cache_dir=cache_dir)
    assert "| static cache, written positions, finished rows dropped (evaluation) |" in out
    assert out.rstrip().endswith("| yes |")


def test_rollout_rows_runs(cache_dir):
    out = _bench("rollout_rows.py", "--model", "micro", "--prompts", "2", "--G", "3", "--batches", "2", "--new", "6",
                 cache_dir=cache_dir)
    assert "| finished rows dropped (default) |" in out
