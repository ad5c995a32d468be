"""The offline verifier checks what an annotation states: a bare conclusion, or a whole decision
step whose evidence must match too (data.synth.annotate_evidence writes the latter)."""
from taosr.data.synth import DECISION_STEPS, SynthConfig, generate
from taosr.reasoning.format import evidence, parse_reasoning, render_reasoning
from taosr.reasoning.verifier import step_matches, verify_steps

GOLD = {"query": "hammer (tools); brand stanley", "item": "hammer (tools); brand stanley",
        "category": "hammer vs hammer; tools vs tools => exact",
        "attribute": "brand stanley vs brand stanley => satisfied",
        "judgment": "exact + satisfied => excellent"}


def _verdicts(steps: dict[str, str], annotations: dict[str, str]) -> dict:
    return verify_steps(parse_reasoning(render_reasoning(steps, 4)), annotations)


def test_evidence_is_the_set_of_parts_before_the_last_arrow():
    assert evidence("hammer vs hammer; tools vs tools => exact | same tool") == {"hammer vs hammer", "tools vs tools"}
    assert evidence(" Tools vs Tools ;hammer vs hammer. => exact") == {"hammer vs hammer", "tools vs tools"}
    assert evidence("ｈａｍｍｅｒ vs hammer => exact") == {"hammer vs hammer"}  # NFKC, as conclusions
    assert evidence("exact") is None and evidence("exact | hammer vs hammer => x") is None


def test_a_bare_conclusion_annotation_checks_the_conclusion_only():
    wrong_evidence = dict(GOLD, category="sofa vs hammer; furniture vs tools => exact")
    ann = {"category": "exact", "judgment": "excellent"}
    assert _verdicts(wrong_evidence, ann) == {"query": None, "item": None, "category": 1.0, "attribute": None,
                                              "judgment": 1.0}


def test_an_evidence_annotation_makes_a_right_conclusion_from_wrong_evidence_wrong():
    ann = {k: GOLD[k] for k in ("category", "attribute", "judgment")}
    assert _verdicts(GOLD, ann) == {"query": None, "item": None, "category": 1.0, "attribute": 1.0, "judgment": 1.0}
    bad = dict(GOLD, category="sofa vs hammer; furniture vs tools => exact",  # wrong evidence, right conclusion
               attribute="satisfied",                                          # no evidence stated
               judgment="sibling + satisfied => excellent")
    assert _verdicts(bad, ann) == {"query": None, "item": None, "category": 0.0, "attribute": 0.0, "judgment": 0.0}
    reordered = dict(GOLD, category="tools vs tools; hammer vs hammer => exact | same kind")  # order is free
    assert _verdicts(reordered, ann)["category"] == 1.0
    # the conclusion still decides first: right evidence, wrong conclusion is wrong
    assert _verdicts(dict(GOLD, category="hammer vs hammer; tools vs tools => sibling"), ann)["category"] == 0.0


def test_step_matches_without_check_evidence_is_unchanged():
    # the GRM's validation compares policy steps with the example's full gold steps by conclusion
    assert step_matches("category", "sofa vs hammer => exact", GOLD["category"])
    assert not step_matches("category", "sofa vs hammer => exact", GOLD["category"], check_evidence=True)


def test_synth_annotate_evidence_annotates_the_whole_decision_steps():
    small = dict(n_train=60, n_val=10, n_test=10, seed=3)
    plain, full = generate(SynthConfig(**small)), generate(SynthConfig(**small, annotate_evidence=True))
    n_checked = 0
    for split in plain:
        for a, b in zip(plain[split], full[split]):
            assert a.id == b.id and a.steps == b.steps and set(a.annotations or {}) == set(b.annotations or {})
            for k, v in (b.annotations or {}).items():
                want = a.steps[k] if k in DECISION_STEPS else a.annotations[k]
                assert v == want and (("=>" in v) == (k in DECISION_STEPS))
                n_checked += k in DECISION_STEPS
            assert all("=>" not in v for v in (a.annotations or {}).values())  # the default: bare conclusions
    assert n_checked > 50
    # gold reasoning passes its own evidence annotations
    ex = next(e for e in full["test"] if e.annotations)
    assert set(verify_steps(parse_reasoning(render_reasoning(ex.steps, ex.label)), ex.annotations).values()) <= {1.0, None}
