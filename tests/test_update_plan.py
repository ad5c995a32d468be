"""The update plan (taosr.rl.update_plan) on hand-made rollouts: which rows are computed, the copies
each stands for, the order and the micro-batches."""
import torch

from taosr.rl.update_plan import plan_update, trimmed_width

PAD = 0


def _batch(rows_tokens):
    """Right-padded ids and mask from lists of tokens."""
    T = max(len(t) for t in rows_tokens)
    ids = torch.full((len(rows_tokens), T), PAD)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(rows_tokens):
        ids[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    return ids, mask


# two prompts x G = 4: rows 1 and 3 repeat row 0; row 5 repeats row 4; row 6 has row 4's tokens
# plus one more (a different completion); group 1's longest completion (4 tokens) beats group 0's (3)
TOKENS = [[5, 6, 7], [5, 6, 7], [5, 6], [5, 6, 7], [8, 9], [8, 9], [8, 9, 4, 3], [5, 6, 7]]


def test_repeats_of_a_group_are_computed_once_and_weighted():
    ids, mask = _batch(TOKENS)
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0, 0.5, 0.5, -0.5, 2.0])
    plan = plan_update(ids, mask, torch.arange(8), group_size=4, micro_batch_size=3, advantages=adv)
    # group 1 first (longest 4 tokens), rollout order within groups; row 7 = row 0's tokens in another group
    assert plan.rows.tolist() == [4, 6, 7, 0, 2]
    assert plan.weight.tolist() == [2.0, 1.0, 1.0, 3.0, 1.0]
    assert plan.duplicates == 3
    assert plan.rows[plan.inverse].tolist() == [0, 0, 2, 0, 4, 4, 6, 7]
    assert plan.micro_batches == [slice(0, 3), slice(3, 5)]
    assert float(plan.weight.sum()) == 8.0


def test_equal_tokens_with_different_advantages_are_kept_apart():
    ids, mask = _batch(TOKENS)
    adv = torch.tensor([1.0, 0.9, -1.0, 1.0, 0.5, 0.5, -0.5, 2.0])
    plan = plan_update(ids, mask, torch.arange(4), group_size=4, micro_batch_size=8, advantages=adv)
    assert plan.rows.tolist() == [0, 1, 2]
    assert plan.weight.tolist() == [2.0, 1.0, 1.0]


def test_per_token_advantages_compare_over_the_completion_only():
    ids, mask = _batch(TOKENS)
    adv = torch.zeros(8, ids.shape[1])
    adv[0, :3] = adv[1, :3] = 0.25
    adv[1, 3] = 9.0  # past row 1's end: padding, not compared
    adv[3, :3] = torch.tensor([0.25, 0.25, 0.5])  # a different step advantage: its own row
    plan = plan_update(ids, mask, torch.arange(4), group_size=4, micro_batch_size=8, advantages=adv)
    assert plan.rows.tolist() == [0, 2, 3]
    assert plan.weight.tolist() == [2.0, 1.0, 1.0]


def test_without_dedup_every_row_is_computed_once():
    ids, mask = _batch(TOKENS)
    rows = torch.tensor([0, 1, 4, 5, 6])
    plan = plan_update(ids, mask, rows, group_size=4, micro_batch_size=2, dedup=False)
    assert plan.rows.tolist() == [4, 5, 6, 0, 1]
    assert plan.weight.tolist() == [1.0] * 5 and plan.duplicates == 0
    assert plan.rows[plan.inverse].tolist() == rows.tolist()
    assert plan.micro_batches == [slice(0, 2), slice(2, 4), slice(4, 5)]


def test_only_the_given_rows_are_planned():
    ids, mask = _batch(TOKENS)
    plan = plan_update(ids, mask, torch.tensor([2, 3]), group_size=4, micro_batch_size=4)
    assert plan.rows.tolist() == [2, 3] and plan.weight.tolist() == [1.0, 1.0]
    empty = plan_update(ids, mask, torch.tensor([], dtype=torch.long), group_size=4, micro_batch_size=4)
    assert empty.rows.numel() == 0 and empty.micro_batches == []


def test_trimmed_width():
    _, mask = _batch(TOKENS)
    assert trimmed_width(mask) == 4
    assert trimmed_width(mask[:4]) == 3
    assert trimmed_width(torch.zeros(2, 5, dtype=torch.long)) == 1
