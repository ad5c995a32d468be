"""Generation-based evaluation: generate reasoning for prompts, parse it, verify steps, and
turn it into prediction records that :mod:`taosr.eval.metrics` scores."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from taosr.errors import ConfigError
from taosr.schema import Example
from taosr.reasoning.targets import get_target


@dataclass
class GenerationSpec:
    """Sampling parameters for rollouts and evaluation (``do_sample=False`` or ``temperature: 0`` is greedy).

    Built from YAML under ``model.init_args.eval_generation`` and the rollout callback's
    ``generation``; a value out of range is refused with a ConfigError naming the option.
    ``cuda_graphs``: on CUDA, decode with the step captured as a CUDA graph (off: eager steps)."""
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    cuda_graphs: bool = True

    def __post_init__(self):
        def bad(name: str, rule: str):
            raise ConfigError(f"generation.{name} must be {rule}, got {getattr(self, name)!r} "
                              "(model.init_args.eval_generation or the rollout callback's generation)")

        def number(name: str, kind=(int, float)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float) and not math.isfinite(v)):
                bad(name, "a finite number" if kind != int else "an integer")
            return v

        if number("max_new_tokens", int) < 1:
            bad("max_new_tokens", ">= 1")
        if number("temperature") < 0:
            bad("temperature", ">= 0 (0 is greedy)")
        top_p = number("top_p")
        if not 0 < top_p <= 1:
            bad("top_p", "in (0, 1]")
        if number("top_k", int) < 0:
            bad("top_k", ">= 0 (0 is off)")
        if number("num_return_sequences", int) < 1:
            bad("num_return_sequences", ">= 1")

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn (do_sample at a positive temperature) rather than argmax."""
        return bool(self.do_sample) and self.temperature > 0


@torch.no_grad()
def hf_generate_ids(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    spec: GenerationSpec, logits_processor: list | None = None) -> torch.Tensor:
    """``model.generate``: completion token ids (B * n, L), right padded with pad_token_id, prompt removed.
    ``logits_processor``: extra processors (e.g. :class:`taosr.eval.scores.LabelSlotCapture`)."""
    was_training = model.training
    model.eval()
    # greedy copies are identical: decode once (generate refuses num_return_sequences > 1 without sampling)
    n = spec.num_return_sequences if spec.sampling else 1
    kwargs: dict[str, Any] = dict(max_new_tokens=spec.max_new_tokens, do_sample=spec.sampling,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                  num_return_sequences=n, use_cache=True)
    if logits_processor:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(logits_processor)
    if spec.sampling:
        kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        if was_training:
            model.train()
    out = out[:, input_ids.shape[1]:]
    return out if n == spec.num_return_sequences else out.repeat_interleave(spec.num_return_sequences, 0)


@torch.no_grad()
def generate_ids(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 spec: GenerationSpec, logits_processor: list | None = None) -> torch.Tensor:
    """Completion token ids (B * n, L), right padded with pad_token_id, prompt removed.

    On CUDA (unless ``spec.cuda_graphs`` is off, or the model's generation config changes scores or
    the search, which only ``generate`` applies) the model's static-cache decoder with its captured
    decode step (:mod:`taosr.rl.engines.graph`). Greedy decoding on CPU: the same decoder with
    eager steps on a cache that hands attention only the positions written so far (the keys
    ``model.generate``'s growing cache holds, so the same tokens, without its per-token copy of the
    whole cache; :func:`taosr.models.kvcache.written_static_cache`), unless the model's generation
    config changes scores or the search (penalties, bans, beams, stop strings: only ``generate``
    applies them) or its cache is not plain static layers. Otherwise, and for sampling,
    ``model.generate``.
    ``logits_processor``: extra processors (not called by the CUDA-graph decoder)."""
    from taosr.rl.engines.graph import decoder_for

    if input_ids.device.type == "cuda" and spec.cuda_graphs and _plain_greedy(model):
        return decoder_for(model).generate(model, tokenizer, input_ids, attention_mask, spec)
    if input_ids.device.type == "cpu" and not spec.sampling and _plain_greedy(model):
        one = spec if spec.num_return_sequences == 1 else replace(spec, num_return_sequences=1)
        out = decoder_for(model).generate(model, tokenizer, input_ids, attention_mask, one, cuda_graphs=False,
                                          written_only=True, logits_processor=logits_processor)
        return out if spec.num_return_sequences == 1 else out.repeat_interleave(spec.num_return_sequences, 0)
    return hf_generate_ids(model, tokenizer, input_ids, attention_mask, spec, logits_processor)


# generation-config fields that make ``generate`` do more than argmax decoding with eos as the only stop
_DECODING_DEFAULTS = (("num_beams", 1), ("num_beam_groups", 1), ("penalty_alpha", None), ("dola_layers", None),
                      ("stop_strings", None), ("max_time", None), ("assistant_model", None), ("prompt_lookup_num_tokens", None))


def _plain_decoding(model) -> bool:
    """Whether ``model.generate`` would decode ``model`` token by token with nothing but the spec's
    warpers: nothing in its generation config changes the scores, the search or the stopping rule,
    and it is a decoder-only model."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    return not generation_config_extras(model)


def generation_config_extras(model) -> list[str]:
    """The fields of ``model``'s generation config that make ``model.generate`` do more than draw each
    token from the spec's warpers (penalties, bans, beams, stop strings), as ``name=value``."""
    from taosr.eval.scores import SCORE_CHANGING_FIELDS

    gen = getattr(model, "generation_config", None)
    if gen is None:
        return []
    return [f"{name}={getattr(gen, name)!r}" for name, default in (*SCORE_CHANGING_FIELDS, *_DECODING_DEFAULTS)
            if getattr(gen, name, None) not in (None, default)]


def _plain_greedy(model) -> bool:
    """:func:`_plain_decoding`, for a decoder whose cache is plain static layers (not a sliding-window
    or hybrid cache, whose window-sized layers the decoder's slots cannot line up with left padding)."""
    from taosr.models.kvcache import written_static_cache

    return _plain_decoding(model) and written_static_cache(model.config, 1) is not None


def completion_lengths(ids: torch.Tensor, eos_id: int, pad_id: int, ragged: bool = True) -> torch.Tensor:
    """Length of each completion including its first eos (the tokens the policy produced). A row
    without eos: with ``ragged`` (rows may end before the width without the tokenizer's eos:
    ``generate`` stops on its generation config's other eos ids, vLLM's rows are padded to the
    longest) up to its last token that is not padding (a pad sampled inside counts, one sampled
    last does not); without (taosr's own samplers: a row without eos ran the whole width), the
    whole width, pads the policy sampled included."""
    B, L = ids.shape
    is_eos = ids == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full((B,), L, device=ids.device))
    if ragged and pad_id != eos_id:
        pos = torch.arange(1, L + 1, device=ids.device).expand(B, L)
        end = torch.where(ids != pad_id, pos, torch.zeros_like(pos)).amax(1) if L else first
        first = torch.where(is_eos.any(1), first, end)
    return first


def decode_completions(tokenizer, ids: torch.Tensor) -> list[str]:
    lens = completion_lengths(ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(ids, lens)]


def make_record(ex: Example, text: str, index: int | None = None, *, target: str = "reasoning") -> dict[str, Any]:
    """One prediction record: the example (its whole item beside the title, so a reader can rebuild
    the prompt: the notebook's GRM scores), the raw generation, its parse by the training target
    (``data.target``) and step verdicts (all None for a target without steps: step metrics are NaN)."""
    spec = get_target(target)
    parsed = spec.parse(text)
    item = {k: v for k, v in dataclasses.asdict(ex.item).items() if v not in (None, {})}
    return {
        "index": index, "id": ex.id, "query": ex.query, "title": ex.item.title, "item": item, "query_type": ex.query_type,
        "gold": ex.label, "pred": parsed.label, "format_error": parsed.format_error, "error": parsed.error,
        "reasoning": text, "steps": parsed.steps,
        "step_verdicts": spec.step_verdicts(parsed, ex.annotations),
    }


def write_eval_outputs(out_dir: str, tag: str, metrics: dict[str, float], records: list[dict]) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    mpath = os.path.join(out_dir, f"{tag}-metrics.json")
    ppath = os.path.join(out_dir, f"{tag}-predictions.jsonl")
    # each file under a temporary name, then renamed; the metrics last, so a metrics file (what
    # `taosr compare` and sweeps read as "this evaluation finished") always has its predictions
    with open(ppath + ".tmp", "w") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(ppath + ".tmp", ppath)
    with open(mpath + ".tmp", "w") as fh:
        json.dump(metrics, fh, indent=2, sort_keys=True, default=float)
    os.replace(mpath + ".tmp", mpath)
    return mpath, ppath
