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
    dropped = next(line for line in out.splitlines() if line.startswith("| finished rows dropped | "))
    assert dropped.endswith("| yes |")  # dropping finished rows writes the same tokens
    assert "| + written positions only (default) | " in out


def test_compare_schedule_replays_a_log_in_each_order(tmp_path, cache_dir):
    # two arms, b's fits 5/3 of a's: in submission order b seed 1's fit starts last (130 min);
    # longest first starts it while a's fits fill the other worker (110 min; all work / 2 = 105), and so
    # does seed by seed (what compare runs now), which also has seed 0 whole 40 minutes sooner
    took = [("1/5", "start", None, "test", 10), ("2/5", "a", 0, "fit", 30), ("2/5", "a", 0, "test", 10),
            ("3/5", "b", 0, "fit", 50), ("3/5", "b", 0, "test", 10), ("4/5", "a", 1, "fit", 30),
            ("4/5", "a", 1, "test", 10), ("5/5", "b", 1, "fit", 50), ("5/5", "b", 1, "test", 10)]
    log = tmp_path / "compare.log"
    log.write_text("[spec] 5 runs in 2 workers: cpus 0; cpus 1\n" + "".join(
        f"[spec {i}] {arm}{'' if s is None else f' seed {s}'}: {verb} took {m * 60}s\n" for i, arm, s, verb, m in took))
    out = _bench("compare_schedule.py", str(log), "--jobs", "2", cache_dir=cache_dir)
    assert f"| {log} | 9 | 12600 | 130.0 | 110.0 | 110.0 | 105.0 |" in out
    # longest first fits b seed 1 before a seed 0 is scored; seed by seed scores seed 0 first
    assert f"| {log} | longest | 0: 100.0, 1: 110.0 |" in out
    assert f"| {log} | seeds | 0: 60.0, 1: 110.0 |" in out


def test_update_plan_runs(cache_dir):
    out = _bench("update_plan.py", "--model", "micro", "--prompts", "2", "--G", "4", "--batches", "2", "--new", "6",
                 "--all-groups", cache_dir=cache_dir)
    assert "| rollout order | " in out and "| + repeats computed once (default) | " in out


def test_grm_scoring_runs(cache_dir):
    out = _bench("grm_scoring.py", "--model", "micro", "--prompts", "2", "--G", "3", "--batches", "2", "--new", "6",
                 cache_dir=cache_dir)
    assert "| kept groups only, one call per group (SRPO now) | " in out
    assert "all groups vs kept only: identical" in out


def test_vllm_checks_scoring_of_the_trainer_side_is_grpos():
    """benchmarks/vllm_check.py (GPU only) compares vLLM's log-probs with ``trainer_logps``: on CPU, that
    scoring (chunked rows, left-padded prompts, a completion that ended early) is GRPO's own."""
    import importlib.util

    import torch

    from tests.test_grpo_module import _rollout, _tiny
    from taosr.methods.grpo import GRPOModule

    spec = importlib.util.spec_from_file_location("vllm_check", os.path.join(ROOT, "benchmarks", "vllm_check.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, r = _tiny(), _rollout(temperature=1.3)
    with torch.no_grad():
        want = GRPOModule(prefix_sharing=False)._logps(model, r) * r.completion_mask
    got = bench.trainer_logps(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, 1.3, rows=3)
    assert torch.allclose(got, want, atol=1e-5)


def test_cpu_precision_runs(cache_dir):
    out = _bench("cpu_precision.py", "--model", "micro", "--threads", "1", "--reps", "2", "--batch", "2", "--length", "12",
                 "--prompts", "2", "--G", "2", "--prompt-length", "6", "--new-tokens", "5", cache_dir=cache_dir)
    assert "| work | float32 s | bf16 autocast s | float32 / bf16 |" in out
    assert "| rollout, 2 x 2 x 5 new tokens (20 tokens) | " in out


def _packed(folder, payload: bytes, size: int = 5) -> str:
    """``payload`` split as smollm2_pack splits a start: parts named by the md5 of the whole."""
    import hashlib

    tag = hashlib.md5(payload).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(range(0, len(payload), size)):
        (folder / f"smollm2-start-{tag}.tar.part-a{'abcdefghijklmnopqrstuvwxyz'[k]}").write_bytes(payload[i:i + size])
    return tag


def _restore(gathered, carried, out):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "start_parts.py"), str(gathered),
                           str(carried), str(out)], capture_output=True, text=True, timeout=60)


def test_start_parts_picks_the_whole_start_among_stale_and_several(tmp_path):
    """gpu_session.sh smollm2_restore's choice of start (benchmarks/start_parts.py), on parts as a lent
    machine gathers them in /tmp/start: every call's own, and leftovers of other starts."""
    gathered, carried, out = tmp_path / "gathered", tmp_path / "carried", tmp_path / "start.tar"
    real = b"the real start's tar, in several parts" * 3
    tag = _packed(gathered, real)
    stale = _packed(gathered, b"an older start, one part of it lost" * 2)
    sorted(gathered.glob(f"*{stale}*"))[-1].unlink()
    p = _restore(gathered, carried, out)
    assert p.returncode == 0 and f"smollm2_restore: start {tag}" in p.stdout, p.stderr
    assert out.read_bytes() == real and not list(tmp_path.glob("start.tar.tmp*"))

    other = _packed(gathered, b"a second whole start" * 4)  # two whole starts: the one carried now
    _packed(carried, b"a second whole start" * 4)
    out.unlink()
    p = _restore(gathered, carried, out)
    assert p.returncode == 0 and f"start {other}" in p.stdout and out.read_bytes() == b"a second whole start" * 4
    for f in carried.iterdir():  # neither carried: no guess
        f.unlink()
    p = _restore(gathered, carried, out)
    assert p.returncode == 1 and "more than one whole start" in p.stderr and tag in p.stderr and other in p.stderr


def test_start_parts_refuses_a_start_with_a_part_missing(tmp_path):
    gathered = tmp_path / "gathered"
    tag = _packed(gathered, b"0123456789abcdefghij")
    sorted(gathered.iterdir())[1].unlink()
    p = _restore(gathered, tmp_path / "carried", tmp_path / "start.tar")
    assert p.returncode == 1 and f"(tags: {tag})" in p.stderr and "missing or damaged" in p.stderr
    assert not (tmp_path / "start.tar").exists()
    p = _restore(tmp_path / "nothing", tmp_path / "carried", tmp_path / "start.tar")
    assert p.returncode == 1 and "no parts of a start" in p.stderr
