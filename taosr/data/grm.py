"""GRM view: training rows for the generative stepwise reward model (layout in :mod:`taosr.rl.grm`).

Rows come from (a) gold reasoning with controlled corruptions — each step's conclusion is swapped
for another example's conclusion of the same step with probability ``corrupt_prob`` (at least one
clean and some corrupted rows per example), verdict "wrong" exactly where the conclusion changed;
and (b) policy samples from ``data.samples_path`` labelled by the offline verifier (only steps the
verifier covers; rows with an uncovered step are not used for training).
"""
from __future__ import annotations

import random

from taosr.labels import STEP_KEYS
from taosr.reasoning.format import conclusion, parse_reasoning


def swap_conclusion(step_text: str, new_conclusion: str) -> str:
    """The step with its conclusion replaced and its evidence kept (``evidence => conclusion``), so a
    corrupted step looks like a policy's mistake, not like a different format."""
    head = step_text.split(" | ", 1)[0]
    if "=>" in head:
        return head.rsplit("=>", 1)[0].rstrip() + " => " + new_conclusion
    return new_conclusion


def corrupt_steps(ex, pool: dict[str, list[str]], rng: random.Random, corrupt_prob: float = 0.3):
    """(steps, verdicts): a copy of the gold steps with some conclusions swapped for another
    example's conclusion of the same step (evidence kept); verdict wrong exactly there."""
    steps, verdicts = dict(ex.steps), {}
    for k in STEP_KEYS:
        if rng.random() < corrupt_prob:
            gold = conclusion(ex.steps[k])
            alts = [c for c in pool[k] if c != gold]
            if alts:
                steps[k] = swap_conclusion(ex.steps[k], rng.choice(alts))
                verdicts[k] = False
                continue
        verdicts[k] = True
    return steps, verdicts


def build_grm_rows(dm, corrupt_prob: float = 0.3, copies: int = 2) -> list[tuple]:
    from taosr.reasoning.verifier import verify_steps

    rng = random.Random(dm.seed)
    train = [ex for ex in dm.splits["train"] if ex.steps and len(ex.steps) == 5]
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in train}) for k in STEP_KEYS}
    rows = []
    for ex in train:
        rows.append((ex, dict(ex.steps), {k: True for k in STEP_KEYS}))
        for _ in range(copies):
            steps, verdicts = corrupt_steps(ex, pool, rng, corrupt_prob)
            rows.append((ex, steps, verdicts))
    if dm.samples_path:
        from taosr.data.samples import load_samples

        for row in load_samples(dm.samples_path):
            ex = row["example"]
            for s in row["samples"]:
                p = parse_reasoning(s["text"])
                v = verify_steps(p, ex.annotations)
                if all(v[k] is not None for k in STEP_KEYS) and not p.missing_steps:
                    rows.append((ex, p.steps, {k: v[k] >= 0.5 for k in STEP_KEYS}))
    return rows


def collate_grm(dm, batch: list[tuple]) -> dict:
    """The GRM input of each row (:func:`taosr.rl.grm.encode_candidate`) + eos, with ``targets``:
    the input, except that the token after each verdict slot is that step's verdict (right or
    wrong). The loss is on those decision tokens only."""
    from taosr.data.collate import pad_right
    from taosr.reasoning.grm_layout import encode_candidate, verdict_slot

    dm._need_tokenizer()
    tok = dm.tokenizer
    _, right, wrong = verdict_slot(tok)
    enc, targets = [], []
    for ex, steps, v in batch:
        ids, positions = encode_candidate(tok, ex, steps)
        full = (ids + [tok.eos_token_id])[: dm.max_length]
        tgt, mask = list(full), [0] * len(full)
        for k, p in zip(STEP_KEYS, positions):
            if p + 1 < len(full):
                tgt[p + 1], mask[p + 1] = (right if v[k] else wrong), 1
        if sum(mask) < len(STEP_KEYS):  # a verdict slot fell beyond max_length: counted, reported
            dm.note_cut(dm.targets_cut, ex, "GRM verdicts beyond the budget are not trained on")
        enc.append((full, mask))
        targets.append(tgt)
    out = pad_right(enc, tok.pad_token_id)
    out["targets"] = pad_right([(t, []) for t in targets], tok.pad_token_id)["input_ids"]
    return out
