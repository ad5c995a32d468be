"""taosr.history: training history read back from a CSVLogger file and from a real offline W&B run."""
import math
import os
import time

import pytest

from taosr.history import WANDB_STEP, change_over, csv_history, mean_of, run_history, wandb_history


def test_csv_history_and_means(tmp_path):
    d = tmp_path / "run" / "grpo" / "version_0"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("step,train/reward,val/macro_f1\n4,0.5,\n9,0.7,\n9,,0.8\n")
    rows = run_history(str(tmp_path / "run"))
    assert rows == csv_history(str(d / "metrics.csv")) and len(rows) == 3
    assert mean_of(rows, "train/reward") == 0.6 and mean_of(rows, "val/macro_f1") == 0.8
    assert math.isnan(mean_of(rows, "train/steps/critical_count"))



def test_change_over_a_fit_compares_its_last_third_with_its_first():
    """Last third's mean minus first third's, in step order, over the rows that logged the key."""
    rows = [{"step": float(i), "acc": v} for i, v in enumerate([0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.7, 0.8, 0.9])]
    assert change_over(rows, "acc") == pytest.approx(0.8 - 0.2)
    # rows out of order (as two legs might be) are put in step order; rows without the key or NaN don't count
    mixed = [rows[8], {"step": 9.0, "other": 1.0}, *rows[:8], {"step": 10.0, "acc": float("nan")}]
    assert change_over(mixed, "acc") == pytest.approx(0.6)
    # W&B rows carry their step as trainer/global_step; a share leaves at least one row each end
    wb = [{WANDB_STEP: 9.0, "acc": 0.4}, {WANDB_STEP: 4.0, "acc": 0.7}]
    assert change_over(wb, "acc") == pytest.approx(-0.3) and change_over(rows, "acc", share=0.1) == pytest.approx(0.8)
    assert math.isnan(change_over(rows[:1], "acc")) and math.isnan(change_over(rows, "missing"))


def test_offline_wandb_run_is_read_back(tmp_path):
    import wandb

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", reinit="finish_previous")
    for i in range(60):  # enough rows to cross a 32 KiB block of the file
        run.log({"train/reward": i / 10, "train/steps/critical_count": 2 * i, "note": "x" * 600})
    run.finish()
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files
    size, t0 = -1, time.time()
    while os.path.getsize(files[0]) != size and time.time() - t0 < 10:  # wandb's writer may still flush
        size = os.path.getsize(files[0])
        time.sleep(0.5)
    rows = wandb_history(str(files[0]))
    # under load wandb-core has been seen to leave out the last row; every row read must be right and
    # in order, and enough of them to cross the first 32 KiB block
    k = len(rows)
    assert k >= 58 and os.path.getsize(files[0]) > 32768
    assert [r["train/reward"] for r in rows] == [i / 10 for i in range(k)]
    assert all("note" not in r for r in rows)  # strings are not figures
    assert mean_of(run_history(str(tmp_path)), "train/steps/critical_count") == k - 1.0


def test_unreadable_history_is_none_not_an_error(tmp_path):
    d = tmp_path / "wandb" / "offline-run-x"
    d.mkdir(parents=True)
    (d / "run-x.wandb").write_bytes(b"not a wandb file")
    assert run_history(str(tmp_path)) is None
    assert run_history(str(tmp_path / "missing")) is None


def test_a_fit_resumed_across_wandb_and_csv_keeps_both_legs(tmp_path):
    """A fit logged steps 0-24 to offline W&B, was interrupted, and resumed from its step-20 checkpoint
    with W&B disabled (a CSV leg of steps 20-39). Before, the history read only the CSV when any existed
    and lost the first leg; now it keeps W&B's steps the CSV lacks, and a step both logged once."""
    import wandb

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", reinit="finish_previous")
    for step in range(25):  # as Lightning's WandbLogger logs: the step rides in the row
        run.log({"train/reward": 1.0, "trainer/global_step": step})
    run.finish()
    _flushed(tmp_path)
    d = tmp_path / "grpo" / "version_0"
    d.mkdir(parents=True)
    d.joinpath("metrics.csv").write_text("step,train/reward\n" + "".join(f"{s},3.0\n" for s in range(20, 40)))
    _later(d / "metrics.csv")
    rows = run_history(str(tmp_path))
    steps = sorted(r.get("step", r.get("trainer/global_step")) for r in rows if "train/reward" in r)
    assert steps == list(range(40))
    assert mean_of(rows, "train/reward") == (20 * 1.0 + 20 * 3.0) / 40


def _flushed(root):
    """Wait until wandb's writer has finished the offline run's file under ``root``."""
    files = list((root / "wandb").glob("offline-run-*/run-*.wandb"))
    size, t0 = -1, time.time()
    while os.path.getsize(files[0]) != size and time.time() - t0 < 10:
        size = os.path.getsize(files[0])
        time.sleep(0.5)


def _later(path, seconds: int = 5):
    """Date ``path`` after every other file of the run (the legs are ordered by when they were written)."""
    t = time.time_ns() + seconds * 10**9
    os.utime(path, ns=(t, t))


def test_a_csv_logger_beside_wandb_is_not_counted_twice(tmp_path):
    import wandb

    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", reinit="finish_previous")
    for step in range(6):
        run.log({"train/reward": float(step), "trainer/global_step": step})
    run.log({"other": 1.0})  # a row without a step: not told apart from a CSV twin, so left out
    run.finish()
    _flushed(tmp_path)
    d = tmp_path / "grpo" / "version_0"
    d.mkdir(parents=True)
    # the same rows, but for the last step, which only W&B got (the CSV's last write was lost)
    d.joinpath("metrics.csv").write_text("step,train/reward\n" + "".join(f"{s},{s}.0\n" for s in range(5)))
    _later(d / "metrics.csv")
    rows = run_history(str(tmp_path))
    assert len(rows) == 6 and mean_of(rows, "train/reward") == 2.5 and all("other" not in r for r in rows)


def test_steps_a_resumed_leg_logged_again_count_once_from_the_later_leg(tmp_path):
    """A hard kill at step 25 and a resume from the step-20 checkpoint: steps 20-25 are in both CSV
    versions; the redone ones (the later version's) are the run's."""
    for v, (steps, value) in enumerate(((range(26), 1.0), (range(20, 40), 3.0))):
        d = tmp_path / "grpo" / f"version_{v}"
        d.mkdir(parents=True)
        d.joinpath("metrics.csv").write_text("step,train/reward\n" + "".join(f"{s},{value}\n" for s in steps))
        _later(d / "metrics.csv", seconds=5 * (v + 1))
    rows = run_history(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(40))
    assert mean_of(rows, "train/reward") == 2.0
