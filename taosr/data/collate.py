"""Padding helpers shared by the DataModule's views: right padding for training targets, left
padding for prompts that are generated from."""
from __future__ import annotations

import torch


def pad_right(enc: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(enc), T), dtype=torch.long)
    lm = torch.zeros((len(enc), T), dtype=torch.long)
    for r, (i, m) in enumerate(enc):
        ids[r, : len(i)] = torch.tensor(i)
        att[r, : len(i)] = 1
        lm[r, : len(m)] = torch.tensor(m)
    return {"input_ids": ids, "attention_mask": att, "loss_mask": lm}


def pad_left(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, T - len(s):] = torch.tensor(s)
        att[r, T - len(s):] = 1
    return {"input_ids": ids, "attention_mask": att}
