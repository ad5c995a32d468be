"""DataModule hooks for RL training data: offline rejection sampling, diverse sampling and a
multi-stage curriculum. Each is switched off by one config key (``enabled: false``) and keeps
its state (stage, statistics) in the DataModule's checkpoint state.

All three read the offline pass@N results of ``taosr sample`` (``samples_path``) where they
need difficulty; without one, difficulty falls back to the query type (long-tail types are hard).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from taosr.labels import LONG_TAIL_TYPES


def _pass_rates(samples_path: str | None, rows: list, target: str | None = None, read_by: str | None = None) -> dict[int, dict]:
    """Offline statistics of the examples of ``rows`` that ``samples_path`` sampled, keyed by
    ``id(example)``: a samples row is matched to its example by id (with query and title), so two
    examples sharing a query and a title keep their own statistics (:class:`ExampleIndex`)."""
    if not samples_path:
        return {}
    from taosr.data.samples import ExampleIndex, load_samples

    index, out = ExampleIndex(rows, samples_path), {}
    for i, row in enumerate(load_samples(samples_path, target, read_by)):
        ex = index.find(row["example"], where=f"row {i + 1}")
        if ex is None:
            continue
        patterns = {(s.get("pred"), tuple(sorted((s.get("step_verdicts") or {}).items()))) for s in row["samples"]}
        labels = {s.get("pred") for s in row["samples"]}
        out[id(ex)] = {"pass_rate": row["pass_rate"], "n_patterns": len(patterns), "n_labels": len(labels)}
    return out


def difficulty(ex, stats: dict | None) -> float:
    """0 (easy) .. 1 (hard): 1 - offline pass rate when sampled, else by query type."""
    if stats is not None:
        return 1.0 - stats["pass_rate"]
    return 0.75 if ex.query_type in LONG_TAIL_TYPES else 0.25


@dataclass
class RejectionSampling:
    """Keep prompts whose offline pass rate lies strictly between ``low`` and ``high`` (prompts
    the policy always or never solves give GRPO groups with no reward spread)."""
    enabled: bool = True
    samples_path: str | None = None
    low: float = 0.0
    high: float = 1.0
    stats: dict[str, int] = field(default_factory=dict)

    def filter(self, rows: list, dm) -> list:
        if not self.enabled:
            return rows
        path = self.samples_path or dm.samples_path
        if not path:
            from taosr.errors import ConfigError

            raise ConfigError("rejection sampling needs samples_path (output of `taosr sample`)")
        key = "data.rejection_sampling.samples_path" if self.samples_path else "data.samples_path"
        rates = _pass_rates(path, rows, getattr(dm, "target", None),
                            f"{key} (rejection sampling; off: --data.rejection_sampling.enabled false)")
        kept, unsampled = [], 0
        for ex in rows:
            s = rates.get(id(ex))
            if s is None:
                unsampled += 1
            elif self.low < s["pass_rate"] < self.high:
                kept.append(ex)
        self.stats = {"input": len(rows), "kept": len(kept), "unsampled": unsampled,
                      "dropped": len(rows) - len(kept) - unsampled}
        print(f"taosr: rejection sampling kept {len(kept)}/{len(rows)} prompts "
              f"(pass rate in ({self.low}, {self.high}); {unsampled} never sampled were left out)")
        if not kept:
            from taosr.errors import ConfigError

            raise ConfigError(f"rejection sampling kept no prompt: no pass rate in ({self.low}, {self.high}) in {path} "
                              "(a model trained a few steps passes nothing: widen data.rejection_sampling, e.g. "
                              "--config configs/experiment/smoke_rl.yaml for a smoke run)")
        return kept

    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.stats = dict(s.get("stats", {}))


RANKINGS = ("disagreement", "random")


@dataclass
class DiverseSampling:
    """Prefer prompts whose samples disagree (several labels or step-verdict patterns) and keep
    tiers and query types balanced: take ``max_prompts`` (default: ``share`` of the pool)
    round-robin over (tier, type) cells, most diverse first. The pool must shrink for this to do
    anything: the training sampler shuffles whatever it keeps, so the order alone counts for nothing.

    ``rank_by: random`` is the control: the same number of prompts, round-robin over the same
    cells, in random order within each cell (a stratified random subset), so a study can tell the
    diversity ranking apart from training on a smaller pool revisited more often. ``seed`` breaks
    ties (``disagreement``) or draws the subset (``random``); ``null`` takes the run's seed
    (``seed_everything``), so each seed of a study draws its own subset."""
    enabled: bool = True
    max_prompts: int | None = None
    share: float = 0.5
    rank_by: str = "disagreement"
    seed: int | None = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from taosr.errors import ConfigError

        if not isinstance(self.share, (int, float)) or isinstance(self.share, bool) or not 0 < self.share <= 1:
            raise ConfigError(f"data.diverse_sampling.share: must be in (0, 1], got {self.share!r}")
        if self.max_prompts is not None and (isinstance(self.max_prompts, bool) or not isinstance(self.max_prompts, int)
                                             or self.max_prompts < 1):
            raise ConfigError(f"data.diverse_sampling.max_prompts: must be an integer >= 1 (or unset), got {self.max_prompts!r}")
        if self.rank_by not in RANKINGS:
            raise ConfigError(f"data.diverse_sampling.rank_by: {self.rank_by!r} is unknown; expected one of {', '.join(RANKINGS)}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"data.diverse_sampling.seed: must be an integer or null (the run's seed), got {self.seed!r}")

    def draw_seed(self) -> int:
        """``seed``, or the run's seed (Lightning's ``PL_GLOBAL_SEED``, set by ``seed_everything``) when null."""
        if self.seed is not None:
            return self.seed
        import os
        import warnings

        if "PL_GLOBAL_SEED" not in os.environ:
            warnings.warn("data.diverse_sampling.seed: null takes the run's seed, but none was set (seed_everything); "
                          "drawing with seed 0", RuntimeWarning, stacklevel=2)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def filter(self, rows: list, dm) -> list:
        if not self.enabled:
            return rows
        by_disagreement = self.rank_by == "disagreement"
        info = _pass_rates(dm.samples_path, rows, getattr(dm, "target", None),
                           "data.samples_path (diverse sampling; off: --data.diverse_sampling.enabled false)") \
            if by_disagreement else {}
        seed = self.draw_seed()
        rng = random.Random(seed)
        cells: dict[tuple, list] = defaultdict(list)
        for ex in rows:
            s = info.get(id(ex))
            score = (s["n_labels"], s["n_patterns"]) if s else (0, 0)
            cells[(ex.label, ex.query_type)].append((score, rng.random(), ex))
        for v in cells.values():
            v.sort(key=lambda t: (t[0], t[1]), reverse=True)
        limit = self.max_prompts or max(1, round(self.share * len(rows)))
        out, order = [], sorted(cells, key=str)
        while len(out) < limit and any(cells[c] for c in order):
            for c in order:
                if cells[c] and len(out) < limit:
                    out.append(cells[c].pop(0)[2])
        self.stats = {"input": len(rows), "kept": len(out), "rank_by": self.rank_by, "seed": seed,
                      "tiers": dict(Counter(ex.label for ex in out)),
                      "types": dict(Counter(ex.query_type for ex in out))}
        order_text = "most diverse first" if by_disagreement else f"random order, seed {seed}"
        print(f"taosr: diverse sampling kept {len(out)}/{len(rows)} prompts ({order_text}, round-robin "
              f"over {len(cells)} tier x query-type cells)")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.stats = s.get("stats", {})
        if self.seed is None and isinstance(self.stats.get("seed"), int):
            self.seed = self.stats["seed"]  # a resumed run redraws the subset it trained on


@dataclass
class CurriculumStage:
    max_difficulty: float = 1.0
    query_types: list[str] | None = None
    until_step: int | None = None          # switch after this global step ...
    until_metric: float | None = None      # ... or once the monitored metric reaches this


@dataclass
class Curriculum:
    """Multi-stage curriculum by difficulty and query type. The DataModule rebuilds the training
    pool when the stage changes (``CurriculumCallback`` drives it); stage and switch history are
    saved in checkpoints."""
    enabled: bool = True
    # the default stages as plain dicts (made CurriculumStage below): jsonargparse could not write
    # instances in a default list, and a run's saved config.yaml held "Unable to serialize instance"
    stages: list[CurriculumStage] = field(default_factory=lambda: [
        {"max_difficulty": 0.5, "until_step": 20}, {"max_difficulty": 1.0}])
    monitor: str = "val/macro_f1"
    stage: int = 0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [CurriculumStage(**s) if isinstance(s, dict) else s for s in self.stages]

    def filter(self, rows: list, dm) -> list:
        if not self.enabled:
            return rows
        info = _pass_rates(dm.samples_path, rows, getattr(dm, "target", None),
                           "data.samples_path (the curriculum; off: --data.curriculum.enabled false)")
        st = self.stages[self.stage]
        kept = [ex for ex in rows if difficulty(ex, info.get(id(ex))) <= st.max_difficulty
                and (not st.query_types or ex.query_type in st.query_types)]
        rule = f"difficulty <= {st.max_difficulty:g}" + (f", query types {', '.join(st.query_types)}" if st.query_types else "")
        if not kept:
            print(f"taosr: curriculum stage {self.stage + 1}/{len(self.stages)} ({rule}) keeps none of the "
                  f"{len(rows)} prompts: training on all of them until the next stage")
            return rows
        print(f"taosr: curriculum stage {self.stage + 1}/{len(self.stages)} keeps {len(kept)}/{len(rows)} prompts ({rule})")
        return kept

    def should_advance(self, step: int, metrics: dict[str, float]) -> bool:
        if not self.enabled or self.stage >= len(self.stages) - 1:
            return False
        st = self.stages[self.stage]
        if st.until_step is not None and step >= st.until_step:
            return True
        m = metrics.get(self.monitor)
        return st.until_metric is not None and m is not None and float(m) >= st.until_metric

    def advance(self, step: int) -> None:
        self.stage += 1
        self.history.append({"stage": self.stage, "step": step})

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "history": list(self.history)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.stage, self.history = int(s.get("stage", 0)), list(s.get("history", []))
