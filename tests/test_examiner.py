"""Hybrid examination: hand-computed combinations of verifier and GRM step scores."""
import pytest
import torch

from taosr.errors import ConfigError
from taosr.rl.examiner import (EXAMINER_MODES, SOURCE_BOTH, SOURCE_GRM, SOURCE_MISSING, SOURCE_NONE, SOURCE_VERIFIER,
                               ExaminerSpec, combine_step_rewards, examiner_stats, hard_verdicts)

N = float("nan")
# two completions x 3 steps; verifier covers some steps (NaN = no annotation)
VER = torch.tensor([[1.0, N, 0.0], [N, N, 1.0]])
GRM = torch.tensor([[0.2, 0.9, 0.6], [0.7, N, 0.4]])   # NaN: the GRM did not score it
PRESENT = torch.tensor([[True, True, True], [True, True, False]])  # row 1 lacks its last step


def test_verifier_then_grm():
    r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("verifier_then_grm"))
    # row 0: verifier 1.0 | GRM .9 (uncovered) | verifier 0.0 ; row 1: GRM .7 | nobody -> .5 | missing -> 0
    assert torch.allclose(r, torch.tensor([[1.0, 0.9, 0.0], [0.7, 0.5, 0.0]]))
    assert src.tolist() == [[SOURCE_VERIFIER, SOURCE_GRM, SOURCE_VERIFIER], [SOURCE_GRM, SOURCE_NONE, SOURCE_MISSING]]


def test_grm_only_and_verifier_only():
    r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("grm"))
    assert torch.allclose(r, torch.tensor([[0.2, 0.9, 0.6], [0.7, 0.5, 0.0]]))
    r, src = combine_step_rewards(VER, None, PRESENT, ExaminerSpec("verifier", uncovered_value=0.5))
    assert torch.allclose(r, torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.5, 0.0]]))
    assert src[1].tolist() == [SOURCE_NONE, SOURCE_NONE, SOURCE_MISSING]


def test_weighted():
    r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("weighted", verifier_weight=0.75))
    # both judged: .75*1 + .25*.2 = .8 ; .75*0 + .25*.6 = .15 ; GRM only: .9, .7
    assert torch.allclose(r, torch.tensor([[0.8, 0.9, 0.15], [0.7, 0.5, 0.0]]))
    assert src[0].tolist() == [SOURCE_BOTH, SOURCE_GRM, SOURCE_BOTH]


def test_stats_shares_and_disagreement():
    _, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("verifier_then_grm"))
    s = examiner_stats(VER, GRM, src, PRESENT)
    # 5 present steps: verifier judged 2, GRM 2; both scored steps (0,0) and (0,2): 1 vs .2 disagree, 0 vs .6 disagree
    assert s["steps/verifier_share"] == pytest.approx(2 / 5)
    assert s["steps/grm_share"] == pytest.approx(2 / 5)
    assert s["steps/disagreement"] == 1.0
    assert s["steps/missing"] == 1.0


def test_bad_modes():
    with pytest.raises(ConfigError, match=r"^model.init_args.examiner.mode: 'vote' is unknown; expected one of "
                                          r"verifier_then_grm, grm, verifier, weighted$"):
        combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("vote"))
    with pytest.raises(ConfigError, match="'vote' is unknown"):
        ExaminerSpec("vote").check()
    with pytest.raises(ValueError, match="needs a GRM"):
        combine_step_rewards(VER, None, PRESENT, ExaminerSpec("grm"))
    with pytest.raises(ValueError, match="needs a GRM"):
        combine_step_rewards(VER, None, PRESENT, ExaminerSpec("weighted"))
    assert [m for m in EXAMINER_MODES if EXAMINER_MODES.get(m).needs_grm] == ["grm", "weighted"]
    assert [m for m in EXAMINER_MODES if not EXAMINER_MODES.get(m).uses_grm] == ["verifier"]


def test_unscored_inputs_stay_unscored():
    """NaN inputs (no annotation, no GRM score) never leak into rewards: every reward is a number,
    uncovered steps get ``uncovered_value`` and keep source NONE."""
    for mode in ("verifier_then_grm", "grm", "verifier", "weighted"):
        r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec(mode, uncovered_value=0.25))
        assert not torch.isnan(r).any(), mode
        assert r[1, 1].item() == 0.25 and src[1, 1].item() == SOURCE_NONE, mode  # nobody scored (1, 1)


def test_hard_verdicts():
    """Verifier 1/0 as is, soft scores thresholded at 0.5, no verdict where nobody judged."""
    r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("verifier_then_grm"))
    v = hard_verdicts(r, src)
    # row 0: verifier 1 | GRM .9 -> 1 | verifier 0 ; row 1: GRM .7 -> 1 | nobody | missing
    assert v[0].tolist() == [1.0, 1.0, 0.0]
    assert v[1, 0].item() == 1.0 and torch.isnan(v[1, 1:]).all()
    r, src = combine_step_rewards(VER, GRM, PRESENT, ExaminerSpec("weighted", verifier_weight=0.75))
    assert hard_verdicts(r, src)[0].tolist() == [1.0, 1.0, 0.0]  # .8, .9 (GRM only), .15


def test_a_missing_grm_is_named_under_its_own_key_when_the_module_is_built(tmp_path):
    """Before: the GRM was loaded at setup (after W&B started and the policy loaded) and the error
    named model.name_or_path."""
    from taosr.methods.srpo import SRPOModule

    with pytest.raises(ConfigError, match=r"^model.init_args.grm_path: '.*nope/export' does not exist \(a GRM export"):
        SRPOModule(grm_path=str(tmp_path / "nope" / "export"))
    SRPOModule(grm_path=str(tmp_path / "nope" / "export"), examiner=ExaminerSpec("verifier"))  # not used: no check
