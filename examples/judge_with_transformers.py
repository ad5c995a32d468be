"""Relevance judgments from a taosr export with plain transformers: no Lightning, no taosr run.

    python examples/judge_with_transformers.py runs/quickstart/srpo/export [--show-prompt]

An export is a Hugging Face folder (``AutoModelForCausalLM`` / ``AutoTokenizer``; vLLM serves it
too). What it needs from taosr is the prompt it was trained with: ``taosr.prompts.policy_prompt``
writes it (``Query: ...``, the product block: ``Product:``, then ``Brand:``, ``Category:``,
``Attributes: k=v; ...``, ``Price: x.xx``, ``Description:`` for the fields an item has, and the
cue ``Reasoning:``; a tokenizer with a chat template gets an instruction line and the template), and
``encode_prompt`` adds the BOS token as taosr did in training. ``--show-prompt`` prints the prompt
text, to send from another stack. The completion is five step lines and ``Label: N``
(``taosr.reasoning.format.parse_reasoning`` reads them); an export trained with ``data.target:
label`` is prompted with ``Answer:`` and writes only the label line.
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from taosr.labels import TIER_NAMES
from taosr.models.factory import export_meta
from taosr.prompts import encode_prompt, policy_prompt
from taosr.reasoning.format import parse_reasoning
from taosr.schema import Example, Item

PAIRS = [  # (query, product): fill in your own
    ("red running shoes", Item(title="Nike Air Zoom Pegasus 40 Running Shoes, Red", brand="nike",
                               category="running shoes", attributes={"color": "red"}, price=129.99)),
    ("red running shoes", Item(title="Stanley 16 oz Claw Hammer", brand="stanley", category="hammers", price=19.99)),
]


def judge(export: str, pairs: list, max_new_tokens: int = 128) -> list[tuple[str, str]]:
    """``(prompt, completion)`` of each ``(query, Item)``: greedy, as ``taosr score`` generates."""
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    meta = export_meta(export)  # taosr_export.json: the target and chat-template use it was trained with
    target, chat = meta.get("target", "reasoning"), meta.get("use_chat_template")
    out = []
    for query, item in pairs:
        ex = Example(query=query, item=item, label=1)  # the label is not part of the prompt
        prompt = policy_prompt(ex, tok, use_chat_template=chat, target=target)
        ids = torch.tensor([encode_prompt(tok, prompt)])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        out.append((prompt, tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="a taosr export folder (<run>/export)")
    ap.add_argument("--show-prompt", action="store_true", help="print each prompt as the model sees it")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    a = ap.parse_args()
    for (query, item), (prompt, text) in zip(PAIRS, judge(a.export, PAIRS, a.max_new_tokens)):
        if a.show_prompt:
            print(prompt)
        parsed = parse_reasoning(text)
        verdict = f"{parsed.label} ({TIER_NAMES[parsed.label]})" if parsed.label else f"format error: {parsed.error}"
        print(f"{query!r} | {item.title!r} -> {verdict}")
        for key, content in parsed.steps.items():
            print(f"    {key}: {content}")


if __name__ == "__main__":
    main()
