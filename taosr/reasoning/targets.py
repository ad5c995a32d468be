"""Training targets (``data.target``): what the policy is taught to write after the prompt, and
how its output is read back.

- ``reasoning``: the five reasoning steps and the label line (:mod:`taosr.reasoning.format`);
  needs gold steps to train on.
- ``label``: the label line alone, ``Label: N`` -- the no-reasoning baseline, for data that has
  tiers but no reasoning steps; its parse has no steps, so step metrics are NaN and SRPO (which
  scores steps) refuses it.

Every target gives the gold completion of an example (None when the example lacks what it needs),
parses a completion into a :class:`~taosr.reasoning.format.ParsedReasoning` without raising, says
whether its completions have steps, and its prompt instruction and cue line
(:data:`taosr.prompts.PROMPT_TEXTS`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from taosr.labels import STEP_KEYS, TIERS
from taosr.prompts import PROMPT_TEXTS, PromptText
from taosr.reasoning.format import (LABEL_HEADING, ParsedReasoning, nonblank_lines, not_text_error, parse_reasoning,
                                    render_reasoning, tier_of)
from taosr.reasoning.verifier import verify_steps
from taosr.registry import Registry
from taosr.schema import Example


@dataclass(frozen=True)
class Target:
    name: str
    has_steps: bool  # completions carry reasoning steps (step verdicts, step rewards)
    gold: Callable[[Example], str | None]  # the completion to train on; None: the example lacks it
    parse: Callable[[str], ParsedReasoning]  # never raises
    # new tokens a well-formed completion fits in (None: no bound of its own); rollouts sample at most this many
    max_new_tokens: int | None = None

    @property
    def prompt(self) -> PromptText:
        """The instruction (chat-template models) and the cue line ending the prompt."""
        return PROMPT_TEXTS[self.name]

    def step_verdicts(self, parsed: ParsedReasoning, annotations: dict[str, str] | None) -> dict[str, float | None]:
        """The verifier's verdict per step; all None (not judged) when the target has no steps."""
        if not self.has_steps:
            return {k: None for k in STEP_KEYS}
        return verify_steps(parsed, annotations)


TARGETS: Registry[Target] = Registry("training target", "data.target")


def render_label(label: int) -> str:
    """The label target's completion: ``Label: N``."""
    if int(label) not in TIERS:
        raise ValueError(f"cannot render a label: {label!r} is not a tier 1-4")
    return f"{LABEL_HEADING}: {int(label)}"


_LABEL_LINE = re.compile(rf"^\s*{LABEL_HEADING}\s*:\s*(.*?)\s*$")


def parse_label(text: str) -> ParsedReasoning:
    """Read a label-target completion: exactly one line ``Label: N`` with N a tier 1-4 (whitespace
    around it and blank lines are fine). Never raises; anything else is a format error with its
    reason: no label line, a label that is not a tier, a second label line, or any other text. The
    first label line's tier is still read when other text comes with it (as :func:`parse_reasoning`
    does); ``steps`` stay empty."""
    bad = not_text_error(text)
    if bad is not None:
        return bad
    out = ParsedReasoning()
    errors: list[str] = []
    for raw, start, end in nonblank_lines(text):
        m = _LABEL_LINE.match(raw)
        if m is None:
            errors.append(f"text besides the label line: {raw.strip()[:40]!r}")
            continue
        if out.label_span is not None:
            errors.append("label given twice")
            continue
        out.label_span = (start, end)
        content = m.group(1)
        out.label = tier_of(content)
        if out.label is None:
            errors.append(f"label {content[:20]!r} is not a tier 1-4")
    if out.label_span is None:
        errors.insert(0, "empty completion: no label line" if not text.strip() else "missing label line")
    if errors:
        out.format_error, out.error = True, "; ".join(dict.fromkeys(errors))
    return out


def _gold_reasoning(ex: Example) -> str | None:
    if not ex.steps or len(ex.steps) < len(STEP_KEYS):
        return None
    return render_reasoning(ex.steps, ex.label)


TARGETS.register("reasoning", Target("reasoning", True, _gold_reasoning, parse_reasoning))
# `Label: N` and eos is 3-5 tokens in the tokenizers taosr ships or was tried with; 8 leaves room
TARGETS.register("label", Target("label", False, lambda ex: render_label(ex.label), parse_label, max_new_tokens=8))


def get_target(name: str, key: str = "data.target") -> Target:
    """The registered target ``name``; an unknown name is a ConfigError naming ``key``."""
    return TARGETS.get(name, key)
