"""An interrupted run resumed from its checkpoint ends with the same weights as an uninterrupted
one: same step, optimizer and scheduler state, and the same data order (mid-epoch too)."""
import os

import lightning.pytorch as pl
import pytest
import torch

from taosr.callbacks.checkpoint import Checkpoint
from taosr.data.datamodule import RelevanceDataModule
from taosr.data.hooks import Curriculum, CurriculumStage
from taosr.data.synth import SynthConfig
from taosr.eval.generation import GenerationSpec
from taosr.methods.sft import SFTModule
from taosr.models.factory import ModelSpec


class Crash(RuntimeError):
    pass


class CrashAt(pl.Callback):
    """Simulates a preempted job: dies right after step ``step`` (whose periodic checkpoint exists)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise Crash(f"killed at step {trainer.global_step}")


class CrashOnTrainStart(pl.Callback):
    """An error after a resume's restore, before its first batch (e.g. a file the resumed run needs)."""

    def on_train_start(self, trainer, *args):
        raise Crash("failed before the first resumed batch")


class InterruptMidStep(pl.Callback):
    """Ctrl-C (or any error) in the middle of step ``step + 1``: after its forward pass, before its
    update; no periodic checkpoint covers the step reached."""

    def __init__(self, step, exc=KeyboardInterrupt):
        self.step, self.exc = step, exc

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step >= self.step:
            raise self.exc(f"interrupted in step {trainer.global_step + 1}")


class BatchLog(pl.Callback):
    def __init__(self):
        self.first_ids = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.first_ids.append(batch["input_ids"][:, :12].sum().item())


def _assert_same_weights(full, resumed):
    """Bit for bit: the resumed run ends with exactly the uninterrupted run's weights."""
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), (n, (a - b).abs().max().item())


def run(root, cache, max_steps, extra=(), ckpt=None, curriculum=None, every=1000, dropout=0.0, val_every=None,
        lora=False, scheduler="cosine", **trainer_kw):
    """``val_every``: validate (greedy, 2 examples) every that many batches within each epoch."""
    pl.seed_everything(0)
    dm = RelevanceDataModule(synth=SynthConfig(n_train=40, n_val=2, n_test=4, seed=5), data_dir=os.path.join(cache, "data"),
                             batch_size=4, val="synth" if val_every else None, test=None, curriculum=curriculum)
    over = {"attention_dropout": dropout} if dropout else None  # dropout: training draws random numbers
    from taosr.models.factory import LoraSpec

    model = SFTModule(model=ModelSpec(name_or_path="micro", cache_dir=os.path.join(cache, "models"), config_overrides=over,
                                      lora=LoraSpec(r=4, alpha=8) if lora else None), lr=5e-3,
                      warmup_steps=2, scheduler=scheduler, export_dir=None, eval_generation=GenerationSpec(max_new_tokens=4))
    log = BatchLog()
    val = dict(val_check_interval=val_every) if val_every else dict(limit_val_batches=0)
    trainer = pl.Trainer(max_steps=max_steps, default_root_dir=root, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **val, **trainer_kw,
                         callbacks=[Checkpoint(dirpath=os.path.join(root, "ckpt"), save_last=True, every_n_train_steps=every),
                                    log, *extra])
    trainer.fit(model, dm, ckpt_path=ckpt)
    return model, trainer, log


@pytest.mark.parametrize("stop", [3, 12])  # mid first epoch; mid second epoch (10 batches per epoch)
def test_resume_matches_uninterrupted(tmp_path, cache_dir, stop):
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 16)
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 16, extra=[CrashAt(stop)], every=stop)
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 16, ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"))
    assert tr2.global_step == 16
    assert res_log.first_ids == full_log.first_ids[stop:]  # same data order after the resume point
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_curriculum_stage_restored(tmp_path, cache_dir):
    cur = Curriculum(stages=[CurriculumStage(max_difficulty=0.5, until_step=2), CurriculumStage(max_difficulty=1.0)])
    from taosr.callbacks.curriculum import CurriculumCallback

    with pytest.raises(Crash):
        run(str(tmp_path / "c"), cache_dir, 8, extra=[CurriculumCallback(), CrashAt(4)], curriculum=cur, every=4)
    assert cur.stage == 1 and cur.history == [{"stage": 1, "step": 2}]
    fresh = Curriculum(stages=cur.stages)
    _, tr2, _ = run(str(tmp_path / "c"), cache_dir, 6, extra=[CurriculumCallback()], curriculum=fresh,
                    ckpt=str(tmp_path / "c" / "ckpt" / "last.ckpt"))
    assert fresh.stage == 1 and fresh.history == [{"stage": 1, "step": 2}]


@pytest.mark.parametrize("stop,exc,dropout", [(5, KeyboardInterrupt, 0.0),  # mid first epoch, Ctrl-C
                                              (13, Crash, 0.0),              # mid second epoch, an error
                                              (5, KeyboardInterrupt, 0.2)])  # random numbers in every step
def test_interrupted_run_writes_the_step_reached_and_resumes_bit_identical(tmp_path, cache_dir, stop, exc, dropout):
    """No periodic save covers the step reached (every=1000): the on-exception last.ckpt holds it,
    and resuming from it ends with exactly the uninterrupted run's weights (RNG states included:
    without them the dropout case differs)."""
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 16, dropout=dropout)
    with pytest.raises(SystemExit if exc is KeyboardInterrupt else Crash):  # Lightning exits 1 after Ctrl-C
        run(str(tmp_path / "part"), cache_dir, 16, extra=[InterruptMidStep(stop, exc)], dropout=dropout)
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert torch.load(str(last), map_location="cpu", weights_only=False)["global_step"] == stop
    assert not list((tmp_path / "part" / "ckpt").glob("*.tmp"))
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 16, ckpt=str(last), dropout=dropout)
    assert tr2.global_step == 16
    assert res_log.first_ids == full_log.first_ids[stop:]
    _assert_same_weights(full, resumed)


@pytest.mark.parametrize("ours", [False, True])
def test_manual_optimisation_checkpoints_without_lightnings_warning(tmp_path, ours):
    """GRPO and SRPO optimise manually; their periodic checkpoints hold the weights after the step's
    update (what a resume needs). Lightning warns about that at every save; ours does not."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import ManualOptimBoringModel

    cls = Checkpoint if ours else ModelCheckpoint
    trainer = pl.Trainer(max_steps=2, default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[cls(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=1)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ManualOptimBoringModel())
    said = [str(w.message) for w in caught if "pre-optimization state" in str(w.message)]
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    assert bool(said) is not ours, said


@pytest.mark.parametrize("stop,val_every", [(10, None), (20, None),  # the end of the first, second epoch (10 batches)
                                             (10, 5),                    # ... followed by a validation
                                             (5, 5)])                    # a validation mid-epoch
def test_resume_at_an_epoch_boundary_or_before_a_validation_is_bit_identical(tmp_path, cache_dir, stop, val_every):
    """A periodic checkpoint written at the last batch of an epoch: the uninterrupted run then starts
    the next epoch, whose DataLoader iterator draws its base seed from the global generator before
    the first step; a validation after the saved step draws one more (its iterator's). The resumed
    run must make the same draws, or every random number after them (here dropout) is shifted."""
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 24, dropout=0.2, val_every=val_every)
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 24, extra=[CrashAt(stop)], every=stop, dropout=0.2, val_every=val_every)
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    state = next(v for k, v in torch.load(str(last), weights_only=False)["callbacks"].items() if k.startswith("Checkpoint"))
    assert state["rng_draws_after"] == int(val_every is not None) and state["rng_after_step"]
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 24, ckpt=str(last),
                                every=stop, dropout=0.2, val_every=val_every)  # the same command (Lightning keys callback state by its options)
    assert tr2.global_step == 24
    assert res_log.first_ids == full_log.first_ids[stop:]
    _assert_same_weights(full, resumed)


class InterruptInValidation(pl.Callback):
    """Ctrl-C in the validation that follows step ``step`` (its update done, the next step not begun)."""

    def __init__(self, step):
        self.step = step

    def on_validation_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt(f"interrupted in the validation after step {trainer.global_step}")


def test_interrupt_between_steps_resumes_bit_identical(tmp_path, cache_dir):
    """The on-exception checkpoint of an interrupt between steps holds the random state the last
    finished step left (not that of its start, whose update it contains), and the draws after it."""
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 12, dropout=0.2, val_every=5)
    with pytest.raises(SystemExit):
        run(str(tmp_path / "part"), cache_dir, 12, extra=[InterruptInValidation(5)], dropout=0.2, val_every=5)
    last = str(tmp_path / "part" / "ckpt" / "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 5
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 12, ckpt=last, dropout=0.2, val_every=5)
    assert tr2.global_step == 12 and res_log.first_ids == full_log.first_ids[5:]
    _assert_same_weights(full, resumed)


class InterruptAtBatch(pl.Callback):
    """Ctrl-C in the forward-backward of the run's ``n``-th batch (counted from 1 over all epochs)."""

    def __init__(self, n):
        self.n = n

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.n:
            raise KeyboardInterrupt(f"interrupted in batch {self.n}")


class InterruptAtBatchEnd(pl.Callback):
    """Ctrl-C in this callback's on_train_batch_end of step ``step``: after the optimizer step, before
    the Checkpoint's own on_train_batch_end (checkpoint callbacks run last)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt(f"interrupted after step {self.step}")


def test_an_interrupt_after_the_update_keeps_the_batch(tmp_path, cache_dir):
    """The batch's update is in the weights: the resume must not redo it (rewound to its start, it
    was applied twice and the epoch ended one step late)."""
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 8)
    with pytest.raises(SystemExit):
        run(str(tmp_path / "part"), cache_dir, 8, extra=[InterruptAtBatchEnd(5)])
    last = str(tmp_path / "part" / "ckpt" / "last.ckpt")
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 8, ckpt=last)
    assert tr2.global_step == 8 and res_log.first_ids == full_log.first_ids[5:]
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


@pytest.mark.parametrize("stop", [InterruptAtBatch(8),        # the second batch of a window of two
                                  InterruptAtBatch(14),       # the second epoch (10 batches an epoch)
                                  InterruptInValidation(1)],  # a validation after batch 3, inside a window
                         ids=["window", "epoch2", "validation"])
def test_interrupt_with_gradient_accumulation_resumes_bit_identical(tmp_path, cache_dir, stop):
    """An interrupt inside a window of accumulated batches rewinds to the window's first batch (the
    gradients of the batches before it are not in the checkpoint), with its random state: the same
    weights, the same data order and the same logged step as the uninterrupted run."""
    kw = dict(dropout=0.2, accumulate_grad_batches=2, val_every=3)
    full, tr1, full_log = run(str(tmp_path / "full"), cache_dir, 8, **kw)
    with pytest.raises(SystemExit):
        run(str(tmp_path / "part"), cache_dir, 8, extra=[stop], **kw)
    last = str(tmp_path / "part" / "ckpt" / "last.ckpt")
    kept = 2 * torch.load(last, map_location="cpu", weights_only=False)["global_step"]  # batches in the saved steps
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 8, ckpt=last, **kw)
    assert tr2.global_step == 8 and res_log.first_ids == full_log.first_ids[kept:]
    assert tr2.fit_loop.epoch_loop._batches_that_stepped == tr1.fit_loop.epoch_loop._batches_that_stepped
    _assert_same_weights(full, resumed)


@pytest.mark.parametrize("stop", [3, 5])  # the end of a curriculum-shortened epoch (3 batches), and mid-epoch
def test_resume_after_an_epoch_a_curriculum_shortened_is_bit_identical(tmp_path, cache_dir, stop):
    """The curriculum lets 12 of 40 prompts through: the epoch ends after 3 of the 10 batches the
    sampler's length promises, which Lightning learns only when the next fetch finds nothing."""
    def cur():
        return Curriculum(stages=[CurriculumStage(max_difficulty=0.5)])

    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 9, dropout=0.2, curriculum=cur())
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 9, extra=[CrashAt(stop)], every=stop, dropout=0.2, curriculum=cur())
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 9, ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"),
                                every=stop, dropout=0.2, curriculum=cur())
    assert tr2.global_step == 9 and res_log.first_ids == full_log.first_ids[stop:]
    _assert_same_weights(full, resumed)


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM (a scheduler's preemption) at the start of step ``step``."""

    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_the_step_reached_and_exits_non_zero(tmp_path, cache_dir, capsys):
    """Lightning ends a SIGTERM'd fit with a SystemExit without a code; the command must not exit 0
    (a `taosr compare` would take the run as fitted), and last.ckpt holds the step reached."""
    from taosr.cli import main
    from tests.conftest import ROOT, small_overrides

    root = str(tmp_path / "run")
    args = ["fit", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(root, cache_dir),
            "--trainer.max_steps", "6", "--trainer.logger", "false",
            "--trainer.callbacks+=tests.test_resume.SigtermAt", "--trainer.callbacks.step", "2"]
    assert main(args) == 143
    err = capsys.readouterr().err
    step = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), weights_only=False)["global_step"]
    assert step >= 2
    # the note names the checkpoint a resume starts from and its step
    assert f"terminated (SIGTERM); interrupted (checkpoint: {root}/checkpoints/last.ckpt, step {step})" in err, err
    assert not os.path.exists(os.path.join(root, "export"))


class SampleAtBatchStart(pl.Callback):
    """Draws from the global generator in on_train_batch_start, as the RL rollouts do (the
    RolloutCallback is listed before the Checkpoint, and Lightning runs checkpoint callbacks last);
    ``interrupt_at``: Ctrl-C right after the draw of the step that starts at that global step."""

    def __init__(self, interrupt_at=None):
        self.draws, self.interrupt_at = [], interrupt_at

    def on_train_batch_start(self, trainer, *args):
        self.draws.append(torch.rand(()).item())
        if trainer.global_step == self.interrupt_at:
            raise KeyboardInterrupt(f"interrupted in the rollout of step {trainer.global_step + 1}")


class ValSteps(pl.Callback):
    def __init__(self):
        self.at = []

    def on_validation_start(self, trainer, *args):
        self.at.append(trainer.global_step)


@pytest.mark.parametrize("where", ["rollout", "update", "periodic"])
def test_resume_with_batch_start_sampling_and_step_validations_is_bit_identical(tmp_path, cache_dir, where):
    """The RL configs' setting: a callback samples at batch start and validation runs every N global
    steps (check_val_every_n_epoch: null). Stopped after step 7 (mid-epoch: 10 batches) by Ctrl-C in the
    next step's rollout or update, or by a crash after the periodic checkpoint of step 7, the resumed run makes the
    same draws, validates at the same steps, logs at the same steps and ends with the same weights."""
    stop = 7  # no periodic save at step 7 for the interrupts (it would stand for the on-exception one)
    kw = dict(dropout=0.2, val_every=5, check_val_every_n_epoch=None, every=stop if where == "periodic" else 1000)
    sampler, vals = SampleAtBatchStart(), ValSteps()
    full, tr1, _ = run(str(tmp_path / "full"), cache_dir, 14, extra=[sampler, vals], **kw)
    stopper = {"rollout": [SampleAtBatchStart(interrupt_at=stop)],
               "update": [SampleAtBatchStart(), InterruptMidStep(stop)],
               "periodic": [CrashAt(stop), SampleAtBatchStart()]}[where]
    with pytest.raises(Crash if where == "periodic" else SystemExit):
        run(str(tmp_path / "part"), cache_dir, 14, extra=stopper, **kw)
    sampler2, vals2 = SampleAtBatchStart(), ValSteps()
    resumed, tr2, _ = run(str(tmp_path / "part"), cache_dir, 14, extra=[sampler2, vals2],
                          ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"), **kw)
    assert tr2.global_step == 14
    assert sampler2.draws == sampler.draws[stop:]             # the rollouts' random numbers
    assert vals2.at == [s for s in vals.at if s > stop]        # val-step10, not val-step9
    loop1, loop2 = tr1.fit_loop.epoch_loop, tr2.fit_loop.epoch_loop
    assert loop2._batches_that_stepped == loop1._batches_that_stepped          # logged steps
    assert loop2.batch_progress.total.ready == loop1.batch_progress.total.ready
    _assert_same_weights(full, resumed)


@pytest.mark.parametrize("stop", [3, 12])  # mid first epoch, mid second epoch (10 batches per epoch)
def test_mid_epoch_resume_with_a_finite_max_epochs_keeps_the_data_order(tmp_path, cache_dir, stop):
    """With a finite max_epochs Lightning builds the training DataLoader for
    estimated_stepping_batches (configure_optimizers) before it restores the loops' progress."""
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 16, max_epochs=2)
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 16, extra=[CrashAt(stop)], every=stop, max_epochs=2)
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # Lightning's "dataloader is not resumable" was wrong
        warnings.simplefilter("always")
        resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 16,
                                    ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"), every=stop, max_epochs=2)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert tr2.global_step == 16
    assert res_log.first_ids == full_log.first_ids[stop:]
    _assert_same_weights(full, resumed)


class CtrlCInUpdate(pl.Callback):
    """Ctrl-C in the update of the step after ``step`` (its rollout done), for `taosr fit` runs."""

    def __init__(self, step: int = 3):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss):
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt(f"interrupted in step {trainer.global_step + 1}")


class SpreadRewards(pl.Callback):
    """A micro model writes no valid answer (every reward 0, every group dropped, nothing learns):
    rewards from each sampled text's length instead, so every step updates the weights."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        r = batch["rollout"]
        r.correct = torch.tensor([float(len(t) % 3 == 0) for t in r.texts], device=r.device)
        r.reward = r.correct + 0.2 * torch.tensor([float(len(t) % 2) for t in r.texts], device=r.device)


def test_grpo_fit_interrupted_and_resumed_ends_with_the_uninterrupted_export(tmp_path, cache_dir, sft_run, samples):
    """`taosr fit` GRPO on the RL smoke settings (validation every 2 steps, an unbounded epoch count):
    Ctrl-C in step 4's update, then the same command with --ckpt_path, ends with exactly the weights,
    validations and logged steps of the run that was never interrupted."""
    from safetensors.torch import load_file

    from taosr.cli import main
    from tests.conftest import ROOT, rl_samples_overrides, small_overrides

    def args(root, *more):
        return ["fit", "--config", os.path.join(ROOT, "configs/grpo.yaml"), *small_overrides(root, cache_dir),
                *rl_samples_overrides(samples), "--model.init_args.model.name_or_path", os.path.join(sft_run, "export"),
                "--trainer.max_steps", "6", "--trainer.logger", "false",
                "--trainer.callbacks+=tests.test_resume.SpreadRewards", *more]

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(args(full)) == 0
    assert main(args(part, "--trainer.callbacks+=tests.test_resume.CtrlCInUpdate", "--trainer.callbacks.step", "3")) == 130
    assert main(args(part, "--ckpt_path", os.path.join(part, "checkpoints", "last.ckpt"))) == 0
    a, b = (load_file(os.path.join(r, "export", "model.safetensors")) for r in (full, part))
    start = load_file(os.path.join(sft_run, "export", "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it learned something
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vals = [sorted(os.path.basename(p) for p in os.listdir(os.path.join(r, "eval")) if p.endswith("-metrics.json"))
            for r in (full, part)]
    assert vals[0] == vals[1] and "val-step6-metrics.json" in vals[0], vals


def test_cuda_generator_states_restore_onto_fewer_gpus(monkeypatch):
    """A run saved where it saw 8 GPUs (an in-process compare) and resumed by a `--jobs` worker that
    sees one: each visible GPU gets its saved state (set_rng_state_all fails on the missing ones).
    No GPU here: the CUDA calls are recorded."""
    from taosr.callbacks import checkpoint

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restores every saved GPU"))
    states = checkpoint._collect_rng_states()
    states["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(8)]
    checkpoint._set_rng_states(states)
    assert calls == [(0, 0)]


def test_a_second_failure_before_the_resumed_first_batch_keeps_the_run_identical(tmp_path, cache_dir):
    """Interrupted at step 5, resumed, and the resume fails before its first batch: the checkpoint
    it writes on the way out keeps the random-number state it loaded (it wrote the process's own:
    the next resume drew other dropout masks), so a third start still ends bit-identical."""
    full, _, _ = run(str(tmp_path / "full"), cache_dir, 12, dropout=0.2)
    ckpt = str(tmp_path / "part" / "ckpt" / "last.ckpt")
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 12, extra=[CrashAt(5)], dropout=0.2)
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 12, extra=[CrashOnTrainStart()], ckpt=ckpt, dropout=0.2)
    resumed, tr, _ = run(str(tmp_path / "part"), cache_dir, 12, ckpt=ckpt, dropout=0.2)
    assert tr.global_step == 12
    _assert_same_weights(full, resumed)


def test_checkpoints_are_written_beside_their_target_and_a_full_disk_is_one_error(tmp_path, cache_dir, monkeypatch):
    """No copy through $TMPDIR (Lightning's atomic save made one with mkstemp: a small /tmp failed the
    first save); a save that finds the disk full removes its partial file, keeps the previous
    last.ckpt and ends the run with one error (the save-on-exception does not try again)."""
    import errno
    import tempfile

    from taosr.callbacks.checkpoint import DiskFull

    def no_tmp(*a, **k):
        raise AssertionError("a checkpoint went through $TMPDIR")

    monkeypatch.setattr(tempfile, "mkstemp", no_tmp)
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3 and hasattr(f, "write"):  # step 2 wrote epoch=0-step=2.ckpt and last.ckpt
            f.write(b"x" * 1000)  # part of the checkpoint, then the disk is full, as torch's zip writer says it
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000 vs 964")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskFull, match=r"checkpoint .*step=4.ckpt.tmp: no space left on its disk .* previous checkpoint is kept"):
        run(str(tmp_path / "r"), cache_dir, 6, every=2)
    folder = tmp_path / "r" / "ckpt"
    assert sorted(os.listdir(folder)) == ["epoch=0-step=2.ckpt", "last.ckpt"] and len(calls) == 3
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2


def test_a_lora_checkpoint_holds_only_the_trained_weights_and_resumes_bit_identical(tmp_path, cache_dir):
    """The frozen base weights are not saved (they are loaded again from the start model): the
    checkpoint holds the adapter and optimizer only, and a resume from it ends with the uninterrupted
    run's weights exactly. A checkpoint whose frozen weights came from another model is refused."""
    from taosr.errors import ConfigError
    from taosr.methods.base import FROZEN_FROM

    full, _, _ = run(str(tmp_path / "full"), cache_dir, 8, lora=True, dropout=0.2)
    with pytest.raises(Crash):
        run(str(tmp_path / "part"), cache_dir, 8, extra=[CrashAt(3)], lora=True, dropout=0.2)
    ckpt = tmp_path / "part" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    assert saved[FROZEN_FROM] == {"name_or_path": "micro", "tensors": len(
        [n for n, p in full.named_parameters(remove_duplicate=False) if not p.requires_grad])}
    resumed, tr, _ = run(str(tmp_path / "part"), cache_dir, 8, ckpt=str(ckpt), lora=True, dropout=0.2)
    assert tr.global_step == 8
    _assert_same_weights(full, resumed)
    with pytest.raises(ConfigError, match="its frozen ones are 'other'"):
        resumed.on_load_checkpoint({**saved, FROZEN_FROM: {"name_or_path": "other", "tensors": 1}})


@pytest.mark.parametrize("max_epochs", [-1, 1])
def test_a_fit_stopped_by_max_steps_inside_an_epoch_continues_that_epoch(tmp_path, cache_dir, max_epochs):
    """Training longer (`--ckpt_path last --trainer.max_steps N`) after a run stopped by max_steps
    inside an epoch: Lightning counted that epoch done, so the resume started the next epoch (and with
    max_epochs 1 trained nothing). With a constant schedule the two legs equal one run of N steps."""
    kw = dict(scheduler="constant", max_epochs=max_epochs)
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, 8, **kw)  # 10 batches per epoch
    _, first, _ = run(str(tmp_path / "part"), cache_dir, 3, **kw)
    assert first.global_step == 3
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 8, ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"),
                                **kw)
    assert tr2.global_step == 8
    assert res_log.first_ids == full_log.first_ids[3:]
    _assert_same_weights(full, resumed)


def test_a_fit_that_ends_its_epochs_resumes_with_the_next_epoch(tmp_path, cache_dir):
    """The epoch's end by limit_train_batches is an end: a resume with more epochs starts the next one."""
    kw = dict(scheduler="constant", limit_train_batches=3)
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, -1, max_epochs=2, **kw)
    run(str(tmp_path / "part"), cache_dir, -1, max_epochs=1, **kw)
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, -1, max_epochs=2,
                                ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"), **kw)
    assert tr2.global_step == 6
    assert res_log.first_ids == full_log.first_ids[3:]
    _assert_same_weights(full, resumed)


class StopAtBatch(pl.Callback):
    """Asks the trainer to stop (as max_time or an early-stopping rule does) after batch ``n``."""

    def __init__(self, n: int):
        self.n = n

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.n:
            trainer.should_stop = True


def test_a_stop_inside_a_window_of_accumulated_batches_resumes_at_the_windows_start(tmp_path, cache_dir):
    """A stop (max_time, should_stop) after batch 3 of windows of 2: batch 3's gradients are not in the
    checkpoint, so the resume redoes it; the two legs equal one run (constant schedule)."""
    kw = dict(scheduler="constant", accumulate_grad_batches=2)
    full, tr1, full_log = run(str(tmp_path / "full"), cache_dir, 4, **kw)
    _, first, _ = run(str(tmp_path / "part"), cache_dir, 4, extra=[StopAtBatch(3)], **kw)
    assert first.global_step == 1
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, 4, ckpt=str(tmp_path / "part" / "ckpt" / "last.ckpt"),
                                **kw)
    assert tr2.global_step == 4 and res_log.first_ids == full_log.first_ids[2:]
    assert tr2.fit_loop.epoch_loop._batches_that_stepped == tr1.fit_loop.epoch_loop._batches_that_stepped
    _assert_same_weights(full, resumed)


def test_an_epoch_a_curriculum_shortened_is_saved_as_ended(tmp_path, cache_dir):
    """The curriculum's epoch ends when the loader runs dry, with is_last_batch still False: a fit that
    reached max_epochs there is a finished epoch, not a stop inside one."""
    cur = Curriculum(stages=[CurriculumStage(max_difficulty=0.5)])  # 12 of 40 prompts: 3 batches an epoch
    full, _, full_log = run(str(tmp_path / "full"), cache_dir, -1, max_epochs=2, scheduler="constant",
                            curriculum=Curriculum(stages=[CurriculumStage(max_difficulty=0.5)]))
    run(str(tmp_path / "part"), cache_dir, -1, max_epochs=1, scheduler="constant", curriculum=cur)
    last = str(tmp_path / "part" / "ckpt" / "last.ckpt")
    ep = torch.load(last, map_location="cpu", weights_only=False)["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert ep["completed"] == 1
    resumed, tr2, res_log = run(str(tmp_path / "part"), cache_dir, -1, max_epochs=2, scheduler="constant", ckpt=last,
                                curriculum=Curriculum(stages=[CurriculumStage(max_difficulty=0.5)]))
    assert res_log.first_ids == full_log.first_ids[3:]
    _assert_same_weights(full, resumed)


def test_the_interrupt_note_names_what_a_resume_starts_from(tmp_path, monkeypatch):
    """The step of the run folder's last.ckpt (a fit stopped before its first save has none), or that
    there is none; a test keeps no checkpoint; inside taosr compare / sweep the way to continue is
    their own command, not `--ckpt_path` by hand."""
    from taosr.launcher import RESUME_HINT_ENV, _interrupted_note

    assert _interrupted_note(["test", "--trainer.default_root_dir", str(tmp_path)]) == \
        "interrupted; run the same command again"
    monkeypatch.setenv(RESUME_HINT_ENV, "re-run the taosr compare command to continue")
    assert _interrupted_note(["fit", "--trainer.default_root_dir", str(tmp_path)]).endswith(
        "; re-run the taosr compare command to continue")
    monkeypatch.delenv(RESUME_HINT_ENV)

    root = str(tmp_path / "run")
    argv = ["fit", "--trainer.default_root_dir", root]
    assert f"(no readable {root}/checkpoints/last.ckpt: a resume starts from the beginning)" in _interrupted_note(argv)
    os.makedirs(os.path.join(root, "checkpoints"))
    torch.save({"state_dict": {}, "global_step": 7}, os.path.join(root, "checkpoints", "last.ckpt"))
    assert f"(checkpoint: {root}/checkpoints/last.ckpt, step 7)" in _interrupted_note(argv)


def test_a_resumed_fit_logs_on_into_its_wandb_run(tmp_path, cache_dir):
    """A run interrupted and resumed logged a second W&B run of the same name: the resume now reuses
    the id its first leg kept in <run>/wandb-run.json (offline: a second folder of that id, which
    `wandb sync` uploads into the one run); a fit from the start gets a new run."""
    import subprocess
    import sys

    from taosr.history import _wandb_records
    from taosr.loggers import stored_run_id
    from tests.conftest import ROOT, small_overrides

    root = str(tmp_path / "r")  # each leg its own process: wandb completes a run file when the process ends
    base = [sys.executable, "-m", "taosr.cli", "fit", "--config", os.path.join(ROOT, "configs", "sft.yaml"),
            *small_overrides(root, cache_dir), "--data.batch_size", "3", "--trainer.logger", "taosr.loggers.AutoWandbLogger"]
    env = {**os.environ, "WANDB_MODE": "offline"}

    def leg(*extra):
        r = subprocess.run(base + list(extra), cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stderr

    def folders():
        return sorted(d for d in os.listdir(os.path.join(root, "wandb")) if d.startswith("offline-run-"))

    leg("--trainer.max_steps", "2")
    first = stored_run_id(root)
    assert first and [f.rsplit("-", 1)[1] for f in folders()] == [first]
    err = leg("--trainer.max_steps", "4", "--ckpt_path", "last")
    assert f"logs on into run {first}" in err
    assert [f.rsplit("-", 1)[1] for f in folders()] == [first, first] and stored_run_id(root) == first
    from wandb.proto import wandb_internal_pb2 as pb

    ids = set()
    for f in folders():
        for payload in _wandb_records(os.path.join(root, "wandb", f, f"run-{first}.wandb")):
            rec = pb.Record()
            rec.ParseFromString(payload)
            if rec.WhichOneof("record_type") == "run":
                ids.add(rec.run.run_id)
    assert ids == {first}
    leg("--trainer.max_steps", "1")  # from the start again: a new run
    assert stored_run_id(root) not in (None, first) and len(folders()) == 3


def test_only_a_resume_from_its_own_folder_continues_a_wandb_run(tmp_path):
    from jsonargparse import Namespace

    from taosr.launcher import _continue_wandb_run
    from taosr.loggers import store_run_id

    root = str(tmp_path / "run")
    store_run_id(root, "abc123", "taosr")

    def cfg(ckpt, **init_args):
        lg = Namespace(class_path="taosr.loggers.AutoWandbLogger", init_args=Namespace(project="taosr", **init_args))
        c = Namespace(ckpt_path=ckpt, trainer=Namespace(default_root_dir=root, logger=lg))
        _continue_wandb_run(c)
        return lg.init_args.get("id")

    assert cfg(os.path.join(root, "checkpoints", "last.ckpt")) == "abc123"
    assert cfg(None) is None  # a fit from the start
    assert cfg(str(tmp_path / "other" / "checkpoints" / "last.ckpt")) is None  # another run's checkpoint
    assert cfg(os.path.join(root, "checkpoints", "last.ckpt"), id="mine") == "mine"  # the config's id wins
    assert cfg(os.path.join(root, "checkpoints", "last.ckpt"), version="v1") is None


class CtrlCInTheSave(pl.Callback):
    """A Ctrl-C that arrives while the SIGTERM'd fit writes its checkpoint (`taosr compare` sends
    one to every worker once one of them stopped)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.received_sigterm:
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_during_the_sigterm_save_does_not_cut_it_short(tmp_path, cache_dir, capsys):
    import signal

    from taosr.cli import main
    from tests.conftest import ROOT, small_overrides

    root = str(tmp_path / "run")
    args = ["fit", "--config", os.path.join(ROOT, "configs/sft.yaml"), *small_overrides(root, cache_dir),
            "--trainer.max_steps", "6", "--trainer.logger", "false", "--trainer.callbacks+=tests.test_resume.SigtermAt",
            "--trainer.callbacks.step", "2", "--trainer.callbacks+=tests.test_resume.CtrlCInTheSave"]
    before = signal.getsignal(signal.SIGINT)
    assert main(args) == 143
    assert signal.getsignal(signal.SIGINT) == before
    step = torch.load(os.path.join(root, "checkpoints", "last.ckpt"), weights_only=False)["global_step"]
    assert step >= 2 and "terminated (SIGTERM)" in capsys.readouterr().err
