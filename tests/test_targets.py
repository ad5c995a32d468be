"""Training targets (data.target): the label parser on hand-made strings, the prompts per target,
and evaluation records parsed by the target."""
import math

import pytest

from taosr.errors import ConfigError
from taosr.eval.generation import make_record
from taosr.eval.metrics import compute_metrics
from taosr.labels import STEP_KEYS
from taosr.prompts import INSTRUCTION, LABEL_INSTRUCTION, PROMPT_TEXTS, policy_prompt, policy_prompt_text
from taosr.reasoning.format import parse_reasoning, render_reasoning
from taosr.reasoning.targets import TARGETS, get_target, parse_label, render_label
from taosr.schema import Example, Item

EX = Example(query="running shoes not nike", item=Item(title="Adidas Run 3 Shoes", brand="adidas", category="shoes"),
             label=4, query_type="negation", id="t-1",
             steps={"query": "running shoes; brand not nike", "item": "running shoes; brand adidas",
                    "category": "running shoes vs running shoes => exact",
                    "attribute": "brand not nike vs brand adidas => satisfied", "judgment": "exact + satisfied => excellent"},
             annotations={"category": "exact", "attribute": "satisfied"})


# ---------------------------------------------------------------- the label parser
@pytest.mark.parametrize("text, label, span", [
    ("Label: 3", 3, (0, 8)),
    ("Label: 1\n", 1, (0, 8)),
    ("  Label:   4  ", 4, (0, 14)),
    ("\n\nLabel:2\n \n", 2, (2, 9)),
])
def test_label_line_alone_is_read(text, label, span):
    p = parse_label(text)
    assert (p.label, p.label_span, p.format_error, p.error) == (label, span, False, None)
    assert p.steps == {} and p.spans == {}


@pytest.mark.parametrize("text, label, reason", [
    ("Label: 3\nbecause the brand matches", 3, "text besides the label line: 'because the brand matches'"),
    ("I think so.\nLabel: 2", 2, "text besides the label line: 'I think so.'"),
    ("Label: 3 related", None, "label '3 related' is not a tier 1-4"),
    ("Label: 3\nLabel: 4", 3, "label given twice"),
    ("Label: 5", None, "label '5' is not a tier 1-4"),
    ("Label: \u00b2", None, "label '\u00b2' is not a tier 1-4"),  # "²".isdigit(), and int("²") raised
    ("Label: \u2462", None, "label '\u2462' is not a tier 1-4"),
    ("Label: 0", None, "label '0' is not a tier 1-4"),
    ("Label:", None, "label '' is not a tier 1-4"),
    ("label: 3", None, "missing label line; text besides the label line: 'label: 3'"),
    ("4", None, "missing label line; text besides the label line: '4'"),
    ("", None, "empty completion: no label line"),
    (" \n\n ", None, "empty completion: no label line"),
])
def test_anything_else_is_a_format_error_with_its_reason(text, label, reason):
    p = parse_label(text)
    assert p.format_error and p.error == reason
    assert p.label == label and p.steps == {}


def test_label_parser_never_raises_on_non_text():
    p = parse_label(None)
    assert p.format_error and p.error == "not text: NoneType" and p.label is None


def test_full_reasoning_is_not_a_label_completion():
    """A reasoning completion read by the label target: the label is read, the steps are extra text."""
    p = parse_label(render_reasoning(EX.steps, 4))
    assert p.label == 4 and p.format_error and p.error.startswith("text besides the label line: 'Query understanding:")


@pytest.mark.parametrize("tier", [1, 2, 3, 4])
def test_render_then_parse_round_trips(tier):
    text = render_label(tier)
    assert text == f"Label: {tier}"
    assert parse_label(text).label == tier and not parse_label(text).format_error
    # the reasoning parser reads the same line as a label with every step missing
    assert parse_reasoning(text).label == tier and parse_reasoning(text).format_error


def test_render_label_refuses_a_non_tier():
    with pytest.raises(ValueError, match="not a tier 1-4"):
        render_label(5)


# ---------------------------------------------------------------- the registry
def test_targets_are_a_registry_with_their_prompt_text():
    assert TARGETS.names() == ["reasoning", "label"] == list(PROMPT_TEXTS)
    reasoning, label = get_target("reasoning"), get_target("label")
    assert reasoning.has_steps and not label.has_steps
    assert reasoning.parse is parse_reasoning and label.parse is parse_label
    assert reasoning.gold(EX) == render_reasoning(EX.steps, 4) and label.gold(EX) == "Label: 4"
    no_steps = Example(query="q", item=Item(title="t"), label=2)
    assert reasoning.gold(no_steps) is None and label.gold(no_steps) == "Label: 2"
    assert reasoning.prompt.instruction == INSTRUCTION and label.prompt.instruction == LABEL_INSTRUCTION
    with pytest.raises(ConfigError, match=r"^data.target: 'cot' is unknown; expected one of reasoning, label$"):
        get_target("cot")


# ---------------------------------------------------------------- prompts
def test_reasoning_prompt_is_unchanged_and_label_prompt_asks_for_the_label():
    expected = ("Query: running shoes not nike\nProduct: Adidas Run 3 Shoes\nBrand: adidas\nCategory: shoes\n"
                "Reasoning:\n")
    assert policy_prompt_text(EX) == expected == policy_prompt(EX) == policy_prompt_text(EX, target="reasoning")
    assert policy_prompt_text(EX, instruction=True) == INSTRUCTION + "\n" + expected
    label = policy_prompt_text(EX, target="label")
    assert label == expected.replace("Reasoning:\n", "Answer:\n") == policy_prompt(EX, target="label")
    chat = policy_prompt_text(EX, instruction=True, target="label")
    assert chat.startswith(LABEL_INSTRUCTION + "\nQuery: ") and "'Label: N'" in LABEL_INSTRUCTION
    with pytest.raises(ConfigError, match="data.target: 'cot' is unknown"):
        policy_prompt_text(EX, target="cot")


# ---------------------------------------------------------------- evaluation records
def test_records_keep_their_keys_and_label_records_have_no_step_verdicts():
    text = render_reasoning(EX.steps, 4)
    rec = make_record(EX, text, 0)
    assert rec == make_record(EX, text, 0, target="reasoning")
    assert rec["step_verdicts"] == {"query": None, "item": None, "category": 1.0, "attribute": 1.0, "judgment": None}
    lab = make_record(EX, "Label: 4", 0, target="label")
    assert set(lab) == set(rec)
    assert (lab["pred"], lab["format_error"], lab["error"], lab["reasoning"], lab["steps"]) == (4, False, None, "Label: 4", {})
    assert lab["step_verdicts"] == {k: None for k in STEP_KEYS}  # annotated steps are not judged: no steps
    # the same text under the reasoning target: every step missing, the covered ones judged wrong
    assert make_record(EX, "Label: 4", 0)["step_verdicts"]["category"] == 0.0


def test_label_metrics_have_nan_step_metrics_and_a_finite_macro_f1():
    exs = [Example(query=f"q{i}", item=Item(title="t"), label=t, annotations={"category": "exact"})
           for i, t in enumerate([4, 3, 2, 1, 4, 1])]
    outs = ["Label: 4", "Label: 3", "Label: 1", "Label: 1", "Label: 9", "oops"]
    m = compute_metrics([make_record(e, o, i, target="label") for i, (e, o) in enumerate(zip(exs, outs))])
    assert m["accuracy"] == pytest.approx(3 / 6) and m["format_error_rate"] == pytest.approx(2 / 6)
    assert math.isfinite(m["macro_f1"]) and 0 < m["macro_f1"] < 1
    assert math.isnan(m["step_accuracy"]) and math.isnan(m["hallucination_rate"])
