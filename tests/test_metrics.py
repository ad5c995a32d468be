"""Verifier and evaluation metrics on hand-made records (arithmetic in the comments)."""
import math

import pytest

from taosr.data.synth import SynthConfig, generate
from taosr.eval.metrics import compute_metrics, confusion_matrix, format_table
from taosr.reasoning.format import parse_reasoning, render_reasoning
from taosr.reasoning.verifier import step_verdicts_to_tensor, verifier_coverage, verify_steps

ALL_RIGHT = {"query": 1.0, "item": 1.0, "category": 1.0, "attribute": 1.0, "judgment": 1.0}


def rec(gold, pred, qt="brand", verdicts=None, fmt=False):
    return {"gold": gold, "pred": pred, "query_type": qt, "format_error": fmt, "step_verdicts": verdicts or {}}


@pytest.fixture(scope="module")
def examples():
    return generate(SynthConfig(n_train=50, n_val=0, n_test=0, seed=2, train_annotation_share=1.0))["train"]


def test_verifier_on_gold_reasoning(examples):
    for ex in examples:
        assert verify_steps(parse_reasoning(render_reasoning(ex.steps, ex.label)), ex.annotations) == ALL_RIGHT


def test_verifier_fact_order_corruption_missing_and_uncovered():
    ann = {"query": "running shoes (footwear); brand not nike; color red", "category": "exact", "judgment": "excellent"}
    text = ("Query understanding: running shoes (footwear); color red; brand not nike | reordered\n"
            "Item understanding: running shoes (footwear); brand asics\nCategory match: sibling\n"
            "Attribute match: satisfied\nLabel: 4")
    v = verify_steps(parse_reasoning(text), ann)
    # query: same facts in another order -> right; category: sibling != exact -> wrong;
    # judgment: missing from the output -> wrong; item/attribute: no annotation -> None
    assert v == {"query": 1.0, "item": None, "category": 0.0, "attribute": None, "judgment": 0.0}
    assert verify_steps(parse_reasoning(text), None) == {k: None for k in ALL_RIGHT}
    assert verifier_coverage([v]) == pytest.approx(3 / 5)
    vals, covered = step_verdicts_to_tensor([v])
    assert covered.tolist() == [[True, False, True, False, True]]
    assert vals[0, 0].item() == 1.0 and math.isnan(vals[0, 1].item())


def test_perfect_predictions():
    m = compute_metrics([rec(t, t, verdicts=ALL_RIGHT) for t in (4, 3, 2, 1)])
    assert m["accuracy"] == m["macro_f1"] == m["good_f1"] == m["step_accuracy"] == 1.0
    assert m["hallucination_rate"] == 0.0 and m["format_error_rate"] == 0.0


def test_mixed_with_unparseable():
    recs = [rec(4, 4), rec(4, 3), rec(3, 3), rec(2, None, fmt=True), rec(1, 1), rec(1, 2)]
    m = compute_metrics(recs)
    # accuracy 3/6
    assert m["accuracy"] == pytest.approx(0.5)
    # tier 4: tp1 fp0 fn1 -> P1 R.5 F 2/3; tier 3: tp1 fp1 fn0 -> 2/3; tier 2: tp0 fp1 fn1 -> 0;
    # tier 1: tp1 fp0 fn1 -> 2/3; macro = (2/3*3 + 0)/4 = .5
    assert m["f1/excellent"] == pytest.approx(2 / 3) and m["f1/mismatch"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.5)
    # Good: gold G G G B B B; pred G G G (unparseable, gold bad -> counted as G) B B -> tp3 fp1 fn0 -> 6/7
    assert m["good_f1"] == pytest.approx(6 / 7, abs=1e-6)
    assert m["format_error_rate"] == pytest.approx(1 / 6)
    assert math.isnan(m["step_accuracy"]) and math.isnan(m["hallucination_rate"])
    cm, bad = confusion_matrix(recs)
    assert cm[0] == [1, 1, 0, 0] and cm[3] == [0, 0, 1, 1] and bad == [0, 0, 1, 0]


def test_absent_tier_is_left_out_of_macro():
    m = compute_metrics([rec(4, 4), rec(1, 1)])
    assert m["macro_f1"] == 1.0  # tiers 3 and 2 appear nowhere: not averaged in
    assert math.isnan(m["f1/related"]) and math.isnan(m["f1/mismatch"]) and m["f1/excellent"] == 1.0  # (was 0.0)


def test_per_type_long_tail_step_accuracy_and_hallucination():
    wrong_step = dict(ALL_RIGHT, attribute=0.0)
    recs = [rec(4, 4, "brand", ALL_RIGHT), rec(2, 4, "negation", ALL_RIGHT),     # all steps right, label wrong
            rec(3, 3, "qa", wrong_step), rec(1, 1, "qa", {"category": 1.0})]     # last: only one step covered
    m = compute_metrics(recs)
    # covered verdicts: 5 + 5 + 4 right of 5 + 1 -> 15/16
    assert m["step_accuracy"] == pytest.approx(15 / 16)
    assert m["step_accuracy/attribute"] == pytest.approx(2 / 3)
    # fully covered: first three; hallucinated: the negation one -> 1/3
    assert m["hallucination_rate"] == pytest.approx(1 / 3)
    assert m["by_type/negation/accuracy"] == 0.0 and m["by_type/qa/accuracy"] == 1.0
    assert m["by_type/brand/n"] == 1 and m["long_tail/n"] == 3
    assert m["long_tail/accuracy"] == pytest.approx(2 / 3)
    table = format_table(m)
    assert "| negation | 1 |" in table and "| long tail | 3 |" in table


def test_verifier_reduces_gold_annotation_to_its_conclusion():
    from taosr.reasoning.verifier import step_matches

    # user-supplied gold may carry evidence ("... => x") or a note ("x | why"): only the conclusion counts
    assert step_matches("category", "exact | same leaf", "leaf running shoes => exact | both are shoes")
    assert not step_matches("category", "sibling", "leaf running shoes => exact")
    assert step_matches("query", "running shoes; colour black; brand not nike", "running shoes; brand not nike; colour black")


def test_verifier_reads_full_width_text():
    """Full-width letters and separators (NFKC) read as ASCII (every fact failed); facts compare as a set."""
    from taosr.reasoning.verifier import step_matches

    gold = "running shoes (sports footwear); brand not nike"
    assert step_matches("query", "ｒｕｎｎｉｎｇ ｓｈｏｅｓ (sports footwear)； brand not nike ｜ why", gold)
    assert step_matches("query", "running shoes (sports footwear); brand not nike", gold)
    assert step_matches("query", "running shoes (sports footwear); brand not nike; brand not nike", gold)  # a set
    assert step_matches("category", "hammer vs sofa => ｅｘａｃｔ", "x vs x => exact")  # the conclusion only
