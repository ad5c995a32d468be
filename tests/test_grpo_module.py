"""GRPO module internals: prefix sharing gives the plain forward's log-probs and gradients."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from taosr.methods.grpo import GRPOModule


def _rollout(G=4, n_prompts=2, P=7, L=6, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, V, (n_prompts, P), generator=g)
    prompt_mask = torch.ones(n_prompts, P, dtype=torch.long)
    prompt_mask[1, :3] = 0  # left padding on the second prompt
    comp = torch.randint(3, V, (n_prompts * G, L), generator=g)
    cmask = torch.ones_like(comp)
    cmask[1, 4:] = 0  # a completion that ended early (right padded)
    return {"prompt_ids": prompt_ids.repeat_interleave(G, 0), "prompt_mask": prompt_mask.repeat_interleave(G, 0),
            "completion_ids": comp, "completion_mask": cmask, "group_size": G}


@pytest.mark.parametrize("rows", [None, slice(4, 8)])
def test_prefix_sharing_matches_plain_forward(rows):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    r = _rollout()
    mask = r["completion_mask"][rows if rows is not None else slice(None)].float()
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
    """Whole contiguous groups go through the shared-prefix forward; a ragged slice does not."""
    calls = []
    orig = GRPOModule._shared_prefix_logits
    monkeypatch.setattr(GRPOModule, "_shared_prefix_logits", lambda self, *a: calls.append(1) or orig(self, *a))
    mod, model, r = GRPOModule(prefix_sharing=True), _tiny(), _rollout()
    mod._logps(model, r, slice(4, 8))
    assert calls == [1]
    mod._logps(model, r, slice(2, 6))  # straddles two groups: plain forward
    assert calls == [1]


def test_logps_follow_the_sampling_temperature():
    """Tokens are scored under the distribution they were sampled from: log_softmax(logits / T)."""
    model, r = _tiny(), _rollout()
    mod = GRPOModule(prefix_sharing=False)
    with torch.no_grad():
        base = mod._logps(model, r)
        hot = mod._logps(model, {**r, "temperature": 2.0})
        ids = torch.cat([r["prompt_ids"], r["completion_ids"]], 1)
        att = torch.cat([r["prompt_mask"], r["completion_mask"]], 1)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        L = r["completion_ids"].shape[1]
        logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -L - 1:-1] / 2.0
        want = torch.log_softmax(logits, -1).gather(-1, r["completion_ids"][..., None])[..., 0]
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

    r = {"group_size": 2, "reward": torch.tensor([1.0, 1.0, 1.0, 0.0]),
         "step_rewards": torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])}
    step = SRPOModule(step_advantage=StepAdvantageSpec(name="outcome_plus_step"), keep_step_only_groups=True)
    assert step.keep_mask(r).tolist() == [True, True, True, True]
    grpo_rule = [False, False, True, True]
    assert SRPOModule(step_advantage=StepAdvantageSpec(name="outcome_plus_step")).keep_mask(r).tolist() == grpo_rule
    outcome = SRPOModule(step_advantage=StepAdvantageSpec(name="outcome"), keep_step_only_groups=True)
    assert outcome.keep_mask(r).tolist() == GRPOModule().keep_mask(r).tolist() == grpo_rule


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
