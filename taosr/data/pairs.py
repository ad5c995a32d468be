"""DPO view: preference pairs from ``taosr sample`` output.

For prompts with both correct and incorrect samples: chosen = a correct sample, rejected = an
incorrect one (``pairs_per_prompt`` pairs, distinct texts first). For prompts never answered
correctly, the target's gold completion stands in as chosen when ``gold_as_chosen`` is on and the
example has one (``reasoning``: gold steps; ``label``: always, the ``Label: N`` line). Prompts
answered correctly every time give no pair. The samples must come from a policy of the same
target (``taosr sample --target``), and only those of training examples are used
(:func:`training_samples`).
"""
from __future__ import annotations

import random
from collections import Counter

from taosr.errors import ConfigError
from taosr.reasoning.targets import get_target


def training_samples(dm, rows: list[dict], view: str) -> list[dict]:
    """The rows of a samples file (``dm.samples_path``) that may be trained on: their example is in
    the DataModule's training split (matched by id, query and item title, or by query and title
    for a row without an id: :class:`taosr.data.samples.ExampleIndex`, which refuses a fallback
    that names several examples) and their ``split`` field, where present, is ``train``. Samples of
    validation or test prompts (``taosr sample --split test``) or of other data (another synthetic
    size) would put held-out examples into training. A kept row carries the DataModule's example, not
    the file's copy: the run's annotation settings (a held-out regime without steps, a lower
    annotation share) decide the gold chosen and the GRM's verdicts, not those of the sampled data.
    One line says how many rows were left out and why; a file with no row left is refused
    (ConfigError naming it)."""
    from taosr.data.samples import ExampleIndex

    train = ExampleIndex(dm.splits["train"], f"data.samples_path: {dm.samples_path}")
    kept, other_split, outside = [], Counter(), 0
    for n, row in enumerate(rows, 1):
        split = row.get("split")
        if split is not None and split != "train":
            other_split[str(split)] += 1
        elif (ex := train.find(row["example"], f"sampled prompt {n}")) is None:
            outside += 1
        else:  # the run's own example: its annotations, not those the file was sampled with
            kept.append({**row, "example": ex})
    why = [f"{n} of split {s!r}" for s, n in sorted(other_split.items())]
    why += [f"{outside} whose example is not in data.train"] if outside else []
    if not kept:
        raise ConfigError(f"data.samples_path: {dm.samples_path} has no sample of a training example "
                          f"({'; '.join(why)}): sample this run's training data with `taosr sample --split train`")
    if why:
        print(f"taosr: {view}: kept {len(kept)}/{len(rows)} sampled prompts of {dm.samples_path} "
              f"({'; '.join(why)} were left out: only training examples are trained on)")
    return kept


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
    rows = training_samples(dm, load_samples(dm.samples_path, dm.target, "data.samples_path (the DPO view's pairs)"),
                            "DPO view")
    pairs = pairs_from_samples(rows, dm.pairs_per_prompt, dm.gold_as_chosen, dm.seed, dm.target)
    if not pairs:
        raise ConfigError(f"data.samples_path: {dm.samples_path} yields no preference pairs "
                          "(no prompt has an incorrect sample)")
    prompts = len({id(ex) for ex, _, _ in pairs})
    print(f"taosr: DPO view: {len(pairs)} preference pairs from {prompts} of the {len(dm.splits['train'])} training "
          f"examples ({len(rows)} sampled in {dm.samples_path}; a prompt gives pairs when one of its samples is wrong"
          f"{' and one right or its gold reasoning can be chosen' if dm.gold_as_chosen else ' and one right'})")
    return pairs


def collate_dpo(dm, batch: list[tuple]) -> dict:
    """Chosen rows first, then rejected rows, in one right-padded batch."""
    from taosr.data.collate import pad_right

    dm._need_tokenizer()
    # One prompt per pair (fitted for the longer of the two), so chosen and rejected share it.
    both = [dm.encode_example(ex, [c, r]) for ex, c, r in batch]
    return pad_right([b[0] for b in both] + [b[1] for b in both], dm.tokenizer.pad_token_id)
