"""Render -> parse round trips, malformed model output, token spans per step."""
import pytest

from taosr.data.synth import SynthConfig, generate
from taosr.labels import STEP_KEYS
from taosr.reasoning.format import conclusion, parse_reasoning, render_reasoning, token_step_index


@pytest.fixture(scope="module")
def examples():
    return generate(SynthConfig(n_train=120, n_val=0, n_test=0, seed=1))["train"]


def test_round_trip_on_gold(examples):
    for ex in examples:
        p = parse_reasoning(render_reasoning(ex.steps, ex.label))
        assert not p.format_error, p.error
        assert p.label == ex.label
        assert p.steps == ex.steps
        assert p.conclusions == {k: conclusion(v) for k, v in ex.steps.items()}


def test_label_first_mode(examples):
    ex = examples[0]
    text = render_reasoning(ex.steps, ex.label, label_first=True)
    assert text.startswith("Label:")
    p = parse_reasoning(text, label_first=True)
    assert not p.format_error and p.label == ex.label


@pytest.mark.parametrize("text,reason", [
    ("", "missing steps"),
    ("Label: 4", "missing steps"),
    ("complete gibberish without structure", "unreadable line"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent", "missing label"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 7", "not a tier"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: four", "not a tier"),
    ("Item understanding: b\nQuery understanding: a\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 4", "out of order"),
    ("Query understanding: a\nQuery understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: ok\nJudgment: x\nLabel: 4", "repeated"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 4\nLabel: 3", "after the label"),
    ("Query understanding: a\nItem understanding: \nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 4", "empty"),
])
def test_malformed_never_raises(text, reason):
    p = parse_reasoning(text)
    assert p.format_error
    assert reason in p.error


def test_non_text_input():
    p = parse_reasoning(None)  # type: ignore[arg-type]
    assert p.format_error and p.label is None


def test_partial_output_keeps_readable_steps():
    p = parse_reasoning("Query understanding: shoes\nItem understanding: shoes; brand x\nCategory mat")
    assert p.format_error and set(p.steps) == {"query", "item"}
    assert p.missing_steps == ["category", "attribute", "judgment"]


class CharTokenizer:
    """One token per character: decode(ids) is exact, so spans are easy to check by hand."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_token_step_index_char_level(examples):
    text = render_reasoning(examples[0].steps, examples[0].label)
    ids = [ord(c) for c in text]
    idx = token_step_index(ids, CharTokenizer())
    lines = text.split("\n")
    pos = 0
    for k, line in enumerate(lines):
        want = k if k < len(STEP_KEYS) else len(STEP_KEYS)
        assert set(idx[pos:pos + len(line)]) == {want}
        pos += len(line) + 1
    assert len(idx) == len(ids)


def test_token_step_index_missing_steps():
    text = "Query understanding: a\nJudgment: excellent\nLabel: 4"
    idx = token_step_index([ord(c) for c in text], CharTokenizer())
    assert set(idx) == {0, 4, 5}
