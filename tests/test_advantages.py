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


def test_outcome_plus_step_centres_over_the_completions_that_wrote_the_step():
    """Group of 4, one step: rewards 1, 1, 0 and a missing step (reward 0). Centred over the three
    that wrote it: +1/3, +1/3, -2/3, and 0 for the missing one (the mean over all four, 0.5, gave the
    two right ones +0.5 each, a bonus for writing the step at all). With every step present the
    numbers are the former ones exactly; with step std the std is over the present ones."""
    from taosr.rl.advantages import step_centred

    r = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    here = torch.tensor([[True], [True], [True], [False]])
    assert step_centred(r, 4, here).view(-1).tolist() == pytest.approx([1 / 3, 1 / 3, -2 / 3, 0.0])
    assert step_centred(r, 4).view(-1).tolist() == pytest.approx([0.5, 0.5, -0.5, -0.5])
    assert torch.equal(step_centred(STEPS, 2, torch.ones_like(STEPS, dtype=torch.bool)), step_centred(STEPS, 2))
    # std over the three present (unbiased: sqrt((1/9 + 1/9 + 4/9) / 2) = 0.5774)
    assert step_centred(r, 4, here, scale_std=True, eps=0.0).view(-1).tolist() == \
        pytest.approx([0.5774, 0.5774, -1.1547, 0.0], abs=1e-4)
    # fewer than two present, or the present ones equal: no step signal
    one = torch.tensor([[True], [False], [False], [False]])
    assert step_centred(r, 4, one).abs().sum() == 0
    assert step_centred(torch.tensor([[1.0], [1.0], [0.0], [0.0]]), 4,
                        torch.tensor([[True], [True], [False], [False]])).abs().sum() == 0
    a = compute_step_advantages("outcome_plus_step", outcome_rewards=torch.zeros(4), step_rewards=r,
                                correct=torch.zeros(4, dtype=torch.bool), token_step=torch.tensor([[0, 1]] * 4),
                                group_size=4, lam=1.0, critical_weight=1.0, clamp=None, step_present=here)
    assert a[:, 0].tolist() == pytest.approx([1 / 3, 1 / 3, -2 / 3, 0.0])


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


def _outlier_group(G=8):
    """One group of G=8 with a lone correct completion: |A_out| = 7/sqrt(8) = 2.47 > clamp 2.0."""
    outcome = torch.tensor([1.2] + [0.2] * (G - 1))
    correct = torch.tensor([True] + [False] * (G - 1))
    g = torch.Generator().manual_seed(0)
    steps = (torch.rand(G, 3, generator=g) > 0.5).float()
    return dict(outcome_rewards=outcome, step_rewards=steps, correct=correct,
                token_step=torch.tensor([[0, 0, 1, 2, 3, -1]] * G), group_size=G)


@pytest.mark.parametrize("scale_std", [True, False])
def test_lam0_and_outcome_estimator_are_grpo_exactly_with_an_outlier(scale_std):
    """SRPO with lam = 0 (clamp 2.0 as in configs/srpo.yaml) and with the `outcome` estimator give
    GRPO's advantages exactly; the clamp used to cut the lone outlier's +2.47 to +2.00."""
    kw = _outlier_group()
    grpo = group_advantages(kw["outcome_rewards"], 8, scale_std=scale_std)
    if scale_std:
        assert grpo[0].item() == pytest.approx(7 / math.sqrt(8), abs=1e-3)
    want = torch.where(kw["token_step"] >= 0, grpo[:, None].expand(-1, 6), torch.zeros(8, 6))
    lam0 = compute_step_advantages("outcome_plus_step", lam=0.0, clamp=2.0, scale_std=scale_std, **kw)
    outcome = compute_step_advantages("outcome", scale_std=scale_std, **kw)
    assert torch.equal(lam0, want) and torch.equal(outcome, want)
    # process_sum with flat step rewards is GRPO too, clamp or not
    flat = {**kw, "step_rewards": torch.ones(8, 3)}
    assert torch.equal(compute_step_advantages("process_sum", clamp=2.0, scale_std=scale_std, **flat), want)


def test_clamp_bounds_the_step_term_never_the_outcome():
    kw = _outlier_group()
    a_out = group_advantages(kw["outcome_rewards"], 8)[0].item()  # 2.47
    adv = compute_step_advantages("outcome_plus_step", lam=10.0, clamp=2.0, critical_weight=1.0, **kw)
    # the outlier's rows lie within [-2, 2.47]: a step penalty may lower them, nothing raises them above A_out
    assert adv[0].max().item() == pytest.approx(a_out) and adv[0].min().item() >= -2.0
    assert adv[1:].abs().max().item() <= 2.0 + 1e-6


def test_critical_steps_use_hard_verdicts_and_the_sign_of_the_centred_score():
    """The issue's case: inside a wrong answer, a step the GRM scores 0.6 (judged right) but below its
    group's mean must not have its penalty doubled; a right step above the mean keeps its bonus doubled."""
    # one group of 3 (all wrong answers so A_out = 0), one step: GRM scores .6, .9, .9 (mean .8)
    steps = torch.tensor([[0.6], [0.9], [0.9]])
    verdict = (steps >= 0.5).float()
    kw = dict(outcome_rewards=torch.zeros(3), step_rewards=steps, correct=torch.zeros(3, dtype=torch.bool),
              token_step=torch.tensor([[0, 1]] * 3), group_size=3, lam=1.0, critical_weight=2.0, clamp=None,
              step_verdict=verdict)
    adv = compute_step_advantages("outcome_plus_step", **kw)
    assert adv[0, 0].item() == pytest.approx(0.6 - 0.8)              # weight 1: not doubled (was -0.4)
    assert adv[1, 0].item() == pytest.approx(2 * (0.9 - 0.8))        # right step above the mean: doubled
    centred = steps - steps.mean(0, keepdim=True)
    assert critical_step_mask(verdict, kw["correct"], centred).tolist() == [[False], [True], [True]]
    # no verdict (NaN: uncovered step in verifier mode) is never critical
    assert critical_step_mask(torch.tensor([[float("nan")]]), torch.tensor([True])).tolist() == [[False]]


def test_process_sum_follows_the_completions_own_step_order():
    """A completion that writes its steps out of order (malformed, still parsed): a token's advantage
    sums its own step and the steps that come AFTER it in that completion, not in canonical order."""
    steps = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    kw = dict(outcome_rewards=torch.tensor([1.0, 0.0]), step_rewards=steps, correct=torch.tensor([True, False]),
              group_size=2, outcome_weight=0.0, scale_std=False, clamp=None)
    canonical = compute_step_advantages("process_sum", token_step=torch.tensor([[0, 1, 2, 3]] * 2), **kw)
    # row 0 writes step 2 first, then 0, then 1: token order [2, 0, 1, label]
    permuted = compute_step_advantages("process_sum", token_step=torch.tensor([[2, 0, 1, 3], [0, 1, 2, 3]]), **kw)
    # group mean .5: row 0 normalised [.5, -.5, .5]; in its own order 2, 0, 1 the suffix sums are
    # step 2: .5 + .5 - .5 = .5, step 0: .5 - .5 = 0, step 1: -.5
    assert permuted[0].tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])
    assert torch.equal(permuted[1], canonical[1])
    assert canonical[0].tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])  # canonical order: [.5, 0, .5]


def test_step_advantage_spec_passes_only_the_options_it_sets():
    from taosr.errors import ConfigError
    from taosr.rl.advantages import StepAdvantageSpec

    assert StepAdvantageSpec().options() == {}
    assert StepAdvantageSpec(name="outcome_plus_step", lam=0.0, clamp=2.0).options() == {"lam": 0.0, "clamp": 2.0}
    assert StepAdvantageSpec(name="process_sum", outcome_weight=0.5).check() is STEP_ADVANTAGES.get("process_sum")
    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.critical_weight: not an option"):
        StepAdvantageSpec(name="process_sum", critical_weight=2.0).check()
    with pytest.raises(ConfigError, match=r"^model.init_args.step_advantage.name: 'x' is unknown"):
        StepAdvantageSpec(name="x").check()


def test_outcome_reward_of_a_bare_label_with_and_without_the_format_gate():
    """A right `Label: N` without its five steps earned correct_weight (only the format bonus less
    than a full answer); with correct_needs_format it earns nothing."""
    from taosr.reasoning.format import parse_reasoning, render_reasoning
    from taosr.rl.rewards import OutcomeRewardSpec, outcome_rewards

    full = render_reasoning({k: "x" for k in ("query", "item", "category", "attribute", "judgment")}, 3)
    parsed = [parse_reasoning(t) for t in (full, "Label: 3", "Label: 2", full)]
    gold = [3, 3, 3, 2]
    plain = outcome_rewards(parsed, gold, OutcomeRewardSpec())
    assert plain["reward"].tolist() == pytest.approx([1.2, 1.0, 0.0, 0.2])
    gated = outcome_rewards(parsed, gold, OutcomeRewardSpec(correct_needs_format=True))
    assert gated["reward"].tolist() == pytest.approx([1.2, 0.0, 0.0, 0.2])
    assert gated["correct"].tolist() == [1.0, 0.0, 0.0, 0.0] and gated["format"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_process_sum_gives_a_line_outside_every_step_the_steps_after_it():
    """Tokens in no step (index K: an unreadable line before later steps) got the outcome term alone;
    by the process-sum rule they get the sum of the steps that start after them (the label line, after
    every step, still gets none)."""
    steps = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    kw = dict(outcome_rewards=torch.tensor([1.0, 0.0]), step_rewards=steps, correct=torch.tensor([True, False]),
              group_size=2, outcome_weight=0.0, scale_std=False, clamp=None)
    # row 0: a stray line (3) first, step 0, another stray line, steps 1 and 2, the label line
    adv = compute_step_advantages("process_sum", token_step=torch.tensor([[3, 0, 3, 1, 2, 3], [0, 1, 2, 3, 3, -1]]), **kw)
    # row 0 normalised [.5, -.5, .5]: suffixes step 0: .5, step 1: 0, step 2: .5
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.5, 0.0])
    assert adv[1].tolist() == pytest.approx([-0.5, 0.0, -0.5, 0.0, 0.0, 0.0])  # label, eos, padding: 0
