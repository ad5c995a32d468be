"""``RelevanceDataModule``: the one DataModule every method uses, through views.

Views (``view=``, a registry in :mod:`taosr.data.views`): ``sft``, ``dpo``, ``rl``, ``grm``.

Target (``target=``, a registry in :mod:`taosr.reasoning.targets`): what the policy writes after
the prompt -- ``reasoning`` (five steps and the label; SFT needs gold steps) or ``label`` (the
label line alone, for data without reasoning). It sets the prompt's cue line, the SFT completion,
the DPO gold stand-in, and how evaluation and RL rewards parse generations.

Validation and test always serve the generation-based evaluation: prompts of the split, left
padded, with the index of each example so predictions join back to their rows.

Data sources: ``train``/``val``/``test`` are paths (JSONL/CSV/Parquet through ``reader``) or
``"synth"`` for the embedded synthetic default (generated once from ``synth`` and cached under
``data_dir``).

Files are read by :mod:`taosr.data.readers` with the options in ``reader`` (a
:class:`~taosr.data.readers.ReaderSpec`: ``encoding``, ``column_map``, ``label_map`` ...).

Prompts and targets longer than ``max_length`` tokens are cut by the rule in
:mod:`taosr.data.budget`; the rows cut are counted in :attr:`truncated` and reported once per split
(when the first is cut, and in total at the end of the stage).

The tokenizer belongs to the model: the LightningModule builds it (training a BPE on
:meth:`corpus` for tiny presets) and hands it over with :meth:`attach_tokenizer` in its ``setup``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from collections import defaultdict
from typing import Any, Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from taosr.data.budget import fit_example
from taosr.data.collate import pad_left, pad_right
from taosr.data.grm import GRMSamples
from taosr.data.hooks import Curriculum, DiverseSampling, RejectionSampling
from taosr.data.readers import ReaderSpec, read_examples
from taosr.data.synth import FIELD_SHARES, SYNTH_VERSION, SynthConfig, check_config, generate
from taosr.data.views import VIEWS, check_view_options
from taosr.errors import ConfigError
from taosr.prompts import encode_prompt, policy_prompt
from taosr.reasoning.format import render_reasoning
from taosr.reasoning.targets import get_target
from taosr.schema import Example, load_jsonl, write_jsonl

# The DataModule's ``reader`` section is a ReaderSpec (one type for reader options); the old name
# stays importable (checkpoint hyperparameters, taosr.serialization).
ReaderOptions = ReaderSpec


class ListDataset(Dataset):
    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


def epoch_finished(batch_progress) -> bool:
    """Whether Lightning's training batch progress (as saved in a checkpoint) stands after the update
    of its epoch's last batch: a resume then starts the next epoch from its first batch."""
    cur = batch_progress.current
    return bool(batch_progress.is_last_batch) and cur.processed >= cur.ready > 0


class ResumableSampler(DistributedSampler):
    """Seeded permutation per epoch that can start part-way: ``skip`` indices of the current
    epoch are skipped once (set on resume), so a restored run sees the same data order.

    Under DDP (``num_replicas`` > 1) it shards itself: rank ``r`` takes every ``num_replicas``-th of
    the epoch's allowed indices from the ``r``-th, and a rank left one short repeats the epoch's first,
    so that every rank runs the same number of steps. Being a DistributedSampler, Lightning does not
    wrap it (its wrapper indexes a list of ``len(sampler)`` items: fewer, with a curriculum's filter
    or a resume's skip, failed), and the skip counts this rank's own examples."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, allowed=None, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler's own __init__ needs a dataset and an initialised process group
        self.n, self.seed, self.shuffle, self.allowed = n, seed, shuffle, allowed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, 0
        self.skip_fn = None  # called at the first iteration, if set: the skip of a resumed epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _shard(self) -> Iterator[int]:
        """This rank's indices of the epoch, allowed ones only, taken in rounds of ``num_replicas``
        allowed indices (the ``rank``-th of each; a short last round gives the epoch's first to the
        ranks it misses). The filter is evaluated lazily, a round at a time: a curriculum stage that
        changes during the epoch applies to the rest of it, and alike on every rank (each pulls its
        next index at the same step), so the shares stay disjoint and equally long."""
        first, rnd = None, []
        for i in self._order():
            if self.allowed is not None and not self.allowed(i):
                continue
            first = i if first is None else first
            rnd.append(i)
            if len(rnd) == self.num_replicas:
                yield rnd[self.rank]
                rnd = []
        if rnd:
            yield rnd[self.rank] if self.rank < len(rnd) else first

    def __iter__(self) -> Iterator[int]:
        if self.skip_fn is not None:
            self.skip, self.skip_fn = self.skip_fn(), None
        skip, self.skip = self.skip, 0
        for n, i in enumerate(self._shard(), 1):
            if n > skip:
                yield i

    def __len__(self) -> int:
        # The full epoch: on a mid-epoch resume Lightning's progress already counts the skipped
        # batches, so it expects len - done more, which is exactly what __iter__ yields.
        return -(-self.n // self.num_replicas)


STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class _Splits(dict):
    """A DataModule's examples per split ("train", "val", "test"), each read on first use."""

    def __init__(self, load):
        super().__init__()
        self._read = load

    def __missing__(self, split: str) -> list:
        if split not in ("train", "val", "test"):
            raise KeyError(split)
        rows = self[split] = self._read(split)
        return rows

    def get(self, split: str, default=None):
        try:
            return self[split]
        except KeyError:
            return default


def _check_size(key: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"data.{key}: must be a whole number >= {low}{' (or null)' if optional else ''}, got {value!r}")


class RelevanceDataModule(pl.LightningDataModule):
    def __init__(
        self,
        view: str = "sft",
        target: str = "reasoning",
        train: str = "synth",
        val: str | None = "synth",
        test: str | None = "synth",
        synth: SynthConfig | None = None,
        data_dir: str = ".cache/taosr/data",
        reader: ReaderSpec | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_length: int = 384,
        limit_val: int | None = None,
        limit_test: int | None = None,
        limit_train: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        use_chat_template: bool | None = None,
        samples_path: str | None = None,
        pairs_per_prompt: int = 1,
        gold_as_chosen: bool = True,
        grm_corrupt_prob: float = 0.3,
        grm_corrupt_evidence: float = 0.0,
        grm_samples: GRMSamples | None = None,
        rejection_sampling: RejectionSampling | None = None,
        diverse_sampling: DiverseSampling | None = None,
        curriculum: Curriculum | None = None,
    ):
        super().__init__()
        if view not in VIEWS:
            raise ConfigError(f"data.view: unknown view {view!r}; expected one of {', '.join(VIEWS)}")
        # Sizes are checked here, before any work (a DataLoader would fail late, with a traceback).
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("max_length", max_length, 8), ("num_workers", num_workers, 0),
                                ("pairs_per_prompt", pairs_per_prompt, 1)):
            _check_size(key, value, low)
        for key, value in (("limit_train", limit_train), ("limit_val", limit_val), ("limit_test", limit_test)):
            _check_size(key, value, 1, optional=True)
        self.view = view
        self.target = target
        self.target_spec = get_target(target)  # an unknown name: ConfigError naming data.target
        self.paths = {"train": train, "val": val, "test": test}
        self.synth = synth or SynthConfig()
        check_config(self.synth)
        self.data_dir = data_dir
        self.reader = reader or ReaderSpec()
        if self.reader.path is not None:
            raise ConfigError("data.reader.path: the files are data.train, data.val and data.test; leave reader.path unset")
        self.reader.validate(lambda name: f"data.reader.{name}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_length = max_length
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test}
        self.seed, self.num_workers = seed, num_workers
        self.use_chat_template = use_chat_template
        self.samples_path, self.pairs_per_prompt, self.gold_as_chosen = samples_path, pairs_per_prompt, gold_as_chosen
        if not 0.0 <= grm_corrupt_prob <= 1.0:
            raise ConfigError(f"data.grm_corrupt_prob must be in [0, 1], got {grm_corrupt_prob}")
        self.grm_corrupt_prob = grm_corrupt_prob  # GRM view: chance that a gold step's conclusion is swapped
        if not 0.0 <= grm_corrupt_evidence <= 1.0:
            raise ConfigError(f"data.grm_corrupt_evidence must be in [0, 1], got {grm_corrupt_evidence}")
        # GRM view: chance that a decision step whose conclusion was kept gets one wrong evidence part
        self.grm_corrupt_evidence = grm_corrupt_evidence
        self.grm_samples = grm_samples or GRMSamples()  # GRM view: how policy samples are used
        self.tokenizer = None
        self.splits: dict[str, list[Example]] = _Splits(self._load)  # each split read on first use
        self._overlap_checked = False  # data.val compared with data.train
        # Rows cut to fit max_length, per split ("train", "val", "test"): keys of the examples.
        self.truncated: dict[str, set] = defaultdict(set)
        self.targets_cut: dict[str, set] = defaultdict(set)
        self._fitted: dict[tuple[int, int], tuple[Example, list[int]]] = {}  # (id, budget) -> (example, cut prompt ids)
        self._split_ids: tuple[tuple[int, ...], dict[int, str]] | None = None  # (split sizes, id(example) -> split)
        # Training-pool hooks (each off when None or enabled=false); their state is checkpointed.
        self.rejection_sampling, self.diverse_sampling, self.curriculum = rejection_sampling, diverse_sampling, curriculum
        self.hooks: list = [h for h in (rejection_sampling, diverse_sampling, curriculum) if h is not None]

    # ------------------------------------------------------------------ loading
    def synth_dir(self) -> str:
        c = self.synth
        fields = dataclasses.asdict(c)
        if fields.get("annotation_regime") == "shared":  # added later: the default keeps the old cache key
            del fields["annotation_regime"]
        for key in FIELD_SHARES:  # likewise
            if fields.get(key) == getattr(SynthConfig, key):
                del fields[key]
            elif key in fields:
                fields[key] = float(fields[key])  # 1 and 1.0 are the same data
        key = json.dumps({"v": SYNTH_VERSION, **fields}, sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        tag = f"synth-s{c.seed}-{c.n_train}-{c.n_val}-{c.n_test}-{digest}"
        return os.path.join(self.data_dir, tag)

    def prepare_data(self) -> None:
        if "synth" in self.paths.values():
            self._ensure_synth()

    def _ensure_synth(self) -> str:
        d = self.synth_dir()
        if not all(os.path.exists(os.path.join(d, f"{s}.jsonl")) for s in ("train", "val", "test")):
            data = generate(self.synth)
            for split, rows in data.items():
                write_jsonl(os.path.join(d, f"{split}.jsonl"), rows)
        return d

    def _load(self, split: str) -> list[Example]:
        src = self.paths[split]
        if src is None:
            return []
        if src == "synth":
            if split != "train" and self.paths.get("train") not in (None, "synth"):
                print(f"taosr: warning: data.{split} is the synthetic {split} split (the config names no data.{split}), "
                      f"while data.train is {self.paths['train']}: pass --data.{split} FILE for your own", file=sys.stderr)
            rows = load_jsonl(os.path.join(self._ensure_synth(), f"{split}.jsonl"))
        else:
            lim = min([n for n in (self.limits.get(split), self.reader.limit) if n], default=None)
            res = read_examples(dataclasses.replace(self.reader, path=src, limit=lim))  # stops at the limit
            if res.skipped:
                print(f"taosr: {src}: skipped {len(res.skipped)} bad rows (on_error=skip); first: {res.skipped[0]}")
            for note in res.notes:  # join counts (data.reader.items / queries)
                print(f"taosr: {src}: {note}")
            if lim and len(res.examples) == lim:
                print(f"taosr: data.{split}: the first {lim} examples of {src} (data.limit_{split} / data.reader.limit)")
            return res.examples
        lim = self.limits.get(split)
        return rows[:lim] if lim else rows

    def setup(self, stage: str | None = None) -> None:
        # only what the stage uses is read now (a `taosr test` of 8 rows read a 1M-row training file
        # first); any other split is read when something asks for it (a tiny preset's tokenizer
        # trains on the training split's texts)
        for split in STAGE_SPLITS.get(stage, ("train", "val", "test")):
            self.splits[split]
        if stage == "fit" and not self._overlap_checked:  # once, however often fit's setup runs
            self._overlap_checked = True
            self._warn_overlap("val")
        if stage in (None, "fit") and not self.splits["train"]:
            src = self.paths.get("train")
            raise ConfigError("data.train: no training examples" + (f" in {src}" if src else "") + (
                " (the file is empty: if `taosr reason` wrote it, it explained no pair; see its .report.json and "
                ".unexplained.jsonl)" if src and os.path.isfile(src) and os.path.getsize(src) == 0 else ""))

    def _warn_overlap(self, split: str) -> None:
        """A user's validation file whose queries the training file holds is not held out (the
        synthetic default is query-disjoint); `taosr data check TRAIN --against TEST` for a test file."""
        from taosr.data.check import format_overlap, overlap

        if "synth" in (self.paths.get(split), self.paths.get("train")) or self.paths.get(split) == self.paths.get("train") \
                or not self.splits[split]:
            return  # (the same file on purpose: `taosr sample --split val --data FILE`)
        o = overlap(self.splits["train"], self.splits[split])
        if o["queries"]:
            print(f"taosr: warning: data.{split}: {format_overlap(o, self.paths[split], self.paths['train'])}",
                  file=sys.stderr)

    def corpus(self) -> Iterator[str]:
        """Texts a tiny preset's tokenizer is trained on: prompts and gold reasoning."""
        for ex in self.splits["train"]:
            yield policy_prompt(ex, target=self.target)
            if self.target != "reasoning":  # (the reasoning corpus, and so the tiny tokenizer, is as before)
                if (gold := self.target_spec.gold(ex)) is not None:
                    yield gold
            elif ex.steps and len(ex.steps) == 5:
                yield render_reasoning(ex.steps, ex.label)
        from taosr.prompts import INSTRUCTION
        from taosr.reasoning.grm_layout import GRM_HEADER, RIGHT, WRONG

        yield INSTRUCTION
        # Unchanged since the first GRM layout: the tiny tokenizer (and so every tiny run) stays the
        # same; "Verdicts" covers the slot's "Verdict:".
        yield f"{GRM_HEADER}\nCandidate:\nVerdicts:\n {RIGHT} {WRONG} (missing)"

    def attach_tokenizer(self, tokenizer) -> None:
        if tokenizer is not self.tokenizer:
            self._fitted.clear()  # cut rows' prompt ids are the previous tokenizer's
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ encoding
    def prompt_text(self, ex: Example) -> str:
        return policy_prompt(ex, self.tokenizer, self.use_chat_template, target=self.target)

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def heldout_regime(self) -> bool:
        """True when the training split is the synthetic default in the held-out annotation regime."""
        return self.paths.get("train") == "synth" and self.synth.annotation_regime == "heldout"

    def _split_of(self, ex: Example) -> str:
        """The split an example belongs to (rows built from other files, e.g. DPO pairs, count as train)."""
        sizes = tuple(len(rows) for rows in self.splits.values())
        if self._split_ids is None or self._split_ids[0] != sizes:
            self._split_ids = (sizes, {id(r): split for split, rows in self.splits.items() for r in rows})
        return self._split_ids[1].get(id(ex), "train")

    def note_cut(self, kind: dict[str, set], ex: Example, what: str) -> None:
        """Count ``ex`` as cut (``kind``: :attr:`truncated` or :attr:`targets_cut`); say so at a split's first cut."""
        split = self._split_of(ex)
        first = not kind[split]
        kind[split].add(id(ex))
        if first:
            print(f"taosr: data.{split}: example {ex.id or repr(ex.query[:40])} does not fit data.max_length="
                  f"{self.max_length} tokens: {what} (rule: taosr.data.budget); cut rows are counted and "
                  "reported at the end")

    def fitted_prompt_ids(self, ex: Example, target_len: int = 0) -> list[int]:
        """Prompt ids of ``ex`` that leave ``target_len`` tokens of ``max_length`` free, its item
        fields (then its query) cut by the rule of :mod:`taosr.data.budget` when needed."""
        budget = self.max_length - target_len
        key = (id(ex), budget)
        hit = self._fitted.get(key)
        if hit is None or hit[0] is not ex:  # a cut row's ids are kept: it is not encoded again every epoch
            ids = self.encode_prompt(self.prompt_text(ex))
            if len(ids) <= budget:
                return ids
            short, _ = fit_example(ex, lambda e: len(self.encode_prompt(self.prompt_text(e))), budget)
            hit = self._fitted[key] = (ex, self.encode_prompt(self.prompt_text(short)))
        self.note_cut(self.truncated, ex, "the prompt's item fields are cut")
        return list(hit[1])

    def encode_example(self, ex: Example, completions: list[str]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, loss_mask) of prompt + completion + eos for each completion, with one prompt
        for all (fitted so the longest completion fits max_length); a completion longer than the
        budget is cut at its end (counted)."""
        tok = self.tokenizer
        comps = [tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id] for c in completions]
        p = self.fitted_prompt_ids(ex, max(len(c) for c in comps))
        out = []
        for c in comps:
            if len(p) + len(c) > self.max_length:
                self.note_cut(self.targets_cut, ex, "the target is cut at its end")
            ids = (p + c)[: self.max_length]
            mask = ([0] * len(p) + [1] * len(c))[: self.max_length]
            out.append((ids, mask))
        return out

    def truncation_report(self) -> str | None:
        """One line with the rows cut per split, or None when nothing was cut."""
        parts = []
        for split in ("train", "val", "test"):
            n, t = len(self.truncated.get(split, ())), len(self.targets_cut.get(split, ()))
            if n or t:
                parts.append(f"{split}: {n} of {len(self.splits.get(split, []))} prompts shortened, {t} targets cut")
        if not parts:
            return None
        return f"taosr: rows longer than data.max_length={self.max_length} tokens ({'; '.join(parts)})"

    def teardown(self, stage: str) -> None:
        report = self.truncation_report()
        if report:
            print(report)

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("RelevanceDataModule: no tokenizer attached (the LightningModule attaches it in setup)")

    def collate_sft(self, batch: list[Example]) -> dict[str, Any]:
        self._need_tokenizer()
        enc = []
        for ex in batch:
            completion = self.target_spec.gold(ex)
            if completion is None:
                split = self._split_of(ex)
                raise ConfigError(f"data.{split} ({self.paths.get(split)}): example {ex.id or repr(ex.query)} has no "
                                  f"gold reasoning steps; SFT with data.target: {self.target} needs them (supply a CoT "
                                  "file, add reasoning with `taosr reason`, or train on the labels alone with "
                                  "data.target: label)")
            enc += self.encode_example(ex, [completion])
        return pad_right(enc, self.tokenizer.pad_token_id)

    def collate_prompts(self, batch: list[tuple[int, Example]]) -> dict[str, Any]:
        self._need_tokenizer()
        ids = [self.fitted_prompt_ids(ex) for _, ex in batch]
        out = pad_left(ids, self.tokenizer.pad_token_id)
        out["index"] = torch.tensor([i for i, _ in batch])
        out["labels"] = torch.tensor([ex.label for _, ex in batch])
        return out

    # ------------------------------------------------------------------ loaders
    def train_rows(self) -> list:
        """The training pool after rejection sampling and diverse sampling (the curriculum acts
        lazily in the sampler, so a stage switch takes effect at the next batch)."""
        rows: list = list(self.splits["train"])
        for hook in (self.rejection_sampling, self.diverse_sampling):
            if hook is not None:
                rows = hook.filter(rows, self)
        return rows

    def _allowed_fn(self, rows: list):
        cur = self.curriculum
        if cur is None or not cur.enabled:
            return None
        examples = [r[1] if isinstance(r, tuple) else r for r in rows]
        cache: dict[int, set] = {}

        def allowed(i: int) -> bool:
            if cur.stage not in cache:
                keep = {id(ex) for ex in cur.filter(examples, self)}
                cache[cur.stage] = {j for j, ex in enumerate(examples) if id(ex) in keep}
            return i in cache[cur.stage]
        return allowed

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        check_view_options(self, trainer.callbacks if trainer is not None else None)
        rows, collate = VIEWS.get(self.view)(self)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(len(rows), self.seed, allowed=self._allowed_fn(rows), num_replicas=world, rank=rank)
        # read at the first batch, not now: with a finite max_epochs Lightning builds this loader for
        # estimated_stepping_batches (configure_optimizers) before it restores the loops' progress
        sampler.skip_fn = self._resume_skip
        # Lightning warns on a mid-epoch resume that the loader "is not resumable" (no state_dict): the
        # sampler skips the epoch's consumed examples itself, and the resume is bit-identical (tested)
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        return DataLoader(ListDataset(rows), batch_size=self.batch_size, sampler=sampler,
                          collate_fn=collate, num_workers=self.num_workers, drop_last=False)

    def _resume_skip(self) -> int:
        """Examples of the current epoch already consumed (non-zero only on a mid-epoch resume)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        # A mid-epoch checkpoint is written in on_train_batch_end, after the optimizer step but before
        # Lightning marks the batch "completed": "processed" counts the batches whose update is in it.
        # Written at the epoch's last batch, it resumes with the next epoch, from its start.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if epoch_finished(progress):
            return 0
        return progress.current.processed * self.batch_size

    def _eval_loader(self, split: str) -> DataLoader:
        rows = list(enumerate(self.splits[split]))
        return DataLoader(ListDataset(rows), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self.collate_prompts, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.splits.get("val"):
            return self._eval_loader("val")
        # no validation split (data.val: null): Lightning warns of an empty `list` on every run
        warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
        return []

    def test_dataloader(self) -> DataLoader:
        if not self.splits.get("test"):
            raise ConfigError("data.test: no test split configured")
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ state (hooks)
    def state_dict(self) -> dict[str, Any]:
        return {"hooks": [h.state_dict() for h in self.hooks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for h, s in zip(self.hooks, state.get("hooks", [])):
            h.load_state_dict(s)
