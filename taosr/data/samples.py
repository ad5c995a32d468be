"""The samples file written by ``taosr sample`` (offline pass@N results), read by DPO pairs,
rejection / diverse sampling and the GRM view: one JSON object per prompt with ``example``,
``samples`` (each ``text``, ``correct``, ...) and ``pass_rate``.

A row's example is matched to the data's by :class:`ExampleIndex`: by its ``id`` (``taosr sample``
embeds the example, id included) together with its query and item title, so two examples that
share a query and title are told apart and another data set's ``train-0`` is not this one's; a
row without an id (a file from elsewhere, or data without ids) falls back to (query, title), and
is refused when that names several examples."""
from __future__ import annotations

from collections import defaultdict

from taosr.errors import ConfigError, DataError
from taosr.schema import iter_jsonl, validate_row


MAKE_SAMPLES = "taosr sample --model SFT_EXPORT --split train --out FILE"


def load_samples(path: str, target: str | None = None, read_by: str | None = None) -> list[dict]:
    """Read a ``taosr sample`` file, validating every line; malformed or empty files raise DataError.
    With ``target`` (``data.target``), a file sampled with another ``--target`` is refused.
    ``read_by`` (the option that reads it, and how to do without: ``"rejection sampling ... ;
    off: --data.rejection_sampling.enabled false"``) is named when the file does not exist: the
    path is often a config's default the user never typed."""
    import os

    if read_by and not os.path.exists(path):
        raise DataError(path, None, f"file not found: {read_by} reads `taosr sample`'s output here (make it with "
                                    f"`{MAKE_SAMPLES}`)")
    rows = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(where, None, "sample line must be a JSON object")
        for key in ("example", "samples", "pass_rate"):
            if key not in row:
                raise DataError(where, key, "is missing (is this a `taosr sample` output?)")
        if not isinstance(row["samples"], list) or not row["samples"]:
            raise DataError(where, "samples", "must be a non-empty list")
        for j, s in enumerate(row["samples"]):
            if not isinstance(s, dict) or "text" not in s or "correct" not in s:
                raise DataError(where, f"samples[{j}]", "needs 'text' and 'correct'")
        row["example"] = validate_row(row["example"], f"{where} (example)")
        rows.append(row)
    if not rows:
        raise DataError(path, None, "no samples in file (empty)")
    for row in rows if target is not None else ():  # `taosr sample` records a non-default --target
        sampler = row.get("sampler")
        drawn = sampler.get("target", "reasoning") if isinstance(sampler, dict) else target
        if drawn != target:
            raise ConfigError(f"data.samples_path: {path} was sampled with --target {drawn}, but "
                              f"data.target is {target}; sample the policy with --target {target}")
    return rows


class ExampleIndex:
    """Finds the example of ``examples`` a samples row was drawn from (:meth:`find`): by id, query
    and item title when the row's example has an id; else, as a fallback, by query and title
    alone, refusing a pair that names more than one example (their samples would be mixed up)."""

    def __init__(self, examples, path: str = "data.samples_path"):
        self.path = path
        self.by_id: dict[tuple, object] = {}
        self.by_text: dict[tuple, list] = defaultdict(list)
        for ex in examples:
            if ex.id is not None:
                self.by_id[(ex.id, ex.query, ex.item.title)] = ex
            self.by_text[(ex.query, ex.item.title)].append(ex)

    def find(self, ex, where: str | None = None):
        """The indexed example ``ex`` names, or None when there is none."""
        if ex.id is not None:
            return self.by_id.get((ex.id, ex.query, ex.item.title))
        found = self.by_text.get((ex.query, ex.item.title), [])
        if len(found) > 1:
            ids = ", ".join(repr(e.id) for e in found[:4]) + (", ..." if len(found) > 4 else "")
            raise ConfigError(f"{self.path}{f' ({where})' if where else ''}: a sampled example without an id, query "
                              f"{ex.query!r} and title {ex.item.title!r}, matches {len(found)} examples (ids {ids}); "
                              "give the data ids and sample it again with `taosr sample` (it records them)")
        return found[0] if found else None
