"""Which rows an RL update computes, in what order and in which micro-batches (pure).

A group's G completions often repeat one another (a small or near-deterministic policy writes the
same reasoning several times: 5 distinct of 8 in the embedded default's kept groups at temperature
1.3). Two rows with the same prompt, the same completion tokens and the same advantages have the
same log-probs, the same per-token loss and the same gradient, so the update computes one of them
and weights its loss by how many it stands for (:func:`plan_update`, ``dedup``). The loss, its
gradient and every normaliser are those of the full batch (the counts that normalise it are taken
over all kept rows, as before); only the floating-point summation order differs.

Micro-batches are cut from the representative rows ordered by their group's longest completion
(longest first), groups kept together, so that each micro-batch, trimmed to its own longest
completion (:func:`trimmed_width`), carries little padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UpdatePlan:
    rows: torch.Tensor           # (U,) representative rows, in update order
    weight: torch.Tensor         # (U,) float: how many of the planned rows each stands for
    inverse: torch.Tensor        # (len(input rows),) position in ``rows`` of each input row's representative
    micro_batches: list[slice]   # consecutive slices of ``rows``, each at most micro_batch_size long
    inputs: torch.Tensor | None = None  # (len(input rows),) the rows planned, in the order ``inverse`` follows

    @property
    def duplicates(self) -> int:
        """Rows left out because another row stands for them."""
        return int(self.inverse.numel()) - int(self.rows.numel())


def plan_update(completion_ids: torch.Tensor, completion_mask: torch.Tensor, rows: torch.Tensor, group_size: int,
                micro_batch_size: int, advantages: torch.Tensor | None = None, dedup: bool = True) -> UpdatePlan:
    """Plan the update of ``rows`` (indices into a rollout whose G completions of a prompt are
    contiguous, so row // G is the prompt). With ``dedup`` a row whose group already holds a row
    with the same completion tokens (up to its length) and the same ``advantages`` row (sequence
    or per-token) is represented by that earlier row. Groups are ordered by their longest
    completion, longest first (ties: rollout order); rows keep rollout order within a group."""
    rows = rows.detach().flatten().cpu().long()
    lengths = completion_mask.detach().sum(-1).cpu().tolist()
    ids = completion_ids.detach().cpu()
    adv = advantages.detach().float().cpu() if advantages is not None else None
    G = max(1, int(group_size))
    reps: dict[int, list[int]] = {}          # group -> representative rows, first occurrence order
    seen: dict[tuple, int] = {}              # key -> representative row
    rep_of: list[int] = []
    count: dict[int, int] = {}
    for row in rows.tolist():
        n = int(lengths[row])
        key = None
        if dedup:
            a = adv[row] if adv is not None else None
            a = a[:n] if a is not None and a.dim() == 1 and a.numel() == ids.shape[1] else a
            key = (row // G, n, tuple(ids[row, :n].tolist()), None if a is None else a.numpy().tobytes())
        rep = seen.get(key) if key is not None else None
        if rep is None:
            rep = row
            if key is not None:
                seen[key] = row
            reps.setdefault(row // G, []).append(row)
        rep_of.append(rep)
        count[rep] = count.get(rep, 0) + 1
    longest = {g: max(int(lengths[r]) for r in rs) for g, rs in reps.items()}
    order = sorted(reps, key=lambda g: -longest[g])  # stable: ties keep rollout order
    ordered = [r for g in order for r in reps[g]]
    position = {r: i for i, r in enumerate(ordered)}
    mb = max(1, int(micro_batch_size))
    dev = completion_ids.device
    return UpdatePlan(rows=torch.tensor(ordered, dtype=torch.long, device=dev),
                      weight=torch.tensor([float(count[r]) for r in ordered], device=dev),
                      inverse=torch.tensor([position[r] for r in rep_of], dtype=torch.long, device=dev),
                      micro_batches=[slice(s, min(s + mb, len(ordered))) for s in range(0, len(ordered), mb)],
                      inputs=rows.to(dev))


def mean_over_copies(plan: UpdatePlan, values: torch.Tensor) -> torch.Tensor:
    """(U, ...) the mean of ``values`` (one row per planned input row, ``plan.inputs`` order) over the
    rows each representative stands for. A quantity the loss is linear in and that may differ
    between copies (the sampler-mismatch weights: an engine's log-probs of equal tokens can differ
    in the last bits) is exact this way: the representative's loss times its copies times their mean
    weight is the sum of the copies' weighted losses."""
    out = torch.zeros((len(plan.rows), *values.shape[1:]), dtype=values.dtype, device=values.device)
    out.index_add_(0, plan.inverse.to(values.device), values)
    return out / plan.weight.to(values.device, values.dtype).view(-1, *[1] * (values.dim() - 1))


def trimmed_width(completion_mask: torch.Tensor) -> int:
    """Columns a batch of right-padded completions needs: its longest completion (at least 1)."""
    return max(1, int(completion_mask.sum(-1).max())) if completion_mask.numel() else 1
