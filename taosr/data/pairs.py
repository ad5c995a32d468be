"""DPO view: preference pairs from ``taosr sample`` output.

For prompts with both correct and incorrect samples: chosen = a correct sample, rejected = an
incorrect one (``pairs_per_prompt`` pairs, distinct texts first). For prompts never answered
correctly, the target's gold completion stands in as chosen when ``gold_as_chosen`` is on and the
example has one (``reasoning``: gold steps; ``label``: always, the ``Label: N`` line). Prompts
answered correctly every time give no pair. The samples must come from a policy of the same
target (``taosr sample --target``).
"""
from __future__ import annotations

import random

from taosr.errors import ConfigError
from taosr.reasoning.targets import get_target


def pairs_from_samples(rows: list[dict], pairs_per_prompt: int = 1, gold_as_chosen: bool = True,
                       seed: int = 0, target: str = "reasoning") -> list[tuple]:
    gold = get_target(target).gold
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        ex = row["example"]
        good = list(dict.fromkeys(s["text"] for s in row["samples"] if s["correct"]))
        bad = list(dict.fromkeys(s["text"] for s in row["samples"] if not s["correct"]))
        if not bad:
            continue
        if not good and gold_as_chosen and (g := gold(ex)) is not None:
            good = [g]
        if not good:
            continue
        rng.shuffle(good)
        rng.shuffle(bad)
        for k in range(min(pairs_per_prompt, max(len(good), len(bad)))):
            pairs.append((ex, good[k % len(good)], bad[k % len(bad)]))
    return pairs


def build_pairs(dm) -> list[tuple]:
    from taosr.data.samples import load_samples

    if not dm.samples_path:
        raise ConfigError("data.samples_path: the DPO view needs a `taosr sample` output file")
    rows = load_samples(dm.samples_path, dm.target)
    pairs = pairs_from_samples(rows, dm.pairs_per_prompt, dm.gold_as_chosen, dm.seed, dm.target)
    if not pairs:
        raise ConfigError(f"data.samples_path: {dm.samples_path} yields no preference pairs "
                          "(no prompt has an incorrect sample)")
    return pairs


def collate_dpo(dm, batch: list[tuple]) -> dict:
    """Chosen rows first, then rejected rows, in one right-padded batch."""
    from taosr.data.collate import pad_right

    dm._need_tokenizer()
    # One prompt per pair (fitted for the longer of the two), so chosen and rejected share it.
    both = [dm.encode_example(ex, [c, r]) for ex, c, r in batch]
    return pad_right([b[0] for b in both] + [b[1] for b in both], dm.tokenizer.pad_token_id)
