"""GRM view: training rows for the generative stepwise reward model (layout in :mod:`taosr.rl.grm`).

Rows come from (a) gold reasoning with controlled corruptions — each step's conclusion is swapped
for another example's conclusion of the same step with probability ``corrupt_prob`` (at least one
clean and some corrupted rows per example), and, with ``data.grm_corrupt_evidence``, a decision
step's evidence part for another example's (conclusion kept) — verdict "wrong" exactly where a
step changed;
and (b) policy samples from ``data.samples_path`` labelled by the offline verifier, as
``data.grm_samples`` (:class:`GRMSamples`) says: ``steps: all`` (default) uses a sample only when the
verifier covers all five of its steps (few where examples are annotated step by step: 40 of the
quick start's 2400 samples; the view's line counts the samples left unused and why, and what
``covered`` would use); ``steps: covered`` uses every covered step of every distinct
sample (an uncovered step carries no loss), ``balance`` evens out right and wrong verdicts per step
(policy samples are mostly right: without it the GRM learns to say "right"), ``copies`` repeats the
policy rows against the gold rows, and ``holdout`` keeps a share of the sampled queries out of
training for the GRM's validation on policy samples (:func:`policy_split`): their samples, and the
gold rows of their training examples. Only the samples of training examples are used
(:func:`taosr.data.pairs.training_samples`). Each input is fitted to ``data.max_length`` as the
scorer fits it (:func:`collate_grm`).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from taosr.errors import ConfigError
from taosr.labels import STEP_KEYS
from taosr.data.synth import DECISION_STEPS
from taosr.reasoning.format import conclusion, normalize, parse_reasoning


def swap_conclusion(step_text: str, new_conclusion: str) -> str:
    """The step with its conclusion replaced and its evidence kept (``evidence => conclusion``), so a
    corrupted step looks like a policy's mistake, not like a different format."""
    head = step_text.split(" | ", 1)[0]
    if "=>" in head:
        return head.rsplit("=>", 1)[0].rstrip() + " => " + new_conclusion
    return new_conclusion


def evidence_parts(step_text: str) -> list[str] | None:
    """The ``;``-separated evidence parts a step states before its conclusion, in order (None
    when it states none)."""
    head = step_text.split(" | ", 1)[0]
    if "=>" not in head:
        return None
    return [p.strip() for p in head.rsplit("=>", 1)[0].split(";")]


def evidence_pool(examples) -> dict[str, list[list[str]]]:
    """Per decision step, per evidence position, the parts the examples' gold steps state there
    (sorted, distinct): what :func:`swap_evidence_part` draws a wrong part from."""
    pool: dict[str, list[set]] = {k: [] for k in DECISION_STEPS}
    for ex in examples:
        for k in DECISION_STEPS:
            for i, part in enumerate(evidence_parts(ex.steps.get(k, "")) or []):
                while len(pool[k]) <= i:
                    pool[k].append(set())
                pool[k][i].add(part)
    return {k: [sorted(s) for s in parts] for k, parts in pool.items()}


def swap_evidence_part(step_text: str, parts_pool: list[list[str]], rng: random.Random) -> str | None:
    """The step with one evidence part replaced by another example's part at the same position and
    its conclusion kept (``coffee maker vs coffee maker; kitchen appliances vs ... => exact`` with
    ``kitchen appliances`` put for ``floor cleaning``): the policy's usual evidence mistake, a right
    conclusion reached from a wrong fact. None when the step states no evidence or no other part
    is known for the position drawn."""
    parts = evidence_parts(step_text)
    if not parts:
        return None
    i = rng.randrange(len(parts))
    alts = [p for p in (parts_pool[i] if i < len(parts_pool) else []) if normalize(p) != normalize(parts[i])]
    if not alts:
        return None
    parts[i] = rng.choice(alts)
    return "; ".join(parts) + " => " + conclusion(step_text)


def corrupt_steps(ex, pool: dict[str, list[str]], rng: random.Random, corrupt_prob: float = 0.3,
                  evidence_prob: float = 0.0, ev_pool: dict[str, list[list[str]]] | None = None):
    """(steps, verdicts): a copy of the gold steps with some conclusions swapped for another
    example's conclusion of the same step (evidence kept); verdict wrong exactly there. With
    ``evidence_prob``, a decision step whose conclusion was kept has one evidence part swapped
    (:func:`swap_evidence_part`, from ``ev_pool``) with that probability, and is wrong too (no draw
    is made when it is 0: the rows of the default are as before)."""
    steps, verdicts = dict(ex.steps), {}
    for k in STEP_KEYS:
        if rng.random() < corrupt_prob:
            gold = conclusion(ex.steps[k])
            alts = [c for c in pool[k] if c != gold]
            if alts:
                steps[k] = swap_conclusion(ex.steps[k], rng.choice(alts))
                verdicts[k] = False
                continue
        if evidence_prob > 0 and k in DECISION_STEPS and rng.random() < evidence_prob:
            swapped = swap_evidence_part(ex.steps[k], (ev_pool or {}).get(k, []), rng)
            if swapped is not None:
                steps[k], verdicts[k] = swapped, False
                continue
        verdicts[k] = True
    return steps, verdicts


def build_grm_rows(dm, corrupt_prob: float = 0.3, copies: int = 2, evidence_prob: float = 0.0) -> list[tuple]:
    """The GRM's training rows: per training example with five gold steps, the clean gold and
    ``copies`` corrupted copies; then the policy rows (:func:`policy_rows_split`) ``spec.copies``
    times. With ``data.grm_samples.holdout`` the examples of the held-out queries give no gold row
    either (:func:`held_out_queries`): validation scores the GRM on their samples, whose gold steps
    it must not have been trained on."""
    spec = dm.grm_samples
    train_rows, val_rows = policy_rows_split(dm)  # (refuses data.grm_samples without data.samples_path)
    held = held_out_queries(dm)
    rng = random.Random(dm.seed)
    gold5 = [ex for ex in dm.splits["train"] if ex.steps and len(ex.steps) == 5]
    train = [ex for ex in gold5 if ex.query not in held]
    pool = {k: sorted({conclusion(ex.steps[k]) for ex in train}) for k in STEP_KEYS}
    ev_pool = evidence_pool(train) if evidence_prob > 0 else None
    rows = []
    for ex in train:
        rows.append((ex, dict(ex.steps), {k: True for k in STEP_KEYS}))
        for _ in range(copies):
            steps, verdicts = corrupt_steps(ex, pool, rng, corrupt_prob, evidence_prob, ev_pool)
            rows.append((ex, steps, verdicts))
    if spec.balance:
        before = len(train_rows)
        train_rows = balance_verdicts(train_rows, random.Random(dm.seed + 1))
        unbalanced = before - len(train_rows)
    if dm.samples_path:
        print(policy_line(spec, _policy_data(dm)[3], train_rows, val_rows, len(rows),
                          unbalanced if spec.balance else 0, len(held), len(gold5) - len(train)))
    return rows + train_rows * spec.copies


def policy_line(spec: GRMSamples, counts: Counter, train_rows: list, val_rows: list, n_gold: int,
                unbalanced: int, n_held: int, n_held_examples: int) -> str:
    """The GRM view's one line on the policy samples: how many sampled completions became rows,
    how many did not and why (nothing of the samples file is left unused unsaid)."""
    read = counts["read"]
    used = read - sum(counts[k] for k in ("not all five steps covered", "repeats", "no covered step"))
    why = [f"{counts[k]} {k}" for k in ("not all five steps covered", "repeats", "no covered step") if counts[k]]
    line = (f"taosr: GRM view: policy samples (steps: {spec.steps}): {used} of {read} sampled completions "
            f"({counts['used_prompts']} of {counts['prompts']} training prompts) used")
    if why:
        line += f"; {read - used} unused: {', '.join(why)}"
        if spec.steps == "all" and counts["not all five steps covered"]:
            line += (f" by the verifier (`--data.grm_samples.steps covered` would use {counts['covered_would_use']} "
                     "distinct samples, each on its covered steps)")
    n = sum(v is not None for _, _, vs in train_rows for v in vs.values())
    line += (f"; {len(train_rows)} training rows ({n} verified step verdicts"
             + (f", balanced: {unbalanced} rows left with no verdict dropped" if spec.balance else "")
             + f") x {spec.copies} beside {n_gold} gold rows")
    if spec.holdout:
        line += (f"; {len(val_rows)} samples of {n_held} held-out queries for validation, their "
                 f"{n_held_examples} training examples held out of the gold rows too")
    return line


STEP_RULES = ("all", "covered")


@dataclass
class GRMSamples:
    """How the GRM view uses the verifier-labelled policy samples of ``data.samples_path``.

    ``steps``: ``all`` uses a sample only when the verifier covers all five of its steps (every
    sampled copy); ``covered`` uses each distinct sample of a prompt once, with a verdict on every
    step the verifier covers and no loss on the others. ``balance``: per step, keep as many right
    verdicts as wrong ones (a seeded choice; the rest carry no loss). ``copies``: times each policy
    row is repeated beside the gold rows. ``holdout``: share of the sampled queries (by a hash of
    the query text) kept out of training, their policy samples and the gold rows of every training
    example of theirs; the GRM's validation scores their samples (``val/grm/policy/...``)."""
    steps: str = "all"
    balance: bool = False
    copies: int = 1
    holdout: float = 0.0

    def __post_init__(self):
        if self.steps not in STEP_RULES:
            raise ConfigError(f"data.grm_samples.steps: {self.steps!r} is unknown; expected one of {', '.join(STEP_RULES)}")
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 1:
            raise ConfigError(f"data.grm_samples.copies: must be an integer >= 1, got {self.copies!r}")
        h = self.holdout
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0.0 <= h < 1.0:
            raise ConfigError(f"data.grm_samples.holdout: must be in [0, 1), got {h!r}")


def policy_rows(samples, spec: GRMSamples, counts: Counter | None = None) -> list[tuple]:
    """(example, steps, verdicts) of the policy samples (a samples file's path, or its rows),
    verdicts True/False where the offline verifier covers a step and None elsewhere
    (``steps: covered``), or of fully covered samples only (``steps: all``). ``counts``, when
    given, is told how many sampled completions were read (``read``) and why those left unused
    were: ``not all five steps covered`` (``steps: all``: also a sample missing a step), ``repeats``
    and ``no covered step`` (``steps: covered``)."""
    from taosr.data.samples import load_samples
    from taosr.reasoning.verifier import verify_steps

    counts = Counter() if counts is None else counts
    out = []
    for row in load_samples(samples) if isinstance(samples, str) else samples:
        ex, seen = row["example"], set()
        for s in row["samples"]:
            counts["read"] += 1
            p = parse_reasoning(s["text"])
            v = verify_steps(p, ex.annotations)
            if spec.steps == "all":
                if all(v[k] is not None for k in STEP_KEYS) and not p.missing_steps:
                    out.append((ex, p.steps, {k: v[k] >= 0.5 for k in STEP_KEYS}))
                else:
                    counts["not all five steps covered"] += 1
                continue
            if s["text"] in seen:
                counts["repeats"] += 1
                continue
            seen.add(s["text"])
            verdicts = {k: (None if v[k] is None or k not in p.steps else v[k] >= 0.5) for k in STEP_KEYS}
            if any(x is not None for x in verdicts.values()):
                out.append((ex, p.steps, verdicts))
            else:
                counts["no covered step"] += 1
    return out


def held_out_query(query: str, seed: int, share: float) -> bool:
    """Whether a sampled query is kept for validation (a hash of its text and the seed)."""
    from taosr.data.synth import stable_unit

    return stable_unit(f"grm-holdout-{seed}:{query}") < share


def policy_split(rows: list[tuple], spec: GRMSamples, seed: int) -> tuple[list[tuple], list[tuple]]:
    """(training rows, validation rows): the samples of ``spec.holdout`` of the queries go to validation."""
    if not spec.holdout:
        return rows, []
    val = [r for r in rows if held_out_query(r[0].query, seed, spec.holdout)]
    held = {id(r) for r in val}
    return [r for r in rows if id(r) not in held], val


def _policy_data(dm) -> tuple[list[tuple], list[tuple], set[str], Counter]:
    """(training policy rows, validation policy rows, held-out queries, counts) of the DataModule's
    samples file, read once and kept on ``dm``. Only the samples of training examples are read
    (:func:`taosr.data.pairs.training_samples`: another split's would leak into training); the
    held-out queries are those of the file's examples that :func:`held_out_query` picks. ``counts``:
    :func:`policy_rows`'s, with ``prompts`` (training prompts read), ``used_prompts`` and, under
    ``steps: all``, ``covered_would_use`` (the rows ``steps: covered`` would make of the same file)."""
    if not dm.samples_path:
        if dm.grm_samples != GRMSamples():
            raise ConfigError("data.grm_samples is set but data.samples_path is not: point it at the policy "
                              "samples of `taosr sample`")
        return [], [], set(), Counter()
    from taosr.data.pairs import training_samples
    from taosr.data.samples import load_samples

    train = dm.splits["train"]
    key = (dm.samples_path, dm.grm_samples.steps, dm.grm_samples.holdout, dm.seed, id(train), len(train))
    cached = getattr(dm, "_grm_policy_split", None)
    if cached is None or cached[0] != key:
        spec = dm.grm_samples
        samples = training_samples(dm, load_samples(dm.samples_path, read_by="data.samples_path (the GRM view's policy "
                                                   "samples; gold steps only: --data.samples_path null)"), "GRM view")
        held = {r["example"].query for r in samples if spec.holdout and held_out_query(r["example"].query, dm.seed,
                                                                                        spec.holdout)}
        counts = Counter(prompts=len(samples))
        rows = policy_rows(samples, spec, counts)
        counts["used_prompts"] = len({id(r[0]) for r in rows})
        if spec.steps == "all":
            counts["covered_would_use"] = len(policy_rows(samples, GRMSamples(steps="covered")))
        cached = dm._grm_policy_split = (key, (*policy_split(rows, spec, dm.seed), held, counts))
    return cached[1]


def policy_rows_split(dm) -> tuple[list[tuple], list[tuple]]:
    """The DataModule's policy rows, split into training and validation ones (read once, kept on ``dm``)."""
    train, val, _, _ = _policy_data(dm)
    return train, val


def held_out_queries(dm) -> set[str]:
    """The queries ``data.grm_samples.holdout`` keeps for validation: no policy sample and no gold
    row of theirs is trained on (empty without a holdout)."""
    return _policy_data(dm)[2]


def balance_verdicts(rows: list[tuple], rng: random.Random) -> list[tuple]:
    """Per step, as many right verdicts as wrong ones: a seeded choice of the majority's verdicts
    is kept, the others become None (no loss); rows left without a verdict are dropped."""
    verdicts = [dict(v) for _, _, v in rows]
    for k in STEP_KEYS:
        right = [i for i, v in enumerate(verdicts) if v[k] is True]
        wrong = [i for i, v in enumerate(verdicts) if v[k] is False]
        major, minor = (right, wrong) if len(right) > len(wrong) else (wrong, right)
        for i in rng.sample(major, len(major) - len(minor)):
            verdicts[i][k] = None
    return [(ex, steps, v) for (ex, steps, _), v in zip(rows, verdicts) if any(x is not None for x in v.values())]


def collate_grm(dm, batch: list[tuple]) -> dict:
    """The GRM input of each row + eos, with ``targets``: the input, except that the token after
    each verdict slot is that step's verdict (right or wrong). The loss is on those decision tokens
    only. The input is fitted to ``data.max_length`` as the scorer fits it
    (:func:`taosr.reasoning.grm_layout.fit_candidate`: the steps whole, the item fields cut; counted
    in ``dm.truncated``); a row whose verdict slots still lie beyond it trains on the verdicts that
    fit (counted in ``dm.targets_cut``, reported at the end)."""
    from taosr.data.collate import pad_right
    from taosr.reasoning.grm_layout import fit_candidate, verdict_slot

    dm._need_tokenizer()
    tok = dm.tokenizer
    _, right, wrong = verdict_slot(tok)
    enc, targets = [], []
    for ex, steps, v in batch:
        ids, positions, cut = fit_candidate(tok, ex, steps, dm.max_length)  # the scorer fits the same way
        if cut:
            dm.note_cut(dm.truncated, ex, "the GRM prompt's item fields are cut")
        full = (ids + [tok.eos_token_id])[: dm.max_length]
        tgt, mask = list(full), [0] * len(full)
        for k, p in zip(STEP_KEYS, positions):
            if v[k] is not None and p + 1 < len(full):  # None: a step without a verdict (no loss)
                tgt[p + 1], mask[p + 1] = (right if v[k] else wrong), 1
        if sum(mask) < sum(x is not None for x in v.values()):  # a verdict slot fell beyond max_length: counted, reported
            dm.note_cut(dm.targets_cut, ex, "GRM verdicts beyond the budget are not trained on")
        enc.append((full, mask))
        targets.append(tgt)
    out = pad_right(enc, tok.pad_token_id)
    out["targets"] = pad_right([(t, []) for t in targets], tok.pad_token_id)["input_ids"]
    return out
