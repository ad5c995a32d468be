"""Prompt text for the policy (query + product -> reasoning) and for the GRM judge.

The policy prompt ends with a newline; the completion is what the training target asks for
(:mod:`taosr.reasoning.targets`, ``data.target``): the five-step reasoning and the label line
rendered by :mod:`taosr.reasoning.format` (``reasoning``), or the label line alone (``label``).
Each target has its instruction (given to chat-template models) and its cue line (the prompt's
last line) in :data:`PROMPT_TEXTS`. Tokenizers that ship a chat template (real instruct models)
get the prompt as the user turn and the generation prompt appended.
"""
from __future__ import annotations

from dataclasses import dataclass

from taosr.errors import ConfigError
from taosr.schema import Example

INSTRUCTION = ("Judge how relevant the product is to the search query. Reason in five steps "
               "(query understanding, item understanding, category match, attribute match, judgment), "
               "then give the label: 4 excellent, 3 related, 2 mismatch, 1 irrelevant.")
LABEL_INSTRUCTION = ("Judge how relevant the product is to the search query. Answer with the label line only, "
                     "'Label: N', where N is 4 excellent, 3 related, 2 mismatch, 1 irrelevant.")


@dataclass(frozen=True)
class PromptText:
    """What a training target adds to the policy prompt: the instruction (chat-template models
    only) and the cue line that ends the prompt."""
    instruction: str
    cue: str


# One entry per training target (the names of taosr.reasoning.targets.TARGETS).
PROMPT_TEXTS = {
    "reasoning": PromptText(INSTRUCTION, "Reasoning:"),
    "label": PromptText(LABEL_INSTRUCTION, "Answer:"),
}


def prompt_text_for(target: str) -> PromptText:
    if target not in PROMPT_TEXTS:
        raise ConfigError(f"data.target: {target!r} is unknown; expected one of {', '.join(PROMPT_TEXTS)}")
    return PROMPT_TEXTS[target]


def item_block(ex: Example) -> str:
    it = ex.item
    lines = [f"Product: {it.title}"]
    if it.brand:
        lines.append(f"Brand: {it.brand}")
    if it.category:
        lines.append(f"Category: {it.category}")
    if it.attributes:
        lines.append("Attributes: " + "; ".join(f"{k}={v}" for k, v in sorted(it.attributes.items())))
    if it.price is not None:
        lines.append(f"Price: {it.price:.2f}")
    if it.description:  # last: the longest field, and the first the length budget cuts
        lines.append(f"Description: {it.description}")
    return "\n".join(lines)


def policy_prompt_text(ex: Example, *, instruction: bool = False, target: str = "reasoning") -> str:
    """The policy prompt for ``target``: [instruction,] query, product block, the target's cue line."""
    text = prompt_text_for(target)
    head = [text.instruction] if instruction else []
    return "\n".join(head + [f"Query: {ex.query}", item_block(ex), text.cue]) + "\n"


def apply_template(tokenizer, text: str, use_chat_template: bool | None = None) -> str:
    """Wrap ``text`` as a user turn when the tokenizer has a chat template (or when asked)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        use_chat_template = has
    if not use_chat_template:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text.rstrip("\n")}],
                                         tokenize=False, add_generation_prompt=True)


def policy_prompt(ex: Example, tokenizer=None, use_chat_template: bool | None = None,
                  target: str = "reasoning") -> str:
    chat = use_chat_template if use_chat_template is not None else bool(getattr(tokenizer, "chat_template", None))
    text = policy_prompt_text(ex, instruction=chat, target=target)
    return apply_template(tokenizer, text, chat) if tokenizer is not None else text


def encode_prompt(tok, text: str) -> list[int]:
    """Token ids of a prompt: BOS first unless the tokenizer has a chat template (whose rendered
    text already starts the sequence); no other special tokens."""
    return encode_prompts(tok, [text])[0]


def encode_prompts(tok, texts: list[str]) -> list[list[int]]:
    """:func:`encode_prompt` of each text, in one tokenizer call (a fast tokenizer runs a batch at
    once: about twice as fast as one call per text)."""
    if not texts:
        return []
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and not getattr(tok, "chat_template", None) else []
    return [bos + ids for ids in tok(list(texts), add_special_tokens=False).input_ids]
