"""The one place that renders and parses the five-step reasoning.

Text format (one line per step, then the label)::

    Query understanding: running shoes; brand not nike | the user excludes one brand
    Item understanding: running shoes; brand adidas | title names adidas running shoes
    Category match: running shoes vs running shoes => exact
    Attribute match: brand not nike vs brand adidas => satisfied
    Judgment: exact + satisfied => excellent
    Label: 4

Each step's *conclusion* is the text before `` | `` (the rest is free explanation), and after the
last ``=>`` when the step states its evidence first. The offline verifier compares conclusions
with gold annotations after :func:`normalize`.

:func:`parse_reasoning` never raises: malformed text yields ``format_error=True`` with a reason,
and whatever steps could be read are still returned (step rewards for the rest are zero).
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from taosr.labels import STEP_HEADINGS, STEP_KEYS, TIERS

SEP = " | "
LABEL_HEADING = "Label"
_HEADING_TO_KEY = {h.lower(): k for k, h in STEP_HEADINGS.items()}
_LINE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z ]*?)\s*:\s?(.*)$")
_TIER_RE = re.compile(r"[1-4]")  # ASCII only: "²".isdigit() is True, int("²") raises


def tier_of(content: str) -> int | None:
    """The tier a label line's content is (the whole of it, spaces trimmed: ``4``), else None
    (``4 or 3``, ``4 (excellent)``, ``²``, ``Excellent``)."""
    content = content.strip()
    return int(content) if _TIER_RE.fullmatch(content) else None


def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, strip trailing punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .;,")


def conclusion(content: str) -> str:
    """The verifiable part of a step: the text before the first `` | ``; when the step writes its
    evidence first (``evidence => conclusion``), the part after the last ``=>``. Normalised, after
    Unicode NFKC (full-width letters, and the full-width separators ``；`` and ``｜``, read as ASCII)."""
    head = unicodedata.normalize("NFKC", content).split("|", 1)[0]
    if "=>" in head:
        head = head.rsplit("=>", 1)[1]
    return normalize(head)


def evidence(content: str) -> frozenset[str] | None:
    """The evidence a step states before its conclusion (``hammer vs sofa; tools vs furniture =>
    different`` gives ``{"hammer vs sofa", "tools vs furniture"}``): the ``;``-separated parts
    before the last ``=>`` of the text before ``|``, each normalised, as a set (their order is not
    part of the claim). None when the step states no evidence (no ``=>``)."""
    head = unicodedata.normalize("NFKC", content).split("|", 1)[0]
    if "=>" not in head:
        return None
    return frozenset(p for p in (normalize(x) for x in head.rsplit("=>", 1)[0].split(";")) if p)


def render_step(key: str, content: str) -> str:
    return f"{STEP_HEADINGS[key]}: {content}"


def render_reasoning(steps: dict[str, str], label: int, *, label_first: bool = False) -> str:
    """Render gold steps (all five keys) and the tier. ``label_first`` is TaoSR1's deployment
    mode (label line first, then the reasoning)."""
    missing = [k for k in STEP_KEYS if k not in steps]
    if missing:
        raise ValueError(f"cannot render reasoning: missing steps {missing}")
    if int(label) not in TIERS:
        raise ValueError(f"cannot render reasoning: label {label!r} is not a tier 1-4")
    lines = [render_step(k, steps[k]) for k in STEP_KEYS]
    label_line = f"{LABEL_HEADING}: {int(label)}"
    return "\n".join([label_line, *lines] if label_first else [*lines, label_line])


@dataclass
class ParsedReasoning:
    steps: dict[str, str] = field(default_factory=dict)  # key -> step content
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> char span of the line
    label: int | None = None
    label_span: tuple[int, int] | None = None
    format_error: bool = False
    error: str | None = None

    @property
    def conclusions(self) -> dict[str, str]:
        return {k: conclusion(v) for k, v in self.steps.items()}

    @property
    def missing_steps(self) -> list[str]:
        return [k for k in STEP_KEYS if k not in self.steps]


def nonblank_lines(text: str) -> Iterator[tuple[str, int, int]]:
    """Each non-blank line of ``text`` with its character span ``(start, end)`` (newline excluded)."""
    pos = 0
    for raw in text.split("\n"):
        start, end = pos, pos + len(raw)
        pos = end + 1
        if raw.strip():
            yield raw, start, end


def not_text_error(text) -> ParsedReasoning | None:
    """The format error of a completion that is not a string (None for a string)."""
    if isinstance(text, str):
        return None
    return ParsedReasoning(format_error=True, error=f"not text: {type(text).__name__}")


def parse_reasoning(text: str, *, label_first: bool = False) -> ParsedReasoning:
    """Parse model output into steps and label. Never raises.

    A format error is flagged when a step is missing, repeated or out of order, a line is not
    ``Heading: content``, the label is missing or not 1-4, or text follows the label line
    (unless ``label_first``, TaoSR1's deployment mode where the label line comes first).
    """
    bad = not_text_error(text)
    if bad is not None:
        return bad
    out = ParsedReasoning()
    errors: list[str] = []
    order: list[str] = []
    for raw, start, end in nonblank_lines(text):
        if out.label_span is not None and not label_first:
            errors.append("text after the label line")
            break
        m = _LINE_RE.match(raw)
        if not m:
            errors.append(f"unreadable line {raw[:40]!r}")
            continue
        heading, content = m.group(1).strip().lower(), m.group(2).strip()
        if heading == LABEL_HEADING.lower():
            if out.label_span is not None:
                errors.append("label given twice")
                continue
            out.label_span = (start, end)
            out.label = tier_of(content)
            if out.label is None:
                errors.append(f"label {content[:20]!r} is not a tier 1-4")
            continue
        key = _HEADING_TO_KEY.get(heading)
        if key is None:
            errors.append(f"unknown step heading {m.group(1)[:30]!r}")
            continue
        if key in out.steps:
            errors.append(f"step {key!r} repeated")
            continue
        if not content:
            errors.append(f"step {key!r} is empty")
            continue
        out.steps[key] = content
        out.spans[key] = (start, end)
        order.append(key)
    if order != [k for k in STEP_KEYS if k in out.steps]:
        errors.append("steps out of order")
    if out.missing_steps:
        errors.append(f"missing steps {out.missing_steps}")
    if out.label_span is None:
        errors.append("missing label line")
    if errors:
        out.format_error, out.error = True, "; ".join(dict.fromkeys(errors))
    return out


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet, inverted: the printable character that stands for each byte ->
    the byte. Printable Latin-1 bytes stand for themselves; the other 68 bytes take the characters
    from U+0100 upwards, in byte order."""
    own = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    shifted = [b for b in range(256) if b not in own]
    table = {chr(b): b for b in own}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


_BYTE_OF: dict[str, int] | None = None


def _token_bytes(token_ids: list[int], tokenizer) -> list[bytes] | None:
    """The bytes each token contributes to ``decode(ids, skip_special_tokens=True)`` for a fast
    tokenizer with a byte-level decoder; None when the tokenizer is of another kind."""
    global _BYTE_OF
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    try:
        from tokenizers import decoders
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        return None
    if not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    if _BYTE_OF is None:
        _BYTE_OF = _byte_level_alphabet()
    special = set(getattr(tokenizer, "all_special_ids", ()))
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    out = []
    for i, piece in zip(token_ids, tokenizer.convert_ids_to_tokens(token_ids)):
        if i in special:
            out.append(b"")
        elif i in added:
            out.append(added[i].encode("utf-8"))
        elif piece is None or any(c not in _BYTE_OF for c in piece):
            return None
        else:
            out.append(bytes(_BYTE_OF[c] for c in piece))
    return out


def _token_char_ends_by_prefix(ids: list[int], tokenizer) -> list[int]:
    """Reference algorithm (any tokenizer, quadratic): decode every growing prefix."""
    ends, prev = [], 0
    for i in range(len(ids)):
        s = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if s.endswith("\ufffd"):  # incomplete UTF-8 sequence: no visible progress yet
            ends.append(prev)
            continue
        prev = len(s)
        ends.append(prev)
    return ends


def _char_ends_of_bytes(pieces: list[bytes]) -> tuple[list[int], str]:
    """What decoding every prefix of the joined ``pieces`` gives (:func:`_token_char_ends_by_prefix`
    with a lossy UTF-8 decode: an invalid byte is one U+FFFD, an unfinished character one at the
    end), in one pass of an incremental decoder; and the decoded text. After each piece the prefix's
    text is what the decoder has emitted plus a U+FFFD when it holds an unfinished character, so
    the piece makes progress when it holds none and the emitted text does not end in U+FFFD."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ends, parts, n, prev, last = [], [], 0, 0, ""
    for piece in pieces:
        out = dec.decode(piece)
        if out:
            parts.append(out)
            n, last = n + len(out), out[-1]
        if not dec.getstate()[0] and last != "\ufffd":
            prev = n
        ends.append(prev)
    parts.append(dec.decode(b"", final=True))
    return ends, "".join(parts)


def token_char_ends(token_ids: Sequence[int], tokenizer) -> list[int]:
    """Character offset (in the decoded completion) where each token ends; a token that ends inside
    a multi-byte character gets the offset of the previous token that ended on a character boundary.

    Byte-level BPE tokenizers (fast, ByteLevel decoder, no clean-up of spaces; the presets and
    SmolLM2/GPT-2/Llama-3 style models) take a linear path: every token's bytes from the byte-level
    alphabet, run through an incremental UTF-8 decoder (:func:`_char_ends_of_bytes`; invalid bytes,
    which a sampled byte token often leaves, included). It is used only when its text is exactly
    what ``tokenizer.decode`` gives; otherwise, and for other tokenizers, every prefix is decoded
    (exact for any prefix-stable decode, quadratic).
    """
    ids = [int(i) for i in token_ids]
    pieces = _token_bytes(ids, tokenizer)
    if pieces is not None:
        ends, text = _char_ends_of_bytes(pieces)
        if text == tokenizer.decode(ids, skip_special_tokens=True):
            return ends
    return _token_char_ends_by_prefix(ids, tokenizer)


def token_step_index(token_ids: Sequence[int], tokenizer, parsed: ParsedReasoning | None = None,
                     text: str | None = None) -> list[int]:
    """Step position (0..4) of every completion token; 5 for tokens outside any step line
    (label line, trailing text, separators before the first step).

    A token belongs to the step whose line contains the token's last character. Steps that
    are missing in a malformed completion simply have no tokens.
    """
    if text is None:
        text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    if parsed is None:
        parsed = parse_reasoning(text)
    spans = [(parsed.spans[k], STEP_KEYS.index(k)) for k in STEP_KEYS if k in parsed.spans]
    n_steps = len(STEP_KEYS)
    out = []
    for end in token_char_ends(token_ids, tokenizer):
        last = end - 1  # index of the token's last character
        idx = n_steps
        for (s, e), k in spans:
            if s <= last < e + 1:  # the newline that closes a line belongs to it
                idx = k
                break
        out.append(idx)
    return out
