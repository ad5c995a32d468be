"""SFT: next-token loss on the reasoning + label, prompt tokens masked (DataModule view ``sft``)."""
from __future__ import annotations

from taosr.losses.sft import sft_loss
from taosr.methods.base import RelevanceModule


class SFTModule(RelevanceModule):
    DATA_VIEW = "sft"  # the DataModule view it trains on (data.view)

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # Targets are the inputs themselves, unless the view supplies others (the GRM view's verdicts).
        loss = sft_loss(out.logits, batch.get("targets", batch["input_ids"]), batch["loss_mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/tokens", batch["loss_mask"].sum().float(), reduce_fx="sum", batch_size=1)
        return loss
