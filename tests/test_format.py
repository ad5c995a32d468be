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
    # the label line is one tier: a hedge or a note is not read as its first token; a Unicode digit
    # ("²".isdigit() is True, int("²") raised) is no tier
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 4 or 3", "'4 or 3' is not a tier"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: 4 (excellent)", "not a tier"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: \u00b2", "not a tier"),
    ("Query understanding: a\nItem understanding: b\nCategory match: exact\nAttribute match: satisfied\nJudgment: excellent\nLabel: \u0663", "not a tier"),
])
def test_malformed_never_raises(text, reason):
    p = parse_reasoning(text)
    assert p.format_error
    assert reason in p.error
    if "not a tier" in reason:
        assert p.label is None


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


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, examples):
    """The presets' byte-level BPE tokenizer, trained on rendered reasoning (as the micro preset)."""
    from taosr.models.tokenizer import train_bpe_tokenizer

    texts = [f"{ex.query} {ex.item.title}\n" + render_reasoning(ex.steps, ex.label) for ex in examples]
    return train_bpe_tokenizer(texts, 400, str(tmp_path_factory.mktemp("bpe")))


class CountingDecodes:
    """Wraps a tokenizer and counts decode calls (the old algorithm decodes every prefix)."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def decode(self, *a, **kw):
        self.calls += 1
        return self.tok.decode(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _byte_piece_id(tok, byte: int) -> int:
    from taosr.reasoning.format import _byte_level_alphabet

    char = {b: c for c, b in _byte_level_alphabet().items()}[byte]
    return tok.convert_tokens_to_ids(char)


def test_token_char_ends_offsets_equal_prefix_decoding(bpe, examples):
    """The linear byte-offset path gives what decoding every prefix gives, on gold reasoning,
    random token sequences (specials, stray bytes, invalid UTF-8), multi-byte characters and a
    character split over two byte tokens."""
    import random

    from taosr.reasoning.format import _token_char_ends_by_prefix, token_char_ends

    rng = random.Random(0)
    cases = [bpe.encode(render_reasoning(ex.steps, ex.label), add_special_tokens=False) for ex in examples[:40]]
    cases += [[rng.randrange(len(bpe)) for _ in range(rng.randrange(1, 60))] for _ in range(40)]
    cases += [bpe.encode("Query understanding: café ☕ naïve | ok\nLabel: 4", add_special_tokens=False) + [bpe.eos_token_id]]
    a = bpe.encode("Judgment: a", add_special_tokens=False)
    split = a + [_byte_piece_id(bpe, 0xC3), _byte_piece_id(bpe, 0xA9)] + bpe.encode("b", add_special_tokens=False)
    cases.append(split)  # "é" as two byte tokens: the first ends inside the character
    for ids in cases:
        assert token_char_ends(ids, bpe) == _token_char_ends_by_prefix(ids, bpe), ids
    ends = token_char_ends(split, bpe)
    assert ends[-3:] == [ends[-4], ends[-4] + 1, ends[-4] + 2]  # mid-character: no progress yet
    # the step map is unchanged too (old path: prefix decoding)
    for ex in examples[:10]:
        text = render_reasoning(ex.steps, ex.label)
        ids = bpe.encode(text, add_special_tokens=False)
        old = [(lambda last: next((STEP_KEYS.index(k) for k in STEP_KEYS if k in p.spans and
                                   p.spans[k][0] <= last < p.spans[k][1] + 1), len(STEP_KEYS)))(e - 1)
               for p in [parse_reasoning(text)] for e in _token_char_ends_by_prefix(ids, bpe)]
        assert token_step_index(ids, bpe) == old


def test_token_char_ends_is_linear_on_invalid_utf8(bpe):
    """A sampled stray byte token leaves invalid UTF-8 (a fifth of the embedded default's rollout rows):
    the incremental decoder gives what decoding every prefix gives, with one decode (it decoded every
    prefix: quadratic)."""
    import random

    from taosr.reasoning.format import _token_char_ends_by_prefix, token_char_ends

    rng = random.Random(1)
    stray = [_byte_piece_id(bpe, b) for b in range(0x80, 0x100)]  # continuation and lead bytes
    words = bpe.encode("Item understanding: café ☕ mat | ok", add_special_tokens=False)
    for _ in range(300):
        ids = [rng.choice(stray) if rng.random() < 0.4 else rng.choice(words + [rng.randrange(len(bpe))])
               for _ in range(rng.randrange(1, 40))]
        counting = CountingDecodes(bpe)
        assert token_char_ends(ids, counting) == _token_char_ends_by_prefix(ids, bpe), ids
        assert counting.calls == 1
    lone = words[:3] + [_byte_piece_id(bpe, 0xA9)] + words[3:5]  # a continuation byte alone: one U+FFFD
    assert "\ufffd" in bpe.decode(lone) and token_char_ends(lone, bpe) == _token_char_ends_by_prefix(lone, bpe)


def test_token_step_index_is_linear_for_byte_level_bpe(bpe, examples):
    """One decode for the whole completion instead of one per token."""
    text = "\n".join(render_reasoning(ex.steps, ex.label) for ex in examples[:5])
    ids = bpe.encode(text, add_special_tokens=False)
    assert len(ids) > 200
    counting = CountingDecodes(bpe)
    token_step_index(ids, counting, parse_reasoning(text), text)
    assert counting.calls == 1
    fallback = CountingDecodes(bpe)
    from taosr.reasoning.format import _token_char_ends_by_prefix

    _token_char_ends_by_prefix(ids, fallback)
    assert fallback.calls == len(ids)
