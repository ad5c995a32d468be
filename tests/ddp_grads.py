"""Run by tests/test_ddp.py: ``python tests/ddp_grads.py OUT DEVICES``. Two GRPO updates of a tiny
Llama, each on one fixed rollout batch (4 prompts x G = 4, ragged completions, one group without
reward spread, rewards given), in DEVICES processes (Lightning DDP under gloo: each rank the rows of
its own two prompts) or in one process (DEVICES = 1: every row). Micro-batches of 3 rows, so each
rank runs several backward passes inside ``no_sync`` and one synchronised one. Rank 0 saves the
gradients each update applies (after DDP's all-reduce) to OUT."""
import os
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from taosr.eval.generation import GenerationSpec
from taosr.methods.grpo import GRPOModule
from taosr.rl.rollout import Rollout

G, PROMPTS, P, L, V = 4, 4, 7, 6, 50


def fixed_rollout(step: int, rows: slice) -> Rollout:
    g = torch.Generator().manual_seed(100 + step)
    prompt_ids = torch.randint(3, V, (PROMPTS, P), generator=g)
    prompt_mask = torch.ones(PROMPTS, P, dtype=torch.long)
    prompt_mask[1, :3] = prompt_mask[2, :1] = 0  # left padding
    comp = torch.randint(3, V, (PROMPTS * G, L), generator=g)
    lengths = torch.randint(2, L + 1, (PROMPTS * G,), generator=g)
    cmask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    reward = torch.rand(PROMPTS * G, generator=g)
    reward[8:12] = 0.5  # prompt 2: no reward spread (dropped by dynamic sampling)
    spec = GenerationSpec(max_new_tokens=L, do_sample=True, temperature=1.0, num_return_sequences=G)
    r = Rollout(spec=spec, prompt_ids=prompt_ids.repeat_interleave(G, 0)[rows],
                prompt_mask=prompt_mask.repeat_interleave(G, 0)[rows], completion_ids=comp[rows],
                completion_mask=cmask[rows], texts=[""] * (rows.stop - rows.start),
                example_index=torch.arange(PROMPTS).repeat_interleave(G)[rows],
                clipped=torch.zeros(rows.stop - rows.start, dtype=torch.bool))
    r.reward, r.correct, r.format = reward[rows], (reward[rows] > 0.5).float(), torch.ones(rows.stop - rows.start)
    return r


class TinyGRPO(GRPOModule):
    def setup(self, stage: str) -> None:
        if self.model is None:
            torch.manual_seed(0)
            self.model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2, max_position_embeddings=64)).train()
        super().setup(stage)

    def train_dataloader(self):
        return DataLoader([{"index": torch.tensor(i)} for i in range(8)], batch_size=1)


class FixedRolloutAndGrads(pl.Callback):
    def __init__(self, out: str):
        self.out, self.grads = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        per_rank = PROMPTS * G // trainer.world_size
        rank = trainer.global_rank
        batch["rollout"] = fixed_rollout(trainer.global_step, slice(rank * per_rank, (rank + 1) * per_rank))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()})

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(self.grads, self.out)


def main(out: str, devices: int) -> None:
    pl.seed_everything(0)
    module = TinyGRPO(lr=1e-2, export_dir=None, micro_batch_size=3, table_every=0, max_grad_norm=1e6)
    kw = dict(strategy="ddp", devices=devices) if devices > 1 else dict(devices=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[FixedRolloutAndGrads(out)], default_root_dir=os.path.dirname(out), **kw)
    trainer.fit(module)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
