"""The RL update's cost with and without its plan (taosr.rl.update_plan): seconds of one GRPO update
(forward and backward over every kept row of a rollout batch, micro-batched) when the kept rows go
in rollout order, when groups are sorted by length (micro-batches trimmed to their longest
completion), and when each distinct completion of a group is computed once and weighted by its
copies (the default), on the same rollouts, with the largest gradient difference to the first.

    python benchmarks/update_plan.py --model runs/quickstart/dpo/export    # the RL configs' shape
    python benchmarks/update_plan.py                                       # tiny preset, from scratch

Rollouts have the RL configs' shape (``--prompts`` 8 x ``--G`` 8, temperature 1.3, up to 96 new
tokens) on held-out prompts; outcome rewards (correct label, valid format) give GRPO's advantages
and the groups without reward spread are dropped, as in training. The plans take each batch in
turn (the order alternates), so drift of the machine hits all alike; the table has the mean
seconds per update and the mean of the per-batch ratios with its standard error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def rollout_batch(model, tok, batch, rows, spec, seed: int, all_groups: bool = False):
    """A scored Rollout of one prompt batch and its GRPO advantages and kept rows."""
    import torch

    from taosr.eval.generation import completion_lengths
    from taosr.reasoning.format import parse_reasoning
    from taosr.rl.advantages import group_advantages, zero_spread_mask
    from taosr.rl.engines.hf import sample_shared_prefix
    from taosr.rl.rewards import OutcomeRewardSpec, outcome_rewards
    from taosr.rl.rollout import Rollout

    G = spec.num_return_sequences
    torch.manual_seed(seed)
    ids = sample_shared_prefix(model, tok, batch["input_ids"], batch["attention_mask"], spec)
    n = completion_lengths(ids, tok.eos_token_id, tok.pad_token_id)
    mask = (torch.arange(ids.shape[1])[None, :] < n[:, None]).long()
    texts = tok.batch_decode(ids.masked_fill(mask == 0, tok.pad_token_id), skip_special_tokens=True)
    gold = [rows[int(i)].label for i in batch["index"].repeat_interleave(G)]
    reward = outcome_rewards([parse_reasoning(t) for t in texts], gold, OutcomeRewardSpec())["reward"]
    r = Rollout(spec=spec, prompt_ids=batch["input_ids"].repeat_interleave(G, 0),
                prompt_mask=batch["attention_mask"].repeat_interleave(G, 0), completion_ids=ids, completion_mask=mask,
                texts=texts, example_index=batch["index"].repeat_interleave(G), clipped=n >= spec.max_new_tokens)
    keep = torch.arange(len(reward)) if all_groups else (~zero_spread_mask(reward, G)).nonzero().flatten()
    return r, group_advantages(reward, G, scale_std=True), keep


def main() -> None:
    import torch

    from eval_generation import add_rollout_options, load_with_data, ratio_text
    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule
    from taosr.rl.update_plan import UpdatePlan, plan_update

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rollout_options(p, batches=6)
    p.add_argument("--micro-batch", type=int, default=32, help="model.init_args.micro_batch_size")
    p.add_argument("--all-groups", action="store_true",
                   help="keep groups without reward spread too (dynamic_sampling: false; a model from scratch has none)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    workdir = tempfile.mkdtemp(prefix="taosr-update-plan-")
    model, tok, dm = load_with_data(argparse.Namespace(model=a.model, batch=a.prompts, batches=a.batches), workdir)
    loader, rows = list(dm.test_dataloader()), dm.splits["test"]
    spec = GenerationSpec(max_new_tokens=a.new, do_sample=True, temperature=a.temperature, num_return_sequences=a.G)
    module = GRPOModule(micro_batch_size=a.micro_batch)
    module.model = model
    module.manual_backward = lambda loss: loss.backward()

    def in_rollout_order(r, keep, adv) -> UpdatePlan:
        n, mb = len(keep), a.micro_batch
        return UpdatePlan(rows=keep, weight=torch.ones(n), inverse=torch.arange(n),
                          micro_batches=[slice(s, min(s + mb, n)) for s in range(0, n, mb)])

    plans = {"rollout order": in_rollout_order,
             "groups sorted by length": lambda r, keep, adv: plan_update(
                 r.completion_ids, r.completion_mask, keep, r.group_size, a.micro_batch, adv, dedup=False),
             "+ repeats computed once (default)": lambda r, keep, adv: plan_update(
                 r.completion_ids, r.completion_mask, keep, r.group_size, a.micro_batch, adv)}
    secs = {k: [] for k in plans}
    computed = {k: [] for k in plans}
    grad_diff = {k: 0.0 for k in plans}
    kept, lengths = [], []
    for i, b in enumerate(loader[: a.batches]):
        r, adv, keep = rollout_batch(model, tok, b, rows, spec, seed=i, all_groups=a.all_groups)
        if not len(keep):
            continue
        kept.append(len(keep))
        lengths.append(float(r.completion_mask.sum(1).float().mean()))
        mask = r.completion_mask.float()
        num_tokens, num_seqs = float(mask[keep].sum()), float(len(keep))
        model.train()
        grads = {}
        for k in (list(plans) if i % 2 else list(plans)[::-1]):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            plan = plans[k](r, keep, adv)
            module._accumulate(r, plan, adv, num_tokens, num_seqs)
            secs[k].append(time.perf_counter() - t0)
            computed[k].append(len(plan.rows))
            grads[k] = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
        base = grads["rollout order"]
        for k, g in grads.items():
            grad_diff[k] = max(grad_diff[k], float((g - base).abs().max() / base.abs().max().clamp(min=1e-30)))
    if not kept:
        print("no rollout batch had reward spread: nothing to update (try more --batches, or --all-groups)")
        return
    base = secs["rollout order"]
    print(f"\nGRPO update ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), model {a.model}, "
          f"{len(base)} rollout batches of {a.prompts} prompts x G = {a.G} at temperature {a.temperature}, "
          f"{statistics.mean(kept):.1f} rows kept and {statistics.mean(lengths):.1f} tokens per completion on average, "
          f"micro-batches of {a.micro_batch}; torch {torch.__version__}\n")
    print("| update plan | s / update | ratio to rollout order (mean ± s.e. over batches) | rows computed | "
          "largest gradient difference (relative to the largest gradient) |")
    print("|---|---|---|---|---|")
    for k, v in secs.items():
        print(f"| {k} | {statistics.mean(v):.2f} | {ratio_text(v, base)} | "
              f"{statistics.mean(computed[k]):.1f} | {grad_diff[k]:.1e} |")


if __name__ == "__main__":
    main()
