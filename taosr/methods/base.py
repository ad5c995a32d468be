"""Shared LightningModule: model construction, optimiser, generation-based evaluation, export.

Method modules (SFT, DPO, GRPO, SRPO) subclass :class:`RelevanceModule` and implement only
``training_step`` with pure loss functions; evaluation is identical for all of them.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import lightning.pytorch as pl
import torch

from taosr.errors import ConfigError
from taosr.eval.generation import GenerationSpec, decode_completions, generate_ids, make_record, write_eval_outputs
from taosr.models.factory import ModelSpec, export_meta, load_model_and_tokenizer, note_chat_template, save_export
from taosr.registry import Registry
from taosr.serialization import register_safe_globals

register_safe_globals()

# LR schedules after the linear warm-up: factor(frac, floor) with frac in [0, 1] of the steps after it
SCHEDULERS: Registry = Registry("scheduler", "model.init_args.scheduler")
SCHEDULERS.register("constant", lambda frac, floor: 1.0)
SCHEDULERS.register("linear", lambda frac, floor: floor + (1 - floor) * (1 - frac))
SCHEDULERS.register("cosine", lambda frac, floor: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))

MAIN_METRICS = ("macro_f1", "good_f1", "accuracy", "step_accuracy", "format_error_rate", "hallucination_rate")
RANKING_METRICS = ("ndcg@10", "rmse_grade")  # logged when present (eval_scores; grades in the data)


CONFIG_OF_VIEW = {"sft": "sft.yaml", "dpo": "dpo.yaml", "rl": "grpo.yaml or srpo.yaml", "grm": "grm.yaml"}

FROZEN_FROM = "taosr_frozen_from"  # checkpoint key: the model folder the unsaved frozen weights come from


class RelevanceModule(pl.LightningModule):
    DATA_VIEW: str | None = None  # the DataModule view a method trains on (data.view); checked at fit

    def __init__(
        self,
        model: ModelSpec | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.1,
        eval_generation: GenerationSpec | None = None,
        export_dir: str | None = "auto",
        merge_lora_on_export: bool = True,
        table_rows: int = 32,
        eval_scores: bool = True,  # each eval record gets p_tier, score (expected tier) and grade; adds ndcg@10
    ):
        super().__init__()
        self.save_hyperparameters()
        self._schedule = SCHEDULERS.get(scheduler)
        for name, value, ok, rule in (("lr", lr, lr > 0, "> 0"), ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
                                      ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
                                      ("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]")):
            if not ok:
                raise ConfigError(f"model.init_args.{name}: must be {rule}, got {value}")
        self.spec = model or ModelSpec()
        self.eval_generation = eval_generation or GenerationSpec()
        if self.eval_generation.num_return_sequences != 1:  # each example's record is one completion
            raise ConfigError(f"model.init_args.eval_generation.num_return_sequences: must be 1 for evaluation, got "
                              f"{self.eval_generation.num_return_sequences} (pass@N: taosr sample --n N)")
        self.model = None
        self.tokenizer = None
        self._records: list[dict] = []
        self._partial = None  # a `taosr test`'s kept completions (taosr.eval.partial)

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        view = getattr(self.trainer.datamodule, "view", None)
        if stage == "fit" and self.DATA_VIEW and view is not None and view != self.DATA_VIEW:
            # another method's rows would train silently (DPO's pairs read as SFT targets, SFT batches split into
            # "chosen" and "rejected" halves)
            raise ConfigError(f"data.view: {type(self).__name__} trains on the {self.DATA_VIEW!r} view, got {view!r} "
                              f"(--data.view {self.DATA_VIEW}, or start from configs/{CONFIG_OF_VIEW[self.DATA_VIEW]})")
        if self.model is None:
            dm = self.trainer.datamodule
            corpus = dm.corpus if dm is not None else None
            self.model, self.tokenizer = load_model_and_tokenizer(self.spec, corpus=corpus)
            self.model.train()  # from_pretrained returns eval mode
            if getattr(self.model.config, "use_cache", None) is not None:
                self.model.config.use_cache = False
        if self.trainer.datamodule is not None:
            self.trainer.datamodule.attach_tokenizer(self.tokenizer)
            meta = export_meta(self.spec.name_or_path)  # {} for a preset or hub id
            trained = meta.get("target")
            target = getattr(self.trainer.datamodule, "target", None)
            if stage != "fit" and trained and target and trained != target:
                print(f"taosr: warning: {self.spec.name_or_path} was trained with data.target: {trained}, and this "
                      f"evaluation prompts it with data.target: {target} (add --data.target {trained})", file=sys.stderr)
            chat = meta.get("use_chat_template")
            if getattr(self.trainer.datamodule, "use_chat_template", None) is None and note_chat_template(
                    self.spec.name_or_path, self.tokenizer, chat, " (set data.use_chat_template to choose)"):
                self.trainer.datamodule.use_chat_template = chat  # prompted as it was trained

    @property
    def run_dir(self) -> str:
        return self.trainer.default_root_dir

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm, schedule, floor = self.hparams.warmup_steps, self._schedule, self.hparams.min_lr_ratio

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            return schedule(min(1.0, (step - warm) / max(1, total - warm)), floor)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], split: str) -> list[dict]:
        rows = self.trainer.datamodule.splits[split]
        target = self.trainer.datamodule.target
        partial = self._partial if split == "test" else None
        if partial is not None:  # an interrupted `taosr test` run again: this batch's completions if it kept them
            from taosr.eval.partial import prompt_digest
            from taosr.eval.scores import record_fields

            digests = [prompt_digest(ids, mask) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
            kept = [partial.get(int(i), d) for i, d in zip(batch["index"].tolist(), digests)]
            if all(k is not None for k in kept):
                recs = [make_record(rows[k["index"]], k["text"], k["index"], target=target) for k in kept]
                if self.hparams.eval_scores:
                    for r, k in zip(recs, kept):
                        r.update(record_fields(k["scores"], getattr(rows[r["index"]], "grade", None)))
                self._records.extend(recs)
                return recs
        capture = self._label_capture()
        ids = generate_ids(self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"], self.eval_generation,
                           logits_processor=[capture] if capture is not None else None)
        texts = decode_completions(self.tokenizer, ids)
        recs = [make_record(rows[i], t, int(i), target=target) for i, t in zip(batch["index"].tolist(), texts)]
        if self.hparams.eval_scores:
            self._add_scores(recs, batch, rows, ids, capture)
        if partial is not None:
            partial.add([{"index": r["index"], "prompt": d, "text": t,
                          "scores": {"p_tier": r["p_tier"], "score": r["score"]} if r.get("p_tier") is not None else None}
                         for r, d, t in zip(recs, digests, texts)])
        self._records.extend(recs)
        return recs

    def _open_partial(self):
        """The completions an interrupted ``taosr test`` of this model kept (:mod:`taosr.eval.partial`):
        greedy evaluations, in one process or several (a file per rank, each reading them all)."""
        from lightning.pytorch.trainer.states import TrainerFn

        from taosr.eval.partial import PartialEval, partial_key

        if self.trainer.state.fn != TrainerFn.TESTING or self.eval_generation.sampling:
            return None
        settings = {"generation": vars(self.eval_generation), "eval_scores": bool(self.hparams.eval_scores),
                    "target": self.trainer.datamodule.target}
        world = self.trainer.world_size
        partial = PartialEval(os.path.join(self.run_dir, "eval"),
                              partial_key(self.spec.name_or_path, self.trainer.ckpt_path, settings),
                              rank=self.trainer.global_rank, world_size=world,
                              barrier=(lambda: self.trainer.strategy.barrier("taosr.partial")) if world > 1 else None)
        if partial.kept and self.trainer.is_global_zero:
            print(f"taosr: test: continuing: {len(partial.kept)} completions kept from {partial.folder}", flush=True)
        return partial

    def _label_capture(self):
        """With ``eval_scores``, a greedy generation keeps the tier tokens' scores at every step, so
        P(tier) needs no second forward pass (:class:`taosr.eval.scores.LabelSlotCapture`)."""
        if not self.hparams.eval_scores or self.eval_generation.sampling:
            return None
        from taosr.eval.scores import LabelSlotCapture

        return LabelSlotCapture.for_tokenizer(self.tokenizer, self.model)

    def _add_scores(self, recs: list[dict], batch: dict[str, Any], rows: list, ids=None, capture=None) -> None:
        """``p_tier``, ``score`` and ``grade`` of each record (``eval_scores``): P(tier) at the label
        slot of its completion (:mod:`taosr.eval.scores`); None without a label line."""
        from taosr.eval.scores import prompt_rows, record_fields, tier_scores

        prompts = prompt_rows(batch["input_ids"], batch["attention_mask"])
        scores = tier_scores(self.model, self.tokenizer, prompts[: len(recs)], [r["reasoning"] for r in recs],
                             batch_size=len(prompts), generated=ids if ids is not None and len(ids) == len(recs) else None,
                             capture=capture)
        for r, s in zip(recs, scores):
            r.update(record_fields(s, getattr(rows[r["index"]], "grade", None)))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._records = []

    def on_test_epoch_start(self) -> None:
        self._records = []
        self._partial = self._open_partial()

    def _gather_records(self) -> list[dict]:
        recs = self._records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, recs)
            recs = sorted((r for p in parts for r in p), key=lambda r: r["index"])
            seen, uniq = set(), []
            for r in recs:  # DistributedSampler pads with repeats
                if r["index"] not in seen:
                    seen.add(r["index"])
                    uniq.append(r)
            recs = uniq
        return recs

    def _finish_eval(self, split: str) -> dict[str, float]:
        from taosr.eval.metrics import compute_metrics

        recs = self._gather_records()
        self._records = []
        if not recs:
            return {}
        metrics = compute_metrics(recs)
        if self.trainer.sanity_checking:
            return metrics
        tag = split if split == "test" else f"{split}-step{self.evaluated_step}"
        if self.trainer.is_global_zero:
            write_eval_outputs(os.path.join(self.run_dir, "eval"), tag, metrics, recs)
            self._log_table(split, recs)
        logged = {f"{split}/{k}": float(v) for k, v in metrics.items()
                  if (k in MAIN_METRICS or k in RANKING_METRICS or k.startswith("by_type/") and k.split("/")[-1] in ("macro_f1", "step_accuracy")
                      or k.startswith("long_tail/")) and isinstance(v, (int, float)) and not math.isnan(v)}
        self.log_dict(logged, sync_dist=False, rank_zero_only=True)
        return metrics

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Frozen weights are not saved: they are the start model's, loaded again from its folder
        before a restore (a LoRA run's base model made 97% of a SmolLM2 checkpoint, 0.6 GB; DPO's and
        GRPO's reference copy is frozen too)."""
        super().on_save_checkpoint(checkpoint)
        sd = checkpoint.get("state_dict")
        frozen = [n for n, p in self.named_parameters(remove_duplicate=False)  # tied aliases too (lm_head)
                  if not p.requires_grad and sd is not None and n in sd]
        if frozen:
            for n in frozen:
                del sd[n]
            checkpoint[FROZEN_FROM] = {"name_or_path": self.spec.name_or_path, "tensors": len(frozen)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._checkpoint_step = checkpoint.get("global_step")
        frozen = checkpoint.get(FROZEN_FROM)
        if frozen and self.model is not None:
            if frozen["name_or_path"] != self.spec.name_or_path:
                raise ConfigError(f"--ckpt_path: the checkpoint holds only trained weights; its frozen ones are "
                                  f"{frozen['name_or_path']!r}'s, but this run loads {self.spec.name_or_path!r} "
                                  "(use the model it was trained from)")
            sd = checkpoint["state_dict"]
            for k, v in self.state_dict().items():  # the frozen weights as loaded from the start model
                sd.setdefault(k, v)
            if getattr(self, "ref_model", None) is None:  # a reference copy's buffers in a checkpoint from before
                for k in [k for k in sd if k.startswith("ref_model.")]:  # the reference became a second adapter
                    del sd[k]

    @property
    def evaluated_step(self) -> int:
        """The training step of the weights being evaluated (``val-step<N>`` files): a standalone
        ``taosr validate --ckpt_path`` restores no training loop, so its global step is 0 while the
        weights are the checkpoint's step."""
        from lightning.pytorch.trainer.states import TrainerFn

        loaded = getattr(self, "_checkpoint_step", None)
        if self.trainer.state.fn == TrainerFn.VALIDATING and loaded is not None:
            return int(loaded)
        return self.global_step

    def on_predict_epoch_start(self) -> None:
        self._records = []

    def on_predict_epoch_end(self) -> None:
        """`taosr predict` keeps what it generated: the test split's prediction records (and their
        metrics) in ``<run>/eval/predict-predictions.jsonl`` / ``predict-metrics.json``."""
        from taosr.eval.metrics import compute_metrics

        recs = self._gather_records()
        self._records = []
        if recs and self.trainer.is_global_zero:
            _, path = write_eval_outputs(os.path.join(self.run_dir, "eval"), "predict", compute_metrics(recs), recs)
            print(f"taosr: wrote {len(recs)} predictions to {path}")

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")
        if self._partial is not None:  # the evaluation is written: its completions are no longer needed
            self._partial.done()
            self._partial = None

    def _log_table(self, split: str, recs: list[dict]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        rows = recs[: self.hparams.table_rows]
        cols = ["query", "title", "query_type", "gold", "pred", "format_error", "reasoning", "step_verdicts"]
        data = [[str(r.get(c)) for c in cols] for r in rows]
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                # one key per split, versioned by step (a key per step made a panel and ~9 history keys per table)
                lg.log_table(key=f"{split}/completions", columns=cols, data=data, step=self.evaluated_step)

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | None = None) -> str:
        out_dir = out_dir or os.path.join(self.run_dir, "export")
        dm = self.trainer.datamodule if self._trainer is not None else None
        meta = None
        if dm is not None and getattr(dm, "target", None):  # how the model was prompted: later stages, sample,
            meta = {"target": dm.target}                      # score and reason prompt it alike
            if getattr(dm, "use_chat_template", None) is not None:
                meta["use_chat_template"] = bool(dm.use_chat_template)
        save_export(self.model, self.tokenizer, out_dir, merge_lora=self.hparams.merge_lora_on_export, meta=meta)
        return out_dir

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            path = self.export(None if self.hparams.export_dir == "auto" else self.hparams.export_dir)
            print(f"taosr: exported Hugging Face model to {path}")
