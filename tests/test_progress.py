"""Plain progress lines where stdout is not a terminal (taosr/callbacks/progress.py)."""
import io
import os

import pytest

from taosr.callbacks.progress import LineProgress, duration, env_interval, progress_line, wants_lines
from taosr.errors import ConfigError
from tests.conftest import ROOT, small_overrides


def test_duration_keeps_the_two_largest_units():
    assert [duration(s) for s in (0, 12.4, 59.6, 60, 3219, 3600, 7530, -3)] == \
        ["0s", "12s", "1m00s", "1m00s", "53m39s", "1h00m", "2h05m", "0s"]


def test_progress_line_rate_and_time_left_come_from_the_counted_steps():
    # a fit resumed at step 100 of 375: 25 steps counted in 250 s -> 10 s a step, 250 steps left
    line = progress_line("fit", "step", 125, 375.0, 250.0, 25, {"train/loss": 0.83125, "train/reward": float("nan")})
    assert line == "fit step 125/375 (33%), 10 s/step, 41m40s left; train/loss 0.8313, train/reward nan"
    # no total (an iterable without a length) and nothing counted yet: the count alone
    assert progress_line("test", "batch", 3, None, 0.0, 0) == "test batch 3"
    assert progress_line("test", "batch", 3, float("inf"), 6.0, 3) == "test batch 3, 2 s/batch"


def test_env_interval(monkeypatch):
    monkeypatch.delenv("TAOSR_PROGRESS_SECONDS", raising=False)
    assert env_interval() == 30.0
    monkeypatch.setenv("TAOSR_PROGRESS_SECONDS", "0")
    assert env_interval() == 0.0
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("TAOSR_PROGRESS_SECONDS", bad)
        with pytest.raises(ConfigError, match="TAOSR_PROGRESS_SECONDS"):
            env_interval()


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_lines_replace_the_bar_only_off_a_terminal_and_when_no_bar_is_set():
    from lightning.pytorch.callbacks import TQDMProgressBar

    assert wants_lines({}, _Stream(tty=False))
    assert not wants_lines({}, _Stream(tty=True))
    assert not wants_lines({"enable_progress_bar": False}, _Stream(tty=False))
    assert not wants_lines({"callbacks": [TQDMProgressBar()]}, _Stream(tty=False))
    assert wants_lines({"enable_progress_bar": None, "callbacks": []}, _Stream(tty=False))


def test_a_fit_logged_to_a_file_prints_its_steps_validation_and_end(tmp_path, cache_dir, monkeypatch, capfd, recwarn):
    """The CLI off a terminal (pytest captures stdout): one line per step at interval 0, the step of
    the budget, the loss; the validation's macro F1; the end. Lightning's bar is not drawn, nor its
    tip to install a cloud logger, nor torch's FutureWarning about Lightning's use of ``LeafSpec``."""
    from taosr.cli import main

    import logging

    monkeypatch.setenv("TAOSR_PROGRESS_SECONDS", "0")
    root = str(tmp_path / "run")
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's info lines start
    said = logging.Handler()
    said.emit = lambda record: seen.append(record.getMessage())
    seen: list[str] = []
    lightning_info.addHandler(said)
    try:
        assert main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"),
                     *small_overrides(root, str(cache_dir)), "--trainer.logger", "false"]) == 0
    finally:
        lightning_info.removeHandler(said)
    assert seen and not [m for m in seen if "litlogger" in m], seen
    out = capfd.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("taosr: fit ") or ln.startswith("taosr: validation")]
    assert lines[0].startswith("taosr: fit step 1/2 (50%), ") and "train/loss " in lines[0]
    assert lines[1].startswith("taosr: fit step 2/2 (100%), ") and "0s left" in lines[1]
    assert any(ln.startswith("taosr: validation at step 2: val/macro_f1 ") for ln in lines)
    assert lines[-1].startswith("taosr: fit ended at step 2: 2 steps in ")
    assert "Epoch 0" not in out and "━" not in out  # no bar drawn at the end
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
    assert main(["test", "--config", os.path.join(ROOT, "configs", "sft.yaml"), *small_overrides(root, str(cache_dir)),
                 "--model.init_args.model.name_or_path", os.path.join(root, "export"), "--trainer.logger", "false"]) == 0
    out = capfd.readouterr().out
    assert "taosr: test batch 1/2 (50%), " in out and "taosr: test batch 2/2 (100%), " in out, out
    assert not any(ln.lstrip().startswith("Testing") for ln in out.splitlines())  # the results table stays


def test_the_interval_holds_lines_back_and_rank_zero_alone_prints():
    class Clock:
        t = 0.0

    import taosr.callbacks.progress as progress

    class _Trainer:
        max_steps, global_step, sanity_checking = 10, 0, False
        callback_metrics: dict = {}

    stream = io.StringIO()
    bar = LineProgress(every_s=30, stream=stream)
    real = progress.time.perf_counter
    progress.time.perf_counter = lambda: Clock.t
    try:
        tr = _Trainer()
        bar.on_train_start(tr, None)
        for step in range(1, 11):
            Clock.t = 10.0 * step
            tr.global_step = step
            bar.on_train_batch_end(tr, None, None, None, step - 1)
        said = stream.getvalue().splitlines()
        # lines at 30 s and 60 s and 90 s: steps 3, 6 and 9
        assert [ln.split(",")[0] for ln in said] == ["taosr: fit step 3/10 (30%)", "taosr: fit step 6/10 (60%)",
                                                      "taosr: fit step 9/10 (90%)"]
        assert "10 s/step, 1m10s left" in said[0]
        bar.disable()  # what Lightning does on every rank but global zero
        bar.on_train_end(tr, None)
        assert stream.getvalue().splitlines() == said
    finally:
        progress.time.perf_counter = real


def test_sampling_says_how_far_it_is(tmp_path, sft_run, cache_dir, monkeypatch, capsys):
    from taosr.cli import main

    monkeypatch.setenv("TAOSR_PROGRESS_SECONDS", "0")
    out = str(tmp_path / "samples.jsonl")
    assert main(["sample", "--model", os.path.join(sft_run, "export"), "--out", out, "--n", "2", "--limit", "12",
                 "--batch-size", "4", "--max-new-tokens", "8", "--synth-n-train", "48", "--synth-n-val", "6",
                 "--synth-n-test", "6", "--data-dir", os.path.join(cache_dir, "data")]) == 0
    said = [ln.split(",")[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("taosr: sample ")]
    assert said == ["taosr: sample prompt 4/12 (33%)", "taosr: sample prompt 8/12 (67%)"]  # the last: its summary


def test_the_total_is_lightnings_estimate_and_each_dataloader_restarts_the_rate(monkeypatch):
    import taosr.callbacks.progress as progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])

    class _Trainer:  # one epoch of 100 batches ends the fit before max_steps 300
        max_steps, global_step, sanity_checking, estimated_stepping_batches = 300, 0, False, 100
        num_val_batches = [3, 4]
        callback_metrics = {"val/macro_f1/dataloader_idx_0": 0.5, "val/macro_f1/dataloader_idx_1": 0.25}

    stream = io.StringIO()
    bar, tr = LineProgress(every_s=0, stream=stream), _Trainer()
    bar.on_train_start(tr, None)
    clock[0], tr.global_step = 40.0, 10
    bar.on_train_batch_end(tr, None, None, None, 9)
    assert stream.getvalue().splitlines()[-1].startswith("taosr: fit step 10/100 (10%), 4 s/step, 6m00s left")
    bar.on_validation_start(tr, None)
    for idx, dl, t in ((0, 0, 41.0), (1, 0, 42.0), (2, 0, 43.0), (0, 1, 143.0), (1, 1, 145.0)):
        clock[0] = t
        bar.on_validation_batch_end(tr, None, None, None, idx, dl)
    said = stream.getvalue().splitlines()
    # the second dataloader's rate counts from its own first batch, not the loop's start
    assert said[-2] == "taosr: validation (dataloader 1) batch 1/4 (25%), 0 s/batch, 0s left"
    assert said[-1] == "taosr: validation (dataloader 1) batch 2/4 (50%), 1 s/batch, 2s left"
    bar.on_validation_end(tr, None)
    assert stream.getvalue().splitlines()[-1] == ("taosr: validation at step 10: val/macro_f1/dataloader_idx_0 0.5, "
                                                  "val/macro_f1/dataloader_idx_1 0.25")


def test_a_single_callback_in_place_of_a_list_runs(tmp_path, cache_dir):
    """Lightning takes one callback for trainer.callbacks; the run-path filling and the progress bar
    choice read it as a list of one (they iterated it as a list and failed with a key error)."""
    from taosr.cli import main

    overlay = tmp_path / "one_callback.yaml"
    overlay.write_text("trainer:\n  callbacks:\n    class_path: taosr.callbacks.checkpoint.Checkpoint\n"
                       "    init_args: {save_last: true, save_top_k: 0}\n")
    root = str(tmp_path / "run")
    assert main(["fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"), *small_overrides(root, str(cache_dir)),
                 "--config", str(overlay), "--trainer.logger", "false"]) == 0
    assert os.path.isfile(os.path.join(root, "checkpoints", "last.ckpt"))
