"""Advantage estimators with hand-computed values (see the comments for the arithmetic)."""
import math

import pytest
import torch

from taosr.rl.advantages import (STEP_ADVANTAGES, compute_step_advantages, critical_step_mask, frac_zero_std,
                                 group_advantages, zero_spread_mask)

# Two groups of G=2, K=3 steps.
OUTCOME = torch.tensor([1.2, 0.2, 0.2, 1.2])          # correct+format, format only, ...
CORRECT = torch.tensor([True, False, False, True])
STEPS = torch.tensor([[1.0, 1.0, 0.0],                  # group 1
                      [1.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0],                  # group 2
                      [0.0, 1.0, 1.0]])
# token -> step position; 3 = after the last step (label line); -1 = padding
TOKEN_STEP = torch.tensor([[0, 0, 1, 2, 3, -1]] * 4)


def expand(table):
    """table: (N, K+1) per-step values -> per-token values for TOKEN_STEP."""
    return torch.tensor([[row[0], row[0], row[1], row[2], row[3], 0.0] for row in table])


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0])
    # group 1: mean .5, unbiased std 1/sqrt(2) -> +-(0.5 / 0.7071) = +-0.7071
    a = group_advantages(r, 2, scale_std=True, eps=0.0 + 1e-12)
    assert a[:2].tolist() == pytest.approx([math.sqrt(0.5), -math.sqrt(0.5)], abs=1e-6)
    assert a[2:].tolist() == pytest.approx([0.0, 0.0])  # zero spread -> 0, not NaN
    assert group_advantages(r, 2, scale_std=False).tolist() == [0.5, -0.5, 0.0, 0.0]


def test_zero_spread_mask_and_fraction():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0, 1.0, 1.0])
    assert zero_spread_mask(r, 2).tolist() == [False, False, True, True, True, True]
    assert frac_zero_std(r, 2) == pytest.approx(2 / 3)


def test_critical_steps():
    crit = critical_step_mask(STEPS, CORRECT)
    # row 0 (right answer): the wrong step k2 is critical; row 1 (wrong answer): the right step k0;
    # row 2 (wrong answer): every (right) step; row 3 (right answer): the wrong step k0.
    assert crit.tolist() == [[False, False, True], [True, False, False], [True, True, True], [True, False, False]]


def test_outcome_plus_step_hand_computed():
    adv = compute_step_advantages("outcome_plus_step", outcome_rewards=OUTCOME, step_rewards=STEPS, correct=CORRECT,
                                  token_step=TOKEN_STEP, group_size=2, lam=0.5, critical_weight=2.0, clamp=2.0,
                                  scale_std=False)
    # A_out = [.5, -.5, -.5, .5] (mean-centred outcome, no std scaling)
    # group 1: k0 [1,1] flat -> 0; k1 [1,0] -> [+.5,-.5]; k2 [0,0] flat -> 0
    #   row 0: .5 + .5*[0, .5, 0]         = [.5, .75, .5], label .5
    #   row 1: -.5 + .5*[0, -.5, 0]       = [-.5, -.75, -.5], label -.5
    # group 2: k0 [1,0] -> [+.5,-.5]; k1, k2 flat -> 0; k0 is critical in both rows (w=2)
    #   row 2: -.5 + .5*2*.5 = 0, then -.5, -.5 ; row 3: .5 + .5*2*(-.5) = 0, then .5, .5
    want = expand([[0.5, 0.75, 0.5, 0.5], [-0.5, -0.75, -0.5, -0.5], [0.0, -0.5, -0.5, -0.5], [0.0, 0.5, 0.5, 0.5]])
    assert torch.allclose(adv, want, atol=1e-6)


def test_outcome_plus_step_clamps():
    adv = compute_step_advantages("outcome_plus_step", outcome_rewards=OUTCOME, step_rewards=STEPS, correct=CORRECT,
                                  token_step=TOKEN_STEP, group_size=2, lam=10.0, critical_weight=2.0, clamp=2.0,
                                  scale_std=False)
    # row 2, k0: -.5 + 10*2*.5 = 9.5 -> clamped to 2; row 1, k1: -.5 + 10*(-.5) = -5.5 -> -2
    assert adv[2, 0].item() == 2.0 and adv[1, 2].item() == -2.0
    assert adv.abs().max().item() <= 2.0


def test_process_sum_hand_computed():
    adv = compute_step_advantages("process_sum", outcome_rewards=OUTCOME, step_rewards=STEPS, correct=CORRECT,
                                  token_step=TOKEN_STEP, group_size=2, outcome_weight=1.0, scale_std=False)
    # group 1 step rewards [1,1,0,1,0,0], mean .5 -> row 0 [.5,.5,-.5], row 1 [.5,-.5,-.5]
    # suffix sums: row 0 [.5, 0, -.5], row 1 [-.5, -1, -.5]; + A_out (.5 / -.5); label line = A_out
    # group 2 step rewards [1,1,1,0,1,1], mean 5/6 -> row 2 [1/6]*3, row 3 [-5/6, 1/6, 1/6]
    # suffix sums: row 2 [.5, 1/3, 1/6], row 3 [-.5, 1/3, 1/6]; + A_out (-.5 / .5)
    want = expand([[1.0, 0.5, 0.0, 0.5], [-1.0, -1.5, -1.0, -0.5],
                   [0.0, 1 / 3 - 0.5, 1 / 6 - 0.5, -0.5], [0.0, 1 / 3 + 0.5, 1 / 6 + 0.5, 0.5]])
    assert torch.allclose(adv, want, atol=1e-6)


def test_outcome_estimator_equals_grpo():
    adv = compute_step_advantages("outcome", outcome_rewards=OUTCOME, step_rewards=STEPS, correct=CORRECT,
                                  token_step=TOKEN_STEP, group_size=2)
    seq = group_advantages(OUTCOME, 2)
    assert torch.allclose(adv[:, :5], seq[:, None].expand(-1, 5))
    assert (adv[:, 5] == 0).all()


def test_registry_and_unknown_name():
    assert {"outcome", "outcome_plus_step", "process_sum"} <= set(STEP_ADVANTAGES)
    from taosr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.name: 'nope' is unknown"):
        compute_step_advantages("nope", outcome_rewards=OUTCOME)


def test_process_sum_ignores_missing_steps():
    """A missing step (malformed output) takes no part in the normalisation and adds 0 to suffix sums."""
    steps = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, True], [True, False, True]])
    adv = compute_step_advantages("process_sum", outcome_rewards=torch.tensor([1.0, 0.0]), step_rewards=steps,
                                  correct=torch.tensor([True, False]), token_step=TOKEN_STEP[:2], group_size=2,
                                  outcome_weight=1.0, scale_std=False, step_present=present)
    # present rewards 1,0,1,1,0 -> mean .6; row 0 [.4,-.6,.4], row 1 [.4, 0 (missing), -.6]
    # suffix sums: row 0 [.2,-.2,.4], row 1 [-.2,-.6,-.6]; A_out = +-.5 (also the label line)
    want = expand([[0.7, 0.3, 0.9, 0.5], [-0.7, -1.1, -1.1, -0.5]])
    assert torch.allclose(adv, want, atol=1e-6)


def test_process_sum_std_over_present_steps_only():
    steps = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, True], [True, False, True]])
    adv = compute_step_advantages("process_sum", outcome_rewards=torch.tensor([1.0, 1.0]), step_rewards=steps,
                                  correct=torch.tensor([True, True]), token_step=TOKEN_STEP[:2], group_size=2,
                                  outcome_weight=0.0, scale_std=True, eps=1e-9, step_present=present)
    # present values 1,0,1,1,0: mean .6, unbiased std sqrt(1.2/4); step 3 of row 0 alone: .4 / std
    std = math.sqrt((3 * 0.16 + 2 * 0.36) / 4)
    assert adv[0, 3].item() == pytest.approx(0.4 / std, abs=1e-5)
    assert adv[1, 2].item() == pytest.approx(-0.6 / std, abs=1e-5)  # missing step 1 adds nothing


def test_outcome_plus_step_soft_scores_stay_small_without_step_std():
    """Soft GRM scores that differ by .02 in a group move the advantage by lam * .01 by default;
    with step_scale_std they become full-size (+-lam * 0.707) — why the default is off."""
    steps = torch.tensor([[0.80, 1.0, 1.0], [0.82, 1.0, 1.0]])
    kw = dict(outcome_rewards=torch.tensor([1.0, 0.0]), step_rewards=steps, correct=torch.tensor([True, False]),
              token_step=TOKEN_STEP[:2], group_size=2, lam=0.5, critical_weight=1.0, clamp=None, scale_std=False)
    adv = compute_step_advantages("outcome_plus_step", **kw)
    assert adv[0, 0].item() == pytest.approx(0.5 - 0.5 * 0.01, abs=1e-6)
    assert adv[1, 0].item() == pytest.approx(-0.5 + 0.5 * 0.01, abs=1e-6)
    scaled = compute_step_advantages("outcome_plus_step", step_scale_std=True, eps=0.0, **kw)
    # centred +-.01, group std (unbiased) .01414 -> +-.7071
    assert scaled[0, 0].item() == pytest.approx(0.5 - 0.5 * math.sqrt(0.5), abs=1e-4)
