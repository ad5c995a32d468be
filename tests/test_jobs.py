"""taosr.jobs: worker slots (cores, GPUs) and the parallel runner (real `python -m taosr.cli` processes)."""
import os

import pytest

from taosr.jobs import Slot, Task, make_slots, run_parallel
from tests.conftest import ROOT


def test_slots_split_cores_and_share_gpus():
    a, b = make_slots(2, cpus=[0, 1, 2, 3], gpus=[])
    assert (a.cpus, b.cpus) == ([0, 1], [2, 3]) and a.gpu is None
    assert a.env() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    three = make_slots(3, cpus=[4, 5], gpus=["2", "5"])
    assert [s.cpus for s in three] == [[4], [5], [4]]           # more jobs than cores: shared round-robin
    assert [s.gpu for s in three] == ["2", "5", "2"]
    assert three[1].env()["CUDA_VISIBLE_DEVICES"] == "5" and three[1].env()["OMP_NUM_THREADS"] == "1"
    assert [s.cpus for s in make_slots(3, cpus=list(range(8)), gpus=[])] == [[0, 1], [2, 3, 4], [5, 6, 7]]


def test_run_parallel_runs_commands_in_order_and_stops_after_a_failure(tmp_path):
    logs = [str(tmp_path / f"t{i}" / "log") for i in range(3)]
    ok = Task("ok", [["--help"], ["--help"]], logs[0])
    bad = Task("bad", [["no-such-command"], ["--help"]], logs[1])
    never = Task("never", [["--help"]], logs[2])
    lines = []
    failed = run_parallel([ok, bad, never], [Slot(0, [])], env=lambda t: {"TAOSR_TEST_TASK": t.name},
                          say=lines.append, poll_s=0.05)
    assert failed == [bad] and bad.failed == (0, 2) and ok.failed is None
    text = open(logs[0]).read()
    assert text.count("$ taosr --help") == 2 and "usage: taosr COMMAND" in text
    bad_log = open(logs[1]).read()
    assert "unknown command 'no-such-command'" in bad_log and "$ taosr --help" not in bad_log  # its next step never ran
    assert not os.path.exists(logs[2])                                      # no new task after a failure
    assert any(line.startswith("bad: taosr no-such-command failed (exit 2)") for line in lines)


def test_compare_jobs_must_be_positive(tmp_path):
    from taosr.compare import compare_main
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match="--jobs 0: must be at least 1"):
        compare_main(["comparisons/srpo_vs_grpo.yaml", "--jobs", "0"])
    with pytest.raises(ConfigError, match="--report-only: no finished runs under"):
        compare_main([os.path.join(ROOT, "comparisons", "srpo_vs_grpo.yaml"), "--report-only", "--out", str(tmp_path)])
