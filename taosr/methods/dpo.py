"""DPO (TaoSR1 stage 2): sigmoid preference loss against a reference policy.

Reference (:mod:`taosr.models.reference`): the same model with its LoRA adapter disabled when the
adapter was added fresh (no extra memory); for a previous stage's adapter-only export, that adapter
loaded a second time, frozen, and switched to for the reference forward (one adapter's memory);
else a frozen copy made at setup. Logs TRL's metric names (rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins).
"""
from __future__ import annotations

import torch

from taosr.losses.dpo import dpo_loss, dpo_metrics
from taosr.losses.sft import sequence_logprobs
from taosr.methods.base import RelevanceModule
from taosr.models.factory import disable_dropout
from taosr.models.reference import build_reference, check_choice, reference_model


class DPOModule(RelevanceModule):
    DATA_VIEW = "dpo"  # the DataModule view it trains on (data.view)

    def __init__(self, *args, beta: float = 0.1, label_smoothing: float = 0.0, sft_weight: float = 0.0,
                 disable_dropout: bool = True, reference: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        check_choice(reference)  # auto | adapter_disabled | copy, as GRPO's (taosr.models.reference)
        self.save_hyperparameters()
        self.ref_model = None  # the frozen copy (reference kind "copy" only)
        self.ref_kind: str | None = None  # taosr.models.reference.reference_kind, set at fit

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.disable_dropout:  # policy and reference log-probs of the same weights must agree
            disable_dropout(self.model)
        if stage == "fit" and self.ref_kind is None:  # the reference is the starting policy
            self.ref_kind, self.ref_model = build_reference(self.model, self.hparams.get("reference", "auto"),
                                                            no_dropout=self.hparams.disable_dropout)

    def _seq_logps(self, model, batch) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logprobs(logits, batch["input_ids"], batch["loss_mask"])

    def training_step(self, batch, batch_idx):
        n = batch["input_ids"].shape[0] // 2
        lp = self._seq_logps(self.model, batch)
        with torch.no_grad(), reference_model(self.model, self.ref_kind, self.ref_model) as ref_model:
            ref = self._seq_logps(ref_model, batch)
        losses, rc, rr = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], beta=self.hparams.beta,
                                  label_smoothing=self.hparams.label_smoothing)
        loss = losses.mean()
        if self.hparams.sft_weight:
            toks = batch["loss_mask"][:n, 1:].sum().clamp(min=1)
            loss = loss - self.hparams.sft_weight * lp[:n].sum() / toks
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": float(v) for k, v in dpo_metrics(rc, rr).items()}, batch_size=n)
        return loss
