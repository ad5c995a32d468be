"""GRPO module internals: prefix sharing gives the plain forward's log-probs and gradients; the planned
update gives the full batch's loss and gradient; a GRPO run's numbers are the recorded ones; a global
step is one rollout batch."""
import dataclasses
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from taosr.eval.generation import GenerationSpec
from taosr.methods.grpo import GRPOModule
from taosr.rl.rollout import Rollout


def _rollout(G=4, n_prompts=2, P=7, L=6, V=50, seed=0, temperature=1.0, **fields):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, V, (n_prompts, P), generator=g)
    prompt_mask = torch.ones(n_prompts, P, dtype=torch.long)
    prompt_mask[1, :3] = 0  # left padding on the second prompt
    comp = torch.randint(3, V, (n_prompts * G, L), generator=g)
    cmask = torch.ones_like(comp)
    cmask[1, 4:] = 0  # a completion that ended early (right padded)
    spec = GenerationSpec(max_new_tokens=L, do_sample=True, temperature=temperature, num_return_sequences=G)
    return Rollout(spec=spec, prompt_ids=prompt_ids.repeat_interleave(G, 0),
                   prompt_mask=prompt_mask.repeat_interleave(G, 0), completion_ids=comp, completion_mask=cmask,
                   texts=[""] * len(comp), example_index=torch.arange(n_prompts).repeat_interleave(G),
                   clipped=torch.zeros(len(comp), dtype=torch.bool), **fields)


@pytest.mark.parametrize("rows", [None, slice(4, 8), slice(2, 6), torch.tensor([5, 0, 7, 1, 4])])
def test_prefix_sharing_matches_plain_forward(rows):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    r = _rollout()
    mask = r.completion_mask[rows if rows is not None else slice(None)].float()
    results = []
    for sharing in (True, False):
        mod = GRPOModule(prefix_sharing=sharing)
        model.zero_grad()
        lp, ent = mod._logps(model, r, rows, entropy=True)
        (lp * mask).sum().backward()
        results.append((lp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = results
    assert torch.allclose(a * mask, b * mask, atol=1e-5)
    assert torch.allclose(ea * mask, eb * mask, atol=1e-4)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)


def _tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_prefix_sharing_branch_is_taken(monkeypatch):
    """Rows that share a prompt go through the shared-prefix forward (whole groups, a slice that
    straddles two groups, scattered rows); rows of distinct prompts only do not (nothing to share)."""
    calls = []
    orig = GRPOModule._shared_prefix_logits
    monkeypatch.setattr(GRPOModule, "_shared_prefix_logits", lambda self, *a: calls.append(1) or orig(self, *a))
    mod, model, r = GRPOModule(prefix_sharing=True), _tiny(), _rollout()
    mod._logps(model, r, slice(4, 8))
    mod._logps(model, r, slice(2, 6))
    mod._logps(model, r, torch.tensor([7, 0, 5]))
    assert calls == [1, 1, 1]
    mod._logps(model, r, torch.tensor([3, 4]))  # one row of each prompt: plain forward
    assert calls == [1, 1, 1]


def test_logps_are_trimmed_to_the_rows_longest_completion():
    """A micro-batch is computed over its own longest completion, with the same log-probs there."""
    model, r = _tiny(), _rollout()
    r.completion_mask[:4, 3:] = 0
    r.completion_mask[4:, 5:] = 0
    mod = GRPOModule()
    with torch.no_grad():
        full = mod._logps(model, r)
        first = mod._logps(model, r, slice(0, 4))
    assert full.shape == (8, 5) and first.shape == (4, 3)
    assert torch.allclose(first, full[:4, :3], atol=1e-5)


def test_logps_follow_the_sampling_temperature():
    """Tokens are scored under the distribution they were sampled from: log_softmax(logits / T)."""
    model, r = _tiny(), _rollout()
    mod = GRPOModule(prefix_sharing=False)
    with torch.no_grad():
        base = mod._logps(model, r)
        hot = mod._logps(model, _rollout(temperature=2.0))
        greedy = mod._logps(model, dataclasses.replace(r, spec=GenerationSpec(do_sample=False)))
        ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
        att = torch.cat([r.prompt_mask, r.completion_mask], 1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        L = r.completion_ids.shape[1]
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -L - 1:-1] / 2.0
        want = torch.log_softmax(logits, -1).gather(-1, r.completion_ids[..., None])[..., 0]
    assert torch.equal(greedy, base)  # greedy tokens are scored at temperature 1
    assert torch.allclose(hot, want, atol=1e-5)
    assert not torch.allclose(hot, base, atol=1e-3)


@pytest.mark.parametrize("kwargs,match", [({"delta": 1.1}, "dual clip"), ({"loss_agg": "sum"}, "loss_agg")])
def test_bad_options_are_config_errors(kwargs, match):
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        GRPOModule(**kwargs)


def test_srpo_keep_mask_with_outcome_estimator_is_grpos():
    """Groups with flat outcomes but varying steps: kept by SRPO's step-level estimators, dropped
    (as by GRPO) with the `outcome` estimator, so that SRPO + outcome is GRPO exactly."""
    from taosr.methods.srpo import SRPOModule
    from taosr.rl.advantages import StepAdvantageSpec

    from taosr.rl.rollout import StepScores

    sr = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    r = _rollout(G=2, reward=torch.tensor([1.0, 1.0, 1.0, 0.0]),
                 steps=StepScores(rewards=sr, source=torch.ones_like(sr).long(), present=torch.ones_like(sr).bool(),
                                  verdict=sr, token_step=torch.zeros(4, 6).long()))
    step = SRPOModule(step_advantage=StepAdvantageSpec(name="outcome_plus_step"), keep_step_only_groups=True)
    assert step.keep_mask(r).tolist() == [True, True, True, True]
    grpo_rule = [False, False, True, True]
    assert SRPOModule(step_advantage=StepAdvantageSpec(name="outcome_plus_step")).keep_mask(r).tolist() == grpo_rule
    outcome = SRPOModule(step_advantage=StepAdvantageSpec(name="outcome"), keep_step_only_groups=True)
    assert outcome.keep_mask(r).tolist() == GRPOModule().keep_mask(r).tolist() == grpo_rule


def test_logged_critical_count_is_what_the_estimator_weights():
    """train/steps/critical_count counts the steps outcome_plus_step doubles: right-verdict steps
    above their group's mean in a wrong answer (or wrong ones below it in a right answer), in the
    groups dynamic sampling keeps. It counted every right step of a wrong answer, dropped groups
    included: 5 here where none is weighted."""
    from taosr.methods.srpo import SRPOModule
    from taosr.rl.advantages import StepAdvantageSpec, critical_step_mask, step_centred
    from taosr.rl.rollout import StepScores

    sr = torch.tensor([[1.0, 1.0], [1.0, 1.0],   # group 1: both wrong, every step right: flat, dropped
                       [1.0, 1.0], [1.0, 0.0]])  # group 2: one right (row 2), one wrong (row 3)
    correct = torch.tensor([0.0, 0.0, 1.0, 0.0])
    r = _rollout(G=2, reward=correct.clone(), correct=correct, format=torch.ones(4),
                 steps=StepScores(rewards=sr, source=torch.ones_like(sr).long(), present=torch.ones_like(sr).bool(),
                                  verdict=sr, token_step=torch.zeros(4, 6).long()))
    mod = SRPOModule(step_advantage=StepAdvantageSpec(name="outcome_plus_step"))
    keep = mod.keep_mask(r)
    assert keep.tolist() == [False, False, True, True]
    # row 3's first step is right in a wrong answer, but level with its group: no weight; its second
    # step is wrong in a wrong answer; row 2's steps are right in a right answer: none critical ...
    crit = critical_step_mask(sr, correct.bool(), step_centred(sr, 2))
    assert int(crit.sum()) == 0 and int(critical_step_mask(sr, correct.bool()).sum()) == 5
    assert mod._rollout_metrics(r, keep)["steps/critical_count"] == 0.0
    # ... a right step above the group mean inside a wrong answer is weighted, and counted
    sr2 = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    r.steps = dataclasses.replace(r.steps, rewards=sr2, verdict=sr2)
    r.correct = torch.tensor([0.0, 0.0, 0.0, 1.0])
    r.reward = r.correct.clone()
    # row 2's second step (right, above the mean, wrong answer), row 3's second (wrong, below, right answer)
    assert mod._rollout_metrics(r, mod.keep_mask(r))["steps/critical_count"] == 2.0


def test_all_groups_dropped_still_counts_rollout_batches(tmp_path, cache_dir):
    """Rewards with no spread anywhere: every group is dropped, no parameter moves, and the run still
    ends at max_steps (a step = a rollout batch) even with max_epochs=-1."""
    import os

    import lightning.pytorch as pl

    from taosr.callbacks.reward import RewardModelCallback
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.eval.generation import GenerationSpec
    from taosr.models.factory import ModelSpec
    from taosr.rl.rewards import OutcomeRewardSpec

    pl.seed_everything(0)
    dm = RelevanceDataModule(view="rl", synth=SynthConfig(n_train=8, n_val=2, n_test=2, seed=3),
                             data_dir=os.path.join(cache_dir, "data"), batch_size=2, val=None, test=None)
    module = GRPOModule(model=ModelSpec(name_or_path="micro", cache_dir=os.path.join(cache_dir, "models")),
                        lr=1e-2, export_dir=None)
    flat = RewardModelCallback(outcome=OutcomeRewardSpec(correct_weight=0.0, format_weight=0.0))
    rollout = RolloutCallback(num_generations=2, generation=GenerationSpec(do_sample=True, max_new_tokens=4))
    trainer = pl.Trainer(max_steps=3, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[rollout, flat],
                         default_root_dir=str(tmp_path))
    trainer.fit(module, dm)  # would loop for ever if dropped batches did not count
    assert trainer.global_step == 3
    from taosr.models.factory import load_model_and_tokenizer

    ref, _ = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=os.path.join(cache_dir, "models")),
                                      corpus=dm.corpus)
    for (n, a), (_, b) in zip(module.model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


def _fit_micro(tmp_path, cache_dir, max_steps=2, inject=True, extra_callbacks=(), module_cls=GRPOModule,
               G=4, trainer_kw=None, config_overrides=None, dm_kw=None, engine=None, **kw):
    """A few rollout batches of the micro model (2 prompts x G, 24 new tokens at temperature 1.3).
    The micro model writes no valid answer, so ``inject`` replaces the outcome rewards with a
    deterministic function of each sampled text (reward spread, hence updates)."""
    import lightning.pytorch as pl

    from taosr.callbacks.reward import RewardModelCallback
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer

    class Inject(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            r = batch["rollout"]
            c = torch.tensor([float(len(t) % 3 == 0) for t in r.texts], device=r.device)
            r.correct, r.reward = c, c + 0.2 * torch.tensor([float(len(t) % 2) for t in r.texts], device=r.device)
            if getattr(pl_module, "step_scorer", None) is not None:  # SRPO examines the rows these rewards keep
                r.steps = pl_module.step_scorer(r, pl_module.tokenizer, pl_module.examined_rows(r))

    dm = RelevanceDataModule(view="rl", synth=SynthConfig(n_train=16, n_val=2, n_test=2, seed=3),
                             data_dir=os.path.join(cache_dir, "data"), batch_size=2, val=None, test=None, **(dm_kw or {}))
    spec = ModelSpec(name_or_path="micro", cache_dir=os.path.join(cache_dir, "models"), config_overrides=config_overrides)
    load_model_and_tokenizer(spec, corpus=dm.corpus)  # build and cache it first: building draws random numbers
    pl.seed_everything(0)
    module = module_cls(model=spec, lr=1e-2, export_dir=None, micro_batch_size=3, table_every=0, **kw)
    rollout = RolloutCallback(num_generations=G, generation=GenerationSpec(do_sample=True, temperature=1.3,
                                                                           max_new_tokens=24))
    if engine is not None:
        rollout.engine = engine
    callbacks = [rollout, RewardModelCallback(), *([Inject()] if inject else []), *extra_callbacks]
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics.get("train/loss", float("nan"))))

    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[*callbacks, Record()], default_root_dir=str(tmp_path), **(trainer_kw or {}))
    trainer.fit(module, dm)
    param_sum = sum(float(p.detach().double().sum()) for p in module.model.parameters())
    return trainer, module, losses, param_sum


# Recorded from the planned update (repeats computed once, groups sorted by length, micro-batches
# trimmed: taosr.rl.update_plan) on this machine's CPU kernels; a refactor must leave GRPO's numbers
# bit-identical. The plain update before it (commits 4e265b2 to e2f4f40) gave the same losses but for
# iters2 (-0.12222607433795929) and parameter sums 245.86120794998715 / 248.32276809681207 /
# 243.0090736868151: the same gradient summed in another order.
# "iters2" runs 2 updates on one rollout batch.
# The numbers depend on the CPU's kernels: recorded per torch CPU capability and CPU vendor (AVX2 on
# AMD: the project's first machine, a Zen 3; AVX512 on AMD: a Zen 4, 2026-12-02, the same code;
# AVX512 on Intel: a Xeon, 2026-12-05, the same numbers as the Zen 4's to 1e-7), exact there;
# elsewhere within 1e-4. ATEN_CPU_CAPABILITY=avx2 on the Zen 4 reproduces the Zen 3's AVX2 records
# exactly; the Intel and AMD AVX-512 cores differ in the eighth digit.
# Re-recorded 2026-12-02 (eleventh stop) when a completion without eos stopped being cut at its count
# of non-pad tokens (the micro model samples the pad token inside completions; every completion now
# keeps its 24 tokens, so "default"'s token-mean loss of centred advantages is ~0 at ratio 1).
# Before: AVX2 default ([-0.009114757180213928, -0.0032983943819999695], 245.86127138190932),
# kl_seq_mean ([0.0, 0.00047077611088752747], 248.32276168153476), iters2 ([-0.12222403287887573], 243.00456309838773).
GRPO_CASES = {"default": ({}, 2), "kl_seq_mean": ({"beta": 0.04, "loss_agg": "seq_mean", "scale_std": False}, 2),
              "iters2": ({"num_iterations": 2, "loss_agg": "dr_grpo"}, 1)}
GRPO_BEFORE = {
    "AVX2/AuthenticAMD": {"default": ([0.0, 1.862645149230957e-09], 225.7295939806172),
             "kl_seq_mean": ([2.9802322387695312e-08, 0.000424753874540329], 226.0834571905025),
             "iters2": ([-0.10901777446269989], 233.80485756399867)},
    "AVX512/AuthenticAMD": {"default": ([0.0, 1.862645149230957e-09], 225.72951122961604),
                            "kl_seq_mean": ([2.9802322387695312e-08, 0.000424753874540329], 226.08334254862257),
                            "iters2": ([-0.10901780426502228], 233.80486606540944)},
    "AVX512/GenuineIntel": {"default": ([0.0, 1.862645149230957e-09], 225.7295095212594),
                            "kl_seq_mean": ([2.9802322387695312e-08, 0.000424753874540329], 226.0833028636789),
                            "iters2": ([-0.10901781916618347], 233.80487212379376)},
}


def cpu_kernels() -> str:
    """The key of this machine's records: torch's CPU capability and the CPU vendor."""
    vendor = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            vendor = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()}/{vendor}"


@pytest.mark.parametrize("case", sorted(GRPO_CASES))
def test_grpo_numbers_unchanged(tmp_path, cache_dir, case):
    kw, steps = GRPO_CASES[case]
    cap = cpu_kernels()
    losses, param_sum = GRPO_BEFORE.get(cap, GRPO_BEFORE["AVX2/AuthenticAMD"])[case]
    trainer, _, got_losses, got_sum = _fit_micro(tmp_path, cache_dir, max_steps=steps, **kw)
    assert trainer.global_step == steps
    if cap in GRPO_BEFORE:
        assert got_losses == losses
        assert got_sum == param_sum
    else:  # kernels not recorded here: the same run within their rounding
        assert got_losses == pytest.approx(losses, rel=1e-4, abs=1e-7)
        assert got_sum == pytest.approx(param_sum, rel=1e-4)


def test_a_global_step_is_one_rollout_batch(tmp_path, cache_dir):
    """max_steps=3 with num_iterations=2: exactly 3 rollout batches and 6 optimizer updates (each
    update used to count as a global step, so the run stopped after 2 batches), and the curriculum
    sees the step of the rollout batch."""
    import lightning.pytorch as pl

    seen = {"batches": 0, "updates": 0, "steps": []}

    class Count(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            opt.register_step_post_hook(lambda *a: seen.__setitem__("updates", seen["updates"] + 1))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["batches"] += 1
            seen["steps"].append(trainer.global_step)

    trainer, *_ = _fit_micro(tmp_path, cache_dir, max_steps=3, num_iterations=2, extra_callbacks=[Count()])
    assert trainer.global_step == 3
    assert seen == {"batches": 3, "updates": 6, "steps": [0, 1, 2]}


def test_curriculum_stage_ends_after_until_step_batches(tmp_path, cache_dir):
    """until_step 2: rollout batches 0 and 1 are the first stage's (qa queries), batch 2 on the next
    stage's. The switch used to happen at the start of batch 2, which the sampler had already drawn:
    every stage ran one batch long."""
    import lightning.pytorch as pl

    from taosr.callbacks.curriculum import CurriculumCallback
    from taosr.data.hooks import Curriculum, CurriculumStage

    types = []

    class Types(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rows = trainer.datamodule.train_rows_cache
            types.append({rows[int(i)].query_type for i in batch["index"].tolist()})

    cur = Curriculum(stages=[CurriculumStage(query_types=["qa"], until_step=2),
                             CurriculumStage(query_types=["attribute", "negation", "category"])])
    _fit_micro(tmp_path, cache_dir, max_steps=4, G=2, dm_kw={"curriculum": cur},
               extra_callbacks=[CurriculumCallback(), Types()])
    assert types[:2] == [{"qa"}, {"qa"}] and all("qa" not in t for t in types[2:]) and len(types) == 4
    assert cur.history == [{"stage": 1, "step": 2}]


def test_all_dropped_batch_counts_one_step_with_iterations(tmp_path, cache_dir):
    """A rollout batch whose groups are all dropped is one global step too, whatever num_iterations."""
    trainer, *_ = _fit_micro(tmp_path, cache_dir, max_steps=2, inject=False, num_iterations=3)
    assert trainer.global_step == 2


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": 0.0}, r"^model.init_args.lr: must be > 0, got 0.0$"),
    ({"weight_decay": -0.1}, r"^model.init_args.weight_decay: must be >= 0"),
    ({"warmup_steps": -1}, r"^model.init_args.warmup_steps: must be >= 0"),
    ({"scheduler": "cosin"}, r"^model.init_args.scheduler: 'cosin' is unknown; expected one of constant, linear, cosine$"),
    ({"num_iterations": 0}, r"^model.init_args.num_iterations: must be >= 1"),
    ({"reference": "frozen"}, r"^model.init_args.reference: 'frozen' is unknown"),
    ({"loss_agg": "sum"}, r"^model.init_args.loss_agg: 'sum' is unknown; expected one of token_mean, seq_mean, dr_grpo$"),
])
def test_options_are_checked_at_construction(kwargs, match):
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        GRPOModule(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_generations": 1}, r"num_generations: group methods need at least 2 completions per prompt, got 1$"),
    ({"generation": "zero budget"}, r"generation.max_new_tokens: must be >= 1, got 0$"),
    ({"engine": "trt"}, r"engine: 'trt' is unknown; expected one of hf, vllm$"),
    ({"engine": "vllm", "vllm": {"gpu_mem": 0.3}}, r"vllm.gpu_mem: not an option of rollout engine VLLMEngine"),
    # greedy rollouts: G alike completions, every group dropped, and the run exited 0
    ({"generation": GenerationSpec(do_sample=False)}, r"generation: rollouts must sample"),
    ({"generation": GenerationSpec(do_sample=True, temperature=0)}, r"generation: rollouts must sample"),
    # replaced by num_generations without a word
    ({"num_generations": 4, "generation": GenerationSpec(do_sample=True, num_return_sequences=16)},
     r"generation.num_return_sequences: a prompt's completions are num_generations \(4\)"),
    # vllm options under the hf engine were never read
    ({"engine": "hf", "vllm": {"gpu_memory_utilization": 0.5}}, r"vllm: options of the vllm engine, and engine is 'hf'"),
])
def test_rollout_callback_refuses_runs_that_train_nothing(kwargs, match):
    """G < 2 (every group dropped) or a zero completion budget used to exit 0 having trained
    nothing; now refused when the callback is built, before any work starts."""
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.errors import ConfigError

    if kwargs.get("generation") == "zero budget":
        with pytest.raises(ConfigError, match=r"^generation.max_new_tokens must be >= 1, got 0"):
            GenerationSpec(max_new_tokens=0)  # the spec refuses it when built from YAML ...
        spec = GenerationSpec()
        spec.max_new_tokens = 0  # ... and the callback still refuses a spec changed after that
        kwargs = {"generation": spec}
    with pytest.raises(ConfigError, match=r"^trainer.callbacks\[RolloutCallback\].init_args." + match):
        RolloutCallback(**kwargs)


def test_srpo_options_checked_at_construction():
    from taosr.errors import ConfigError
    from taosr.methods.srpo import SRPOModule
    from taosr.rl.advantages import StepAdvantageSpec
    from taosr.rl.examiner import ExaminerSpec

    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.name: 'pcs' is unknown"):
        SRPOModule(step_advantage=StepAdvantageSpec(name="pcs"))
    # an option the chosen estimator does not take is refused, not ignored
    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.lam: not an option of step advantage "
                                          r"estimator 'process_sum' \(it takes clamp, outcome_weight\)$"):
        SRPOModule(step_advantage=StepAdvantageSpec(name="process_sum", lam=0.3))
    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.clamp: not an option of .* 'outcome' "
                                          r"\(it takes no options\)$"):
        SRPOModule(step_advantage=StepAdvantageSpec(name="outcome", clamp=2.0))
    with pytest.raises(ConfigError, match=r"^model.init_args.examiner.mode: 'vote' is unknown"):
        SRPOModule(examiner=ExaminerSpec(mode="vote"))
    with pytest.raises(ConfigError, match=r"^model.init_args.examiner.mode='grm' needs model.init_args.grm_path"):
        SRPOModule(examiner=ExaminerSpec(mode="grm"))
    with pytest.raises(ConfigError, match=r"^model.init_args.examiner.verifier_weight: must be in \[0, 1\]"):
        SRPOModule(examiner=ExaminerSpec(mode="verifier", verifier_weight=1.5))
    # read by the weighted mode only: it did nothing in the others
    with pytest.raises(ConfigError, match=r"^model.init_args.examiner.verifier_weight: read by mode weighted only, "
                                          r"and mode is 'verifier_then_grm'"):
        SRPOModule(examiner=ExaminerSpec(verifier_weight=0.8))
    SRPOModule(examiner=ExaminerSpec(mode="weighted", verifier_weight=0.8), grm_path=os.getcwd())  # accepted
    SRPOModule(step_advantage=StepAdvantageSpec(name="process_sum", clamp=1.0, outcome_weight=0.5))  # accepted


def test_srpo_outcome_and_lam0_are_grpo_end_to_end(tmp_path, cache_dir):
    """SRPO (verifier-only examiner, no GRM) with the `outcome` estimator or with lam = 0 trains
    exactly like GRPO: same losses and weights (the clamp never touches the outcome advantage)."""
    from taosr.methods.srpo import SRPOModule
    from taosr.rl.advantages import StepAdvantageSpec
    from taosr.rl.examiner import ExaminerSpec

    _, _, losses, param_sum = _fit_micro(tmp_path, cache_dir, **GRPO_CASES["default"][0])
    for spec in (StepAdvantageSpec(name="outcome"), StepAdvantageSpec(name="outcome_plus_step", lam=0.0, clamp=0.5)):
        _, mod, got_losses, got_sum = _fit_micro(tmp_path, cache_dir, module_cls=SRPOModule, step_advantage=spec,
                                                 examiner=ExaminerSpec(mode="verifier"))
        assert mod.step_scorer is not None and mod.step_scorer.grm is None
        assert (got_losses, got_sum) == (losses, param_sum), spec


@pytest.mark.parametrize("scale_std", [True, False])
def test_srpo_outcome_advantage_uses_the_modules_scale_std(scale_std):
    """One source of truth: SRPO's outcome advantage follows model.init_args.scale_std like GRPO's
    (StepAdvantageSpec.scale_std used to win silently)."""
    from taosr.methods.srpo import SRPOModule
    from taosr.rl.advantages import StepAdvantageSpec, group_advantages
    from taosr.rl.rollout import StepScores

    sr = torch.ones(8, 5)
    token_step = torch.tensor([[0, 1, 2, 3, 4, 5]] * 8)
    r = _rollout(reward=torch.tensor([1.2, 0.2, 0.2, 0.2, 1.2, 1.2, 0.2, 0.0]),
                 correct=torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0]),
                 steps=StepScores(rewards=sr, source=torch.ones_like(sr).long(), present=torch.ones_like(sr).bool(),
                                  verdict=sr, token_step=token_step))
    for name in ("outcome", "outcome_plus_step", "process_sum"):
        mod = SRPOModule(step_advantage=StepAdvantageSpec(name=name), scale_std=scale_std)
        want = group_advantages(r.reward, 4, scale_std=scale_std)
        assert torch.equal(mod.advantages(r), want[:, None].expand(-1, 6)), name
        assert torch.equal(GRPOModule(scale_std=scale_std).advantages(r), want)


def _with_repeats(r):
    r.completion_ids[2], r.completion_mask[2] = r.completion_ids[0], r.completion_mask[0]  # repeats in group 0
    r.completion_ids[3], r.completion_mask[3] = r.completion_ids[0], r.completion_mask[0]
    r.completion_ids[6], r.completion_mask[6] = r.completion_ids[5], r.completion_mask[5]  # and in group 1
    r.completion_mask[5:7, 4:] = 0
    return r


def test_all_logps_give_every_row_its_own_log_probs():
    """Old / reference log-probs are computed once per distinct completion (in the plan's order) and
    put back on every row: the plain forward's values over each row's completion, zero past it."""
    model, r = _tiny(), _with_repeats(_rollout())
    with torch.no_grad():
        got = GRPOModule(micro_batch_size=3)._all_logps(model, r)
        want = GRPOModule(prefix_sharing=False, dedup_completions=False)._logps(model, r)
    mask = r.completion_mask.bool()
    assert got.shape == r.completion_ids.shape
    assert torch.allclose(got[mask], want[mask], atol=1e-5) and bool((got[~mask] == 0).all())


@pytest.mark.parametrize("loss_agg,per_token,beta,sampler", [
    ("token_mean", False, 0.0, False), ("seq_mean", False, 0.0, False), ("dr_grpo", True, 0.0, False),
    ("token_mean", True, 0.04, False), ("token_mean", True, 0.04, True), ("seq_mean", False, 0.0, True)])
def test_planned_update_gives_the_full_batch_gradient(loss_agg, per_token, beta, sampler):
    """The planned update (repeats computed once and weighted, groups sorted by length, micro-batches
    trimmed) gives the loss and gradient of one plain forward over every kept row; with beta > 0 also
    with old log-probs from other weights (ratio away from 1, clipping on) and the KL term; with
    ``sampler`` also with the rollout's importance-sampling weights on each row's tokens."""
    from taosr.losses.policy import policy_loss
    from taosr.rl.update_plan import plan_update

    model, r = _tiny(), _with_repeats(_rollout())
    if beta:
        other = _tiny()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
            r.old_logps = GRPOModule()._all_logps(other, r)
            ref = _tiny()
            for p in ref.parameters():
                p.add_(0.02 * torch.randn_like(p))
            r.ref_logps = GRPOModule()._all_logps(ref, r)
    reward = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.2])
    adv = (reward - reward.view(2, 4).mean(1).repeat_interleave(4))
    if per_token:
        adv = adv[:, None] * torch.linspace(0.5, 1.5, r.completion_ids.shape[1])[None, :]
    keep = torch.tensor([0, 1, 2, 3, 5, 6, 7])
    mask = r.completion_mask.float()
    if sampler:  # weights per token, each row its own, the repeats' too (an engine's log-probs of equal tokens
        # can differ in the last bits; the planned update weights a representative by its copies' mean)
        r.is_weights = (0.5 + torch.rand(r.completion_ids.shape, generator=torch.Generator().manual_seed(4))) * mask
    kw = dict(num_tokens=float(mask[keep].sum()), num_seqs=float(len(keep)))
    # reference: one plain forward over the kept rows, no weights
    mod = GRPOModule(prefix_sharing=False, loss_agg=loss_agg, beta=beta)
    model.zero_grad()
    lp = mod._logps(model, r, keep)
    W = lp.shape[1]
    old = r.old_logps[keep, :W] if r.old_logps is not None else lp.detach()
    ref_lp = r.ref_logps[keep, :W] if r.ref_logps is not None else None
    want, want_m = policy_loss(lp, old, adv[keep, :W] if per_token else adv[keep], mask[keep, :W],
                               loss_agg=loss_agg, num_tokens=kw["num_tokens"], num_sequences=kw["num_seqs"],
                               max_completion_length=r.max_new_tokens, ref_logps=ref_lp, beta=beta,
                               is_weights=r.is_weights[keep, :W] if sampler else None)
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    if beta:
        assert want_m["clip_ratio/region_mean"] > 0  # the ratio left the clip range somewhere
    mod = GRPOModule(loss_agg=loss_agg, micro_batch_size=2, beta=beta)
    mod.model = model
    mod.manual_backward = lambda loss: loss.backward()
    plan = plan_update(r.completion_ids, r.completion_mask, keep, r.group_size, 2, advantages=adv)
    assert plan.duplicates == 3
    model.zero_grad()
    agg = mod._accumulate(r, plan, adv, kw["num_tokens"], kw["num_seqs"])
    assert agg["loss"] == pytest.approx(float(want.detach()), abs=1e-6)
    for k, v in want_m.items():
        assert agg[k] == pytest.approx(v, abs=1e-6), k
    for g, w in zip([p.grad for p in model.parameters()], want_grads):
        assert torch.allclose(g, w, atol=1e-6), float((g - w).abs().max())


def test_a_step_without_an_update_logs_no_loss(tmp_path, cache_dir):
    """A rollout batch whose groups are all dropped has no loss: NaN is logged (a gap in the charts,
    skipped by the history means compare reports), not the previous update's loss and entropy again."""
    import math

    import lightning.pytorch as pl

    class FlatAt1(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                r = batch["rollout"]
                r.reward = torch.zeros_like(r.reward)

    _, _, losses, _ = _fit_micro(tmp_path, cache_dir, max_steps=3, extra_callbacks=[FlatAt1()])
    assert math.isfinite(losses[0]) and math.isnan(losses[1]) and math.isfinite(losses[2]), losses


def _fp16_scaler_plugin():
    """16-mixed with a gradient scaler, as on CUDA (fp16 autocast and a GradScaler on the CPU)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16))


@pytest.mark.parametrize("inject", [True, False], ids=["updates", "all_dropped"])
def test_grpo_under_16_mixed_clips_unscaled_gradients(tmp_path, cache_dir, inject):
    """Under 16-mixed the gradients are scaled until the precision plugin unscales them inside the
    optimizer step: clipped before it, an update's gradient norm was max_grad_norm / 65536. A batch
    whose groups are all dropped has no gradients: it counts its step without the scaler, which
    would find no inf checks."""
    import lightning.pytorch as pl

    norms = []

    class Seen(pl.Callback):  # the gradients the update uses (the scaler calls step() after clipping)
        def on_train_start(self, trainer, pl_module):
            def pre(opt, *a):
                grads = [p.grad.float() for g in opt.param_groups for p in g["params"] if p.grad is not None]
                if grads:  # a counted step without an update has none
                    norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
            trainer.optimizers[0].register_step_pre_hook(pre)

    trainer, *_ = _fit_micro(tmp_path, cache_dir, max_steps=2, inject=inject, extra_callbacks=[Seen()],
                             trainer_kw={"plugins": [_fp16_scaler_plugin()]})
    assert trainer.global_step == 2
    if inject:
        assert norms and all(1e-3 < n <= 1.0 + 1e-3 for n in norms), norms
    else:
        assert norms == []


@pytest.mark.parametrize("disable", [True, False])
def test_rl_scores_rollouts_without_dropout(tmp_path, cache_dir, disable):
    """Rollouts sample in eval mode; the update scored them in train mode, with the model's dropout
    (0.1 in GPT-2/OPT configs): another policy than the one that sampled. Off by default, as TRL's DPO."""
    import lightning.pytorch as pl

    rates = []

    class Rates(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            assert pl_module.model.training
            rates.extend(m.attention_dropout for m in pl_module.model.modules() if hasattr(m, "attention_dropout"))

    _fit_micro(tmp_path, cache_dir, max_steps=1, extra_callbacks=[Rates()], config_overrides={"attention_dropout": 0.3},
               disable_dropout=disable)
    assert rates and set(rates) == ({0.0} if disable else {0.3})


class _ReportingHF:
    """The HF engine's draws plus the sampler log-probs an off-policy engine (vLLM) reports with them:
    here the trainer's own forward at the sampling temperature (what a sampler that matches the
    trainer reports), lowered by ``shift`` per token on the odd rows, or on all with ``odd_only``
    off (a sampler that disagrees there)."""

    def __init__(self, shift: float = 0.0, odd_only: bool = True):
        from taosr.rl.engines.hf import HFEngine

        self.hf, self.shift, self.odd_only, self.ragged = HFEngine(), shift, odd_only, False

    def sync_weights(self, model):
        return None

    @torch.no_grad()
    def sample(self, model, tokenizer, input_ids, attention_mask, spec):
        comp = self.hf.generate(model, tokenizer, input_ids, attention_mask, spec)
        G, W = spec.num_return_sequences, comp.shape[1]
        ids = torch.cat([input_ids.repeat_interleave(G, 0), comp], 1)
        att = torch.cat([attention_mask.repeat_interleave(G, 0), torch.ones_like(comp)], 1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        was = model.training
        model.eval()
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -W - 1:-1].float()
        model.train(was)
        lps = torch.log_softmax(logits / spec.temperature, -1).gather(-1, comp[..., None])[..., 0]
        lps[slice(1, None, 2) if self.odd_only else slice(None)] -= self.shift
        return comp, lps


def test_a_reporting_engine_logs_its_mismatch_and_the_correction_weights_the_update(tmp_path, cache_dir):
    """End to end (one rollout batch each): an engine that reports sampler log-probs gets old log-probs
    computed and its mismatch logged; with the trainer's own log-probs the corrected update is the plain
    one (weights 1, up to rounding); with a sampler that disagrees on odd rows the mismatch is logged and,
    with ``rollout_is`` on, those rows' sequence ratio e^24 > 3 masks them (the gradient changes); with it
    off, nothing but the logging changes. Gradients are compared (AdamW's first step is lr * sign(g): a
    near-zero gradient's rounding would decide the parameters)."""
    import lightning.pytorch as pl

    def run(name, **kw):
        grads = []

        class Grad(pl.Callback):
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                grads.append(torch.cat([p.grad.flatten() for p in pl_module.model.parameters() if p.grad is not None]))

        tr, *_ = _fit_micro(tmp_path / name, cache_dir, max_steps=1, extra_callbacks=[Grad()], **kw)
        return {k: float(v) for k, v in tr.callback_metrics.items()}, grads[0]

    _, plain = run("plain")
    m, matched = run("matched", engine=_ReportingHF(0.0))
    assert m["train/sampler/logp_diff_max"] < 1e-4 and m["train/sampler/is_bounded_frac"] == 0
    scale = float(plain.abs().max())
    assert scale > 0 and torch.allclose(matched, plain, atol=1e-4 * scale)
    # off, and no bounds (the metrics' ratio has none to clamp to: it used to fail there)
    m, off = run("off", engine=_ReportingHF(1.0, odd_only=False), rollout_is=None, rollout_is_max=None)
    assert m["train/sampler/logp_diff_mean"] == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(off, plain, atol=1e-4 * scale)
    m, masked = run("masked", engine=_ReportingHF(1.0))
    assert m["train/sampler/is_bounded_frac"] == 0.5 and m["train/sampler/is_ratio_max"] > 3
    assert float((masked - plain).abs().max()) > 0.05 * scale
