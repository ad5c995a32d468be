"""Our DPO and GRPO losses give TRL's numbers on equal inputs (TRL's own loss code is called,
with a stand-in trainer that carries only the attributes the loss reads)."""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from taosr.losses.dpo import dpo_loss
from taosr.losses.policy import policy_loss

trl = pytest.importorskip("trl")
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402


class _Acc:
    num_processes = 1
    sync_gradients = True
    device = "cpu"

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _dpo_standin(beta):
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Acc(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
        beta=beta, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
        _tp_size=1)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_trl(beta):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    per_tok = -torch.rand(2 * B, T - 1, generator=g) * 3
    mask = (torch.rand(2 * B, T, generator=g) > 0.3).long()
    mask[:, 0] = 0
    ref_c, ref_r = -torch.rand(B, generator=g) * 20, -torch.rand(B, generator=g) * 20

    def fake_model(**kw):
        n, t = per_tok.shape
        return SimpleNamespace(log_probs=per_tok * mask[:, 1:], entropy=torch.zeros(n, t), mean_logits=torch.zeros(n, t),
                               is_top1=torch.zeros(n, t, dtype=torch.bool), log_sum_sq_probs=torch.zeros(n, t))

    inputs = {"input_ids": torch.zeros(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
              "completion_mask": mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    trl_loss = DPOTrainer._compute_loss(_dpo_standin(beta), fake_model, inputs, return_outputs=False)
    logps = (per_tok * mask[:, 1:]).sum(1)
    losses, rc, rr = dpo_loss(logps[:B], logps[B:], ref_c, ref_r, beta=beta)
    assert torch.allclose(losses.mean(), trl_loss, atol=1e-6)


def _grpo_standin(loss_type, beta, eps_low, eps_high, max_len, lp, ent, delta=None):
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, ent, None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=delta, steps_per_generation=1),
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, accelerator=_Acc(), _entropy_bonus_enabled=False,
        max_completion_length=max_len, _metrics=defaultdict(lambda: defaultdict(list)))


# our aggregation name -> TRL loss_type (same normaliser for one process, no accumulation)
MAPPING = [("token_mean", "dapo"), ("token_mean", "bnpo"), ("seq_mean", "grpo"), ("dr_grpo", "dr_grpo")]


@pytest.mark.parametrize("ours,theirs", MAPPING)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("adv_dim", [1, 2])
@pytest.mark.parametrize("delta", [None, 1.5])
def test_policy_loss_matches_trl_grpo(ours, theirs, beta, adv_dim, delta):
    g = torch.Generator().manual_seed(1)
    B, P, T = 8, 3, 7
    lp = -torch.rand(B, T, generator=g) * 2
    old = lp + (torch.rand(B, T, generator=g) - 0.5) * 1.6  # ratios well outside the clip (and dual clip) range
    ref = lp + (torch.rand(B, T, generator=g) - 0.5) * 0.3
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g) if adv_dim == 1 else torch.randn(B, T, generator=g)
    inputs = {"prompt_ids": torch.zeros(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum().float()}
    standin = _grpo_standin(theirs, beta, 0.2, 0.28, T, lp, torch.zeros(B, T), delta=delta)
    trl_loss = GRPOTrainer._compute_loss(standin, None, inputs)
    loss, m = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, ref_logps=ref, beta=beta, loss_agg=ours,
                          max_completion_length=T, delta=delta)
    assert torch.allclose(loss, trl_loss, atol=1e-6), (float(loss), float(trl_loss))
    for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert m[k] == pytest.approx(standin._metrics["train"][k][0], abs=1e-6)
    if beta:
        assert m["kl"] == pytest.approx(standin._metrics["train"]["kl"][0], abs=1e-6)


@pytest.mark.parametrize("ours,theirs", MAPPING)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_sampler_corrected_loss_matches_trl_vllm_importance_sampling(ours, theirs, beta, mode):
    """With the sampler-mismatch weights, our loss is TRL's with its vLLM importance-sampling correction
    given the same ratio (it weights the policy term only, not the KL term)."""
    from taosr.rl.sampler_correction import sampler_is_weights

    g = torch.Generator().manual_seed(2)
    B, P, T = 8, 3, 7
    lp = -torch.rand(B, T, generator=g) * 2
    old = lp + (torch.rand(B, T, generator=g) - 0.5) * 0.8
    sampler = old + (torch.rand(B, T, generator=g) - 0.5) * 0.6  # vLLM's log-probs of the same tokens
    ref = lp + (torch.rand(B, T, generator=g) - 0.5) * 0.3
    mask = (torch.rand(B, T, generator=g) > 0.25).long()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g)
    w, _ = sampler_is_weights(old, sampler, mask, mode=mode, cap_max=2.0)
    assert bool((w[mask.bool()] != 1).all())
    inputs = {"prompt_ids": torch.zeros(B, P, dtype=torch.long), "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "importance_sampling_ratio": w,
              "num_items_in_batch": mask.sum().float()}
    standin = _grpo_standin(theirs, beta, 0.2, 0.28, T, lp, torch.zeros(B, T))
    standin.use_vllm = standin.vllm_importance_sampling_correction = True
    trl_loss = GRPOTrainer._compute_loss(standin, None, inputs)
    loss, _ = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, ref_logps=ref, beta=beta, loss_agg=ours,
                          max_completion_length=T, is_weights=w)
    assert torch.allclose(loss, trl_loss, atol=1e-6), (float(loss), float(trl_loss))
    plain, _ = policy_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, ref_logps=ref, beta=beta, loss_agg=ours,
                           max_completion_length=T)
    assert abs(float(plain) - float(loss)) > 1e-4  # the weights moved it
