"""RolloutCallback: before ``training_step``, sample G completions per prompt of the batch with the
configured engine and attach a :class:`~taosr.rl.rollout.Rollout` as ``batch["rollout"]`` (step 1 of
the order documented in :mod:`taosr.rl.rollout`; the reward callback comes next)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from taosr.errors import ConfigError
from taosr.eval.generation import GenerationSpec, completion_lengths
from taosr.reasoning.targets import get_target
from taosr.rl.engines import ENGINE_KEY, ENGINES
from taosr.rl.rollout import Rollout
from taosr.rl.sampler_correction import check_sampler_spec

KEY = "trainer.callbacks[RolloutCallback].init_args"


class RolloutCallback(pl.Callback):
    def __init__(self, num_generations: int = 8, engine: str = "hf",
                 generation: GenerationSpec | None = None, vllm: dict[str, Any] | None = None,
                 prefix_sharing: bool = True):
        self.G = num_generations
        self.engine_name, self.vllm_kwargs, self.prefix_sharing = engine, vllm or {}, prefix_sharing
        self.generation = generation or GenerationSpec(do_sample=True, temperature=1.0, max_new_tokens=96)
        # refused before any work starts: a group of one has no spread (every group would be
        # dropped) and a zero budget samples nothing, so the run would train nothing and exit 0
        if int(num_generations) < 2:
            raise ConfigError(f"{KEY}.num_generations: group methods need at least 2 completions per prompt, "
                              f"got {num_generations}")
        if int(self.generation.max_new_tokens) < 1:
            raise ConfigError(f"{KEY}.generation.max_new_tokens: must be >= 1, got {self.generation.max_new_tokens}")
        g = self.generation
        if not g.do_sample or g.temperature == 0:
            raise ConfigError(f"{KEY}.generation: rollouts must sample (do_sample: true, temperature > 0); greedy "
                              "decoding gives a prompt's completions alike, so no group has a reward spread")
        if g.num_return_sequences not in (1, self.G):
            raise ConfigError(f"{KEY}.generation.num_return_sequences: a prompt's completions are num_generations "
                              f"({self.G}); leave num_return_sequences unset, got {g.num_return_sequences}")
        if engine != "vllm" and vllm:
            raise ConfigError(f"{KEY}.vllm: options of the vllm engine, and engine is {engine!r} "
                              "(set engine: vllm, or remove them)")
        self.engine_entry = ENGINES.get(engine, ENGINE_KEY)
        self.engine_entry.check(self._engine_options(), key=f"{KEY}.vllm" if engine == "vllm" else KEY)
        self.spec = replace(self.generation, num_return_sequences=self.G)
        self.engine = None

    def _engine_options(self) -> dict[str, Any]:
        return dict(self.vllm_kwargs) if self.engine_name == "vllm" else {"prefix_sharing": self.prefix_sharing}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":  # before the engine is built (vLLM takes minutes to start)
            hp = getattr(pl_module, "hparams", {})
            check_sampler_spec(hp.get("rollout_is"), self.spec, self.engine_entry.on_policy, "model.init_args")
        if self.engine is None and stage == "fit":
            self.engine = self.engine_entry.build(**self._engine_options())
        if stage == "fit":
            self._cap_to_target(getattr(trainer.datamodule, "target", None))

    def _cap_to_target(self, target: str | None) -> None:
        """A target whose completions are short (``data.target: label``) caps the rollouts' budget,
        so a completion that never writes eos stops there instead of at the RL configs' 96 tokens."""
        if target is None:
            return
        cap = get_target(target).max_new_tokens
        if cap is not None and int(self.spec.max_new_tokens) > cap:
            rank_zero_info(f"taosr: data.target {target!r}: rollouts sample at most {cap} new tokens "
                           f"({KEY}.generation.max_new_tokens is {self.spec.max_new_tokens})")
            self.spec = replace(self.spec, max_new_tokens=cap)

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        tok, G, spec = pl_module.tokenizer, self.G, self.spec
        t0 = time.perf_counter()
        self.engine.sync_weights(pl_module.model)
        with trainer.precision_plugin.forward_context():  # bf16-mixed / 16-mixed rollouts run in that precision
            sample = getattr(self.engine, "sample", None)  # an engine with generate only reports no log-probs
            args = (pl_module.model, tok, batch["input_ids"], batch["attention_mask"], spec)
            comp, sampler_lp = sample(*args) if sample is not None else (self.engine.generate(*args), None)
        t_gen = time.perf_counter() - t0
        lens = completion_lengths(comp, tok.eos_token_id, tok.pad_token_id,
                                  ragged=getattr(self.engine, "ragged", True)).to(comp.device)
        L = comp.shape[1]
        mask = (torch.arange(L, device=comp.device)[None, :] < lens[:, None]).long()
        comp = comp.masked_fill(mask == 0, tok.pad_token_id)
        if sampler_lp is not None:
            sampler_lp = sampler_lp.to(comp.device).masked_fill(mask == 0, 0.0)
        texts = [tok.decode(r[:n], skip_special_tokens=True) for r, n in zip(comp.tolist(), lens.tolist())]
        batch["rollout"] = Rollout(
            spec=spec, prompt_ids=batch["input_ids"].repeat_interleave(G, 0),
            prompt_mask=batch["attention_mask"].repeat_interleave(G, 0), completion_ids=comp, completion_mask=mask,
            texts=texts, example_index=batch["index"].repeat_interleave(G, 0).to(comp.device),
            clipped=~(comp == tok.eos_token_id).any(1), on_policy=self.engine_entry.on_policy,
            timings={"rollout": t_gen}, perf_tokens_per_s=float(mask.sum()) / max(t_gen, 1e-9),
            sampler_logps=sampler_lp)
