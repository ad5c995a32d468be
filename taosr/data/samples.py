"""The samples file written by ``taosr sample`` (offline pass@N results), read by DPO pairs,
rejection / diverse sampling and the GRM view: one JSON object per prompt with ``example``,
``samples`` (each ``text``, ``correct``, ...) and ``pass_rate``."""
from __future__ import annotations

from taosr.errors import ConfigError, DataError
from taosr.schema import iter_jsonl, validate_row


def load_samples(path: str, target: str | None = None) -> list[dict]:
    """Read a ``taosr sample`` file, validating every line; malformed or empty files raise DataError.
    With ``target`` (``data.target``), a file sampled with another ``--target`` is refused."""
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
