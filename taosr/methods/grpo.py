"""GRPO (TaoSR1 stage 3): group-normalised outcome advantages and the clipped policy objective.

Manual optimisation: each rollout batch (prompts x G completions: a :class:`~taosr.rl.rollout.Rollout`
built by the RolloutCallback and scored by the RewardModelCallback) gets ``num_iterations``
optimiser updates but counts as ONE global step, so ``max_steps``, the equal rollout budget and
the curriculum's ``until_step`` count rollout batches whatever ``num_iterations`` is (a batch whose
groups were all dropped counts one too). Each update accumulates micro-batches whose losses are
normalised by the whole batch's token (or sequence) count, so micro-batching never changes the
gradient. A group's repeated completions (same tokens, same advantages) are computed once, their
loss weighted by their copies (``dedup_completions``), and micro-batches hold groups of similar
lengths, each trimmed to its longest completion (:mod:`taosr.rl.update_plan`): the same loss and
gradient up to floating-point order, at the cost of the distinct tokens only. Advantages and loss
are pure functions (:mod:`taosr.rl.advantages`, :mod:`taosr.losses.policy`).
"""
from __future__ import annotations

import contextlib
import time

import torch
from lightning.pytorch.utilities import rank_zero_warn

from taosr.errors import ConfigError
from taosr.losses.policy import LOSS_AGGREGATIONS, policy_loss
from taosr.losses.sft import gather_logprobs, token_entropy
from taosr.methods.base import RelevanceModule
from taosr.models.factory import disable_dropout
from taosr.models.kvcache import cache_kwargs, output_cache
from taosr.models.reference import build_reference, check_choice, reference_model
from taosr.rl.advantages import frac_zero_std, group_advantages, zero_spread_mask
from taosr.rl.rollout import Rollout
from taosr.rl.sampler_correction import check_is_settings, sampler_is_weights
from taosr.rl.update_plan import UpdatePlan, mean_over_copies, plan_update, trimmed_width

KEY = "model.init_args"


class GRPOModule(RelevanceModule):
    DATA_VIEW = "rl"  # the DataModule view it trains on (data.view)

    def __init__(self, *args, num_iterations: int = 1, micro_batch_size: int = 16, eps_low: float = 0.2,
                 eps_high: float = 0.28, delta: float | None = None, beta: float = 0.0,
                 loss_agg: str = "token_mean", scale_std: bool = True, dynamic_sampling: bool = True,
                 max_grad_norm: float = 1.0, reference: str = "auto", prefix_sharing: bool = True,
                 dedup_completions: bool = True, table_every: int = 20, disable_dropout: bool = True,
                 rollout_is: str | None = "sequence_mask", rollout_is_max: float | None = 3.0,
                 rollout_is_min: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.ref_model = None  # the frozen copy (reference kind "copy" only)
        self.ref_kind: str | None = None  # taosr.models.reference.reference_kind, set at fit when beta > 0
        LOSS_AGGREGATIONS.check(loss_agg, key=f"{KEY}.loss_agg")
        if delta is not None and delta <= 1 + eps_high:
            raise ConfigError(f"{KEY}.delta (dual clip) must exceed 1 + eps_high = {1 + eps_high:g}, got {delta:g}")
        for name, v, lo in (("num_iterations", num_iterations, 1), ("micro_batch_size", micro_batch_size, 1)):
            if int(v) < lo:
                raise ConfigError(f"{KEY}.{name}: must be >= {lo}, got {v}")
        check_choice(reference, f"{KEY}.reference")
        check_is_settings(rollout_is, rollout_is_max, rollout_is_min, KEY)

    # ------------------------------------------------------------------ log-probs
    def setup(self, stage: str) -> None:
        if stage == "fit" and getattr(self.trainer, "gradient_clip_algorithm", None) is not None:  # failed at the 1st update
            raise ConfigError(f"trainer.gradient_clip_algorithm: {type(self).__name__} clips by norm in its own update "
                              "(model.init_args.max_grad_norm); remove it")
        super().setup(stage)
        if self.hparams.disable_dropout:  # rollouts sample in eval mode: the update must score that policy
            disable_dropout(self.model)
        if stage == "fit" and self.hparams.beta > 0 and self.ref_kind is None:
            # auto: the adapter disabled for a fresh adapter, a second frozen adapter for a loaded
            # adapter-only export (taosr.models.reference), else a frozen copy; copy: always a copy
            self.ref_kind, self.ref_model = build_reference(self.model, self.hparams.reference, f"{KEY}.reference",
                                                            no_dropout=self.hparams.disable_dropout)

    def _logps(self, model, r: Rollout, rows: slice | torch.Tensor | None = None, entropy: bool = False):
        """Per-token log-probs (and entropies) of the completions of ``rows``, at the temperature
        the tokens were sampled at (``r.temperature``, from the rollout's generation spec), over the
        rows' longest completion only: (len(rows), W) with W <= the rollout's width (trimmed_width).

        When several ``rows`` come from one prompt (row // G) the prompt is run once per prompt
        and its KV cache shared by those rows (prefix sharing): the same numbers and gradients as
        the plain forward, with the prompt tokens computed once per group.
        """
        idx = torch.arange(len(r), device=r.device)[rows if rows is not None else slice(None)]
        W = trimmed_width(r.completion_mask[idx])
        c_ids, c_mask = r.completion_ids[idx, :W], r.completion_mask[idx, :W]
        G = r.group_size
        if self.hparams.get("prefix_sharing", True) and G > 1 and len(idx) > len(torch.unique(idx // G)):
            logits = self._shared_prefix_logits(model, r, idx, c_ids, c_mask)
        else:
            p_ids, p_mask = r.prompt_ids[idx], r.prompt_mask[idx]
            ids = torch.cat([p_ids, c_ids], 1)
            att = torch.cat([p_mask, c_mask], 1)
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=W + 1).logits[:, :-1].float()
        temperature = r.temperature
        if temperature != 1.0:
            logits = logits / temperature
        lp = gather_logprobs(logits, c_ids)
        if not entropy:
            return lp
        return lp, token_entropy(logits.detach())

    def _shared_prefix_logits(self, model, r: Rollout, idx: torch.Tensor, c_ids: torch.Tensor,
                              c_mask: torch.Tensor) -> torch.Tensor:
        groups, inv = torch.unique(idx // r.group_size, return_inverse=True)
        first = groups * r.group_size  # a group's rows share its first row's prompt
        p_ids, p_mask = r.prompt_ids[first], r.prompt_mask[first]
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        cache.batch_select_indices(inv)  # differentiable: gradients flow back into the shared prompt
        att = torch.cat([p_mask[inv], c_mask], 1)
        W = c_ids.shape[1]
        c_pos = p_pos[inv, -1:] + 1 + torch.arange(W, device=c_ids.device)[None, :]
        out2 = model(input_ids=c_ids, attention_mask=att, position_ids=c_pos, use_cache=True, **cache_kwargs(model, cache))
        return torch.cat([out.logits[inv, -1:], out2.logits[:, :-1]], 1).float()

    def _plan(self, r: Rollout, rows: torch.Tensor, advantages: torch.Tensor | None = None) -> UpdatePlan:
        return plan_update(r.completion_ids, r.completion_mask, rows, r.group_size, self.hparams.micro_batch_size,
                           advantages=advantages, dedup=self.hparams.get("dedup_completions", True))

    def _all_logps(self, model, r: Rollout) -> torch.Tensor:
        """(N, T) log-probs of every completion (zero past its end), each distinct one computed once."""
        plan = self._plan(r, torch.arange(len(r)))
        out = torch.zeros(len(plan.rows), r.completion_ids.shape[1], device=r.device)
        for sl in plan.micro_batches:
            lp = self._logps(model, r, plan.rows[sl])
            out[sl, :lp.shape[1]] = lp
        return out[plan.inverse].masked_fill(r.completion_mask == 0, 0.0)

    @torch.no_grad()
    def policy_logps(self, r: Rollout) -> torch.Tensor:
        return self._all_logps(self.model, r)

    @torch.no_grad()
    def reference_logps(self, r: Rollout) -> torch.Tensor | None:
        if self.hparams.beta <= 0:
            return None
        with reference_model(self.model, self.ref_kind, self.ref_model) as ref_model:
            return self._all_logps(ref_model, r)

    def fill_logps(self, r: Rollout) -> None:
        """Step 3 of the rollout order: the log-probs the objective compares against, from the
        weights the rollout was sampled with (before any update of this batch). With one update per
        rollout batch and on-policy sampling the ratio is 1 at the update: old log-probs equal the
        update's own (detached), so that forward pass is skipped (as TRL). A rollout with the
        engine's own log-probs (``r.sampler_logps``) gets old log-probs too: the correction
        (:meth:`correct_sampler`) compares the two."""
        t1 = time.perf_counter()
        need_old = self.hparams.num_iterations > 1 or not r.on_policy or r.sampler_logps is not None
        r.old_logps = self.policy_logps(r) if need_old else None
        r.ref_logps = self.reference_logps(r)
        r.timings["old_logps"] = time.perf_counter() - t1

    def correct_sampler(self, r: Rollout) -> dict[str, float]:
        """When the engine reported its own log-probs (``r.sampler_logps``: vLLM), their mismatch with
        the trainer's old log-probs (metrics ``sampler/*``, returned) and, with ``rollout_is`` set, the
        importance-sampling weights of each token's policy term (``r.is_weights``;
        :mod:`taosr.rl.sampler_correction`). Nothing for an on-policy engine (HF)."""
        hp = self.hparams
        if r.sampler_logps is None:
            return {}
        mode = hp.get("rollout_is")
        w, metrics = sampler_is_weights(r.old_logps, r.sampler_logps, r.completion_mask, mode=mode or "token_mask",
                                        cap_max=hp.get("rollout_is_max", 3.0), cap_min=hp.get("rollout_is_min"))
        r.is_weights = w if mode else None
        if metrics.get("sampler/unknown_frac", 0.0) > 0 and not getattr(self, "_warned_unknown", False):
            self._warned_unknown = True
            rank_zero_warn(f"taosr: the rollout engine gave no log-prob for {metrics['sampler/unknown_frac']:.1%} of "
                           "the sampled tokens: they weigh as if it agreed with the trainer (train/sampler/unknown_frac)")
        return metrics

    # ------------------------------------------------------------------ advantages
    def advantages(self, r: Rollout) -> torch.Tensor:
        """(N,) sequence advantages for GRPO; SRPO overrides with (N, L) step-level ones."""
        return group_advantages(r.reward, r.group_size, scale_std=self.hparams.scale_std)

    def keep_mask(self, r: Rollout) -> torch.Tensor:
        """Dynamic sampling: drop groups whose rewards have zero spread (no learning signal)."""
        if not self.hparams.dynamic_sampling:
            return torch.ones_like(r.reward, dtype=torch.bool)
        return ~zero_spread_mask(r.reward, r.group_size)

    # ------------------------------------------------------------------ update
    def _no_sync(self, distributed: bool):
        """Accumulate micro-batch gradients locally under DDP (synchronised once per update)."""
        ddp = getattr(self.trainer.strategy, "model", None) if distributed else None
        if hasattr(ddp, "no_sync"):
            return ddp.no_sync()
        return contextlib.nullcontext()

    def _global(self, x: torch.Tensor) -> float:
        """Normaliser shared by all ranks: the global count divided by the world size, because
        DDP averages gradients over ranks."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            x = x.detach().clone().float()
            torch.distributed.all_reduce(x)
            return float(x) / torch.distributed.get_world_size()
        return float(x)

    def _optimizer_step(self, opt, count: bool) -> None:
        """One parameter update. Only the update that ``count``s goes through Lightning's optimizer
        wrapper (which counts it as a global step); the others call the strategy's optimizer step
        directly (same precision / strategy handling, not counted), so one rollout batch is one
        global step however many updates it gets."""
        if count:
            opt.step()
        else:
            self.trainer.strategy.optimizer_step(opt.optimizer, lambda: None)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip here, not before ``opt.step()``: under 16-mixed the precision plugin unscales the
        gradients inside the step, just before this hook (clipped before, the scaled gradients were
        cut to the norm and then divided by the loss scale)."""
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    @staticmethod
    def _count_step(opt) -> None:
        """Count a global step without an update: Lightning's optimizer wrapper counts in the hooks
        around its ``step``, and the plain optimizer's step moves nothing without gradients (the
        wrapper's step would go through the precision plugin: under 16-mixed the grad scaler finds no
        inf checks and fails)."""
        opt._on_before_step()
        opt.optimizer.step()
        opt._on_after_step()

    def _accumulate(self, r: Rollout, plan: UpdatePlan, adv: torch.Tensor, num_tokens: float, num_seqs: float,
                    distributed: bool = False) -> dict[str, float]:
        """Backward passes of one update's loss over the planned micro-batches (the gradients
        accumulate in the parameters); returns the update's metrics. Each planned row's loss counts
        its copies (``plan.weight``); normalisers are the whole batch's (``num_tokens``, ``num_seqs``)."""
        hp = self.hparams
        mask = r.completion_mask.float()
        total = max(float((mask[plan.rows].sum(1) * plan.weight).sum()), 1.0)
        # the sampler-mismatch weights of each representative: its copies' mean (they may differ)
        is_w = mean_over_copies(plan, r.is_weights[plan.inputs.to(r.device)]) if r.is_weights is not None else None
        agg: dict[str, float] = {}
        for sl in plan.micro_batches:
            rows, w = plan.rows[sl], plan.weight[sl]
            lp, ent = self._logps(self.model, r, rows, entropy=True)
            W = lp.shape[1]  # the micro-batch's longest completion
            m_rows = mask[rows, :W]
            a = adv[rows, :W] if adv.dim() == 2 else adv[rows]
            ref = r.ref_logps[rows, :W] if r.ref_logps is not None else None
            old = r.old_logps[rows, :W] if r.old_logps is not None else lp.detach()
            isw = is_w[sl, :W] if is_w is not None else None
            loss, m = policy_loss(lp, old, a, m_rows, eps_low=hp.eps_low, eps_high=hp.eps_high, delta=hp.delta,
                                  ref_logps=ref, beta=hp.beta, loss_agg=hp.loss_agg, num_tokens=num_tokens,
                                  num_sequences=num_seqs, max_completion_length=r.max_new_tokens, weights=w,
                                  is_weights=isw)
            with self._no_sync(distributed):
                self.manual_backward(loss)
            share = float((m_rows.sum(1) * w).sum()) / total  # tokens of the rows these stand for
            agg["loss"] = agg.get("loss", 0.0) + float(loss.detach())
            agg["entropy"] = agg.get("entropy", 0.0) + float(((ent * m_rows).sum(1) * w).sum()) / total
            for k, v in m.items():
                agg[k] = agg.get(k, 0.0) + share * float(v)
        return agg

    def training_step(self, batch: dict, batch_idx: int):
        r: Rollout = batch["rollout"]
        hp = self.hparams
        step = self.global_step  # this rollout batch's step (the update below advances it)
        self.fill_logps(r)
        sampler_metrics = self.correct_sampler(r)
        adv = self.advantages(r)
        keep = self.keep_mask(r)
        metrics = self._rollout_metrics(r, keep)
        metrics.update(sampler_metrics)
        opt = self.optimizers()
        sched = self.lr_schedulers()
        idx = keep.nonzero().flatten()
        t0 = time.perf_counter()
        mask = r.completion_mask.float()
        # Normalisers and the decision to step are global: under DDP every rank must run the same
        # number of synchronised backward passes whatever it kept locally.
        num_tokens = self._global(mask[idx].sum())
        num_seqs = self._global(torch.tensor(float(len(idx)), device=mask.device))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_seqs > 0:
            plan = self._plan(r, idx, adv)
            metrics["update/deduplicated_rows"] = float(plan.duplicates)
            for it in range(hp.num_iterations):
                opt.zero_grad()
                agg = self._accumulate(r, plan, adv, num_tokens, num_seqs, distributed)
                if distributed:  # one synchronised backward per rank: all-reduces the accumulated grads
                    self.manual_backward(sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0)
                self._optimizer_step(opt, count=it == hp.num_iterations - 1)  # clipped in on_before_optimizer_step
            metrics.update(agg)
            self._update_keys = tuple(agg)
        else:
            # Every group was dropped (no reward spread anywhere): the rollout batch still counts as a
            # step — no gradient, so no parameter moves — so that max_steps bounds the rollout budget
            # (equal for every method) and a run whose groups are all flat still ends.
            opt.zero_grad(set_to_none=True)
            self._count_step(opt)
            # no update, so no loss: NaN (a gap in the charts; history means skip it), where Lightning
            # would log the last update's values again for the keys this step leaves out
            metrics.update({k: float("nan") for k in getattr(self, "_update_keys", ())})
        sched.step()
        metrics["dynamic_sampling/skipped_update"] = float(num_seqs == 0)
        metrics["timing_s/update"] = time.perf_counter() - t0
        self.log_dict({f"train/{k}": float(v) for k, v in metrics.items()}, batch_size=len(r))
        if hp.table_every and step % hp.table_every == 0:  # every table_every steps (batch_idx restarts each epoch)
            self._log_rollout_table(r, step)
        return None

    def _log_rollout_table(self, r: Rollout, step: int) -> None:
        """W&B completions table of this rollout batch (with step rewards for SRPO)."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not self.trainer.is_global_zero:
            return
        cols = ["query", "title", "gold", "completion", "reward", "correct", "step_rewards", "step_source"]
        n = min(len(r.texts), self.hparams.table_rows)
        st = r.steps
        data = []
        for i in range(n):
            ex = r.examples[i]
            if st is None:
                steps = ["", ""]
            elif st.examined is not None and not bool(st.examined[i]):
                steps = ["not examined: group dropped"] * 2
            else:
                steps = [str([round(float(x), 2) for x in st.rewards[i]]), str(st.source[i].tolist())]
            data.append([ex.query, ex.item.title, ex.label, r.texts[i], float(r.reward[i]), bool(r.correct[i]),
                         *steps])
        for lg in loggers:
            lg.log_table(key="train/completions", columns=cols, data=data, step=step)  # one key, versioned by step

    def _rollout_metrics(self, r: Rollout, keep: torch.Tensor) -> dict[str, float]:
        G = r.group_size
        rw = r.reward
        m = {
            "reward": float(rw.mean()),
            "reward_std": float(rw.view(-1, G).std(1).mean()) if G > 1 else 0.0,
            "frac_reward_zero_std": frac_zero_std(rw, G),
            "rewards/correct/mean": float(r.correct.mean()),
            "rewards/format/mean": float(r.format.mean()),
            "completions/mean_length": float(r.completion_mask.sum(1).float().mean()),
            "completions/clipped_ratio": float(r.clipped.float().mean()),
            "dynamic_sampling/dropped_groups": float((~keep).sum()) / G,
            "dynamic_sampling/kept_completions": float(keep.sum()),
        }
        m.update({f"timing_s/{k}": float(v) for k, v in r.timings.items()})
        if r.perf_tokens_per_s is not None:
            m["perf/rollout_tokens_per_s"] = r.perf_tokens_per_s
        return m
