"""What a command ran with, for the drivers that skip work done before (``taosr compare``,
``taosr quickstart``): a command's fingerprint (its arguments without ``--ckpt_path``, config files
as the real paths they are read from, other paths absolute) and the first place two of them differ,
for a one-line refusal to reuse work done under other settings."""
from __future__ import annotations

import os

from taosr.configfiles import locate

# options whose value is a path: compared as absolute paths (`--out runs/x` and `--out $PWD/runs/x` agree)
PATH_OPTIONS = ("--trainer.default_root_dir", "--data.test", "--data.samples_path", "--model.init_args.model.name_or_path",
                "--model.init_args.grm_path")
# the same for `taosr sample`'s own flags
SAMPLE_PATH_OPTIONS = ("--model", "--out", "--data-dir")


def named_model(name: str) -> bool:
    """A model given by name: a preset (``tiny``, ``smollm2-135m``) or a Hugging Face id, loaded by the
    fits themselves, not a missing folder."""
    from taosr.models.factory import looks_like_hub_id
    from taosr.models.presets import SMOLLM2_PRESET, TINY_PRESETS

    return name in TINY_PRESETS or name == SMOLLM2_PRESET or looks_like_hub_id(name)


def fingerprint(args: list[str], paths: tuple[str, ...] = PATH_OPTIONS) -> list[str]:
    """A command without its ``--ckpt_path`` (a resume), with config files as the real paths they
    are read from (:func:`locate`) and the values of ``paths`` options absolute (a preset name or hub
    id stays as it is)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--ckpt_path":
            i += 2
            continue
        if a == "--config" and i + 1 < len(args):
            out += [a, os.path.realpath(locate(args[i + 1]))]
            i += 2
            continue
        if a in paths and i + 1 < len(args):
            v = args[i + 1]
            # a model's hub id stays as it is, wherever the command runs
            named = a.endswith(("name_or_path", "--model")) and not os.path.exists(v) and named_model(v)
            out += [a, os.path.abspath(v) if (os.sep in v or os.path.exists(v)) and not named else v]
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def first_difference(old: list[str], new: list[str]) -> str:
    """Where two fingerprints part, in a few words: ``was `--lr 1`, now `--lr 2```."""
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return f"was `{' '.join(old[max(0, i - 1):i + 1])}`, now `{' '.join(new[max(0, i - 1):i + 1])}`"
    longer, which = (old, "then") if len(old) > len(new) else (new, "now")
    return f"{which} also `{' '.join(longer[min(len(old), len(new)):])}`"


def moved_roots(then: str, now: str) -> tuple[str, str] | None:
    """Where a tree moved: a record written in folder ``then`` now read in ``now`` (both absolute)
    gives the two roots above the folders' common tail (``/work/main/runs/x`` read as ``/srv/p/runs/x``:
    ``/work/main`` -> ``/srv/p``). None when the folder has not moved, or nothing of its path is common
    (its own name changed: nothing tells which part moved), or one of the roots would be ``/``."""
    t, n = os.path.normpath(then).split(os.sep), os.path.normpath(now).split(os.sep)
    k = 0
    while k < min(len(t), len(n)) and t[len(t) - 1 - k] == n[len(n) - 1 - k] and t[len(t) - 1 - k]:
        k += 1
    old, new = os.sep.join(t[:len(t) - k]), os.sep.join(n[:len(n) - k])
    if k == 0 or t == n or not old or not new:  # a root of "/" would move every path, outside the tree too
        return None
    return old, new


def relocated(recorded: list[str], then: str | None, now: str) -> list[str]:
    """A fingerprint recorded by a record in folder ``then``, as it reads from the record's folder
    ``now``: the absolute paths under the tree that moved with it (the runs, a start and data inside a
    moved checkout) point into the new place, every other value stays. A record without ``then``
    (written before records named their folder) is returned as it is."""
    roots = moved_roots(then, os.path.abspath(now)) if then else None
    if roots is None:
        return list(recorded)
    old, new = roots
    head = old.rstrip(os.sep) + os.sep

    def move(v: str) -> str:
        if v == old:
            return new
        if v.startswith(head):
            return os.path.join(new, v[len(head):])
        if " " in v and v.split(" ", 2)[1].startswith(head):  # a content hash line: "--config PATH sha256:..."
            key, path, rest = (v.split(" ", 2) + [""])[:3]
            return " ".join(x for x in (key, move(path), rest) if x)
        return v

    return [move(v) for v in recorded]
