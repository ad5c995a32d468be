"""RolloutCallback: before ``training_step``, sample G completions per prompt of the batch and
attach tokens, masks and old log-probs (and reference log-probs when the module uses a KL term)."""
from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from taosr.eval.generation import GenerationSpec, completion_lengths


class RolloutCallback(pl.Callback):
    def __init__(self, num_generations: int = 8, engine: str = "hf",
                 generation: GenerationSpec | None = None, vllm: dict[str, Any] | None = None,
                 prefix_sharing: bool = True):
        self.G = num_generations
        self.engine_name, self.vllm_kwargs, self.prefix_sharing = engine, vllm or {}, prefix_sharing
        self.generation = generation or GenerationSpec(do_sample=True, temperature=1.0, max_new_tokens=96)
        self.engine = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from taosr.rl.engines import make_engine

        if self.engine is None and stage == "fit":
            kwargs = self.vllm_kwargs if self.engine_name == "vllm" else {"prefix_sharing": self.prefix_sharing}
            self.engine = make_engine(self.engine_name, **kwargs)

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        tok, G = pl_module.tokenizer, self.G
        spec = GenerationSpec(**{**self.generation.__dict__, "num_return_sequences": G})
        t0 = time.perf_counter()
        self.engine.sync_weights(pl_module.model)
        comp = self.engine.generate(pl_module.model, tok, batch["input_ids"], batch["attention_mask"], spec)
        t_gen = time.perf_counter() - t0
        lens = completion_lengths(comp, tok.eos_token_id, tok.pad_token_id)
        L = comp.shape[1]
        mask = (torch.arange(L, device=comp.device)[None, :] < lens[:, None]).long()
        comp = comp.masked_fill(mask == 0, tok.pad_token_id)
        prompt_ids = batch["input_ids"].repeat_interleave(G, 0)
        prompt_mask = batch["attention_mask"].repeat_interleave(G, 0)
        texts = [tok.decode(r[:n].tolist(), skip_special_tokens=True) for r, n in zip(comp, lens)]
        eos_hit = (comp == tok.eos_token_id).any(1)
        rollout = {
            "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp, "completion_mask": mask,
            "texts": texts, "example_index": batch["index"].repeat_interleave(G, 0), "group_size": G,
            "clipped": ~eos_hit, "timing_s/rollout": t_gen,
            # the update scores tokens under the distribution they were sampled from (as TRL), and
            # Dr. GRPO divides by the fixed completion budget, not this batch's padded length
            "temperature": float(spec.temperature) if spec.do_sample and spec.temperature else 1.0,
            "max_new_tokens": int(spec.max_new_tokens),
            "perf/rollout_tokens_per_s": float(mask.sum()) / max(t_gen, 1e-9),
        }
        t1 = time.perf_counter()
        # With one update per rollout batch and on-policy HF sampling the ratio is 1 at the update:
        # old log-probs equal the update's own (detached), so the extra forward pass is skipped (as TRL).
        need_old = pl_module.hparams.get("num_iterations", 1) > 1 or self.engine_name != "hf"
        rollout["old_logps"] = pl_module.policy_logps(rollout, grad=False) if need_old else None
        rollout["ref_logps"] = pl_module.reference_logps(rollout)
        rollout["timing_s/old_logps"] = time.perf_counter() - t1
        batch["rollout"] = rollout
