"""What a command ran with, for the drivers that skip work done before (``taosr compare``,
``taosr quickstart``): a command's fingerprint (its arguments without ``--ckpt_path``, config files
as the real paths they are read from, other paths absolute) and the first place two of them differ,
for a one-line refusal to reuse work done under other settings; and where a record of them was
written (:func:`record_place`), so that a checkout moved elsewhere reads its records there
(:func:`relocated`)."""
from __future__ import annotations

import os
import re

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


def record_place(folder: str) -> dict[str, str]:
    """What a record keeps of where it was written: its folder and the working folder its paths were
    made absolute against (both resolved), for :func:`relocated`."""
    return {"at": os.path.realpath(folder), "cwd": os.path.realpath(os.getcwd())}


_HASH_LINE = re.compile(r"^(--\S+) (.+) (sha256:[0-9a-f]+)$")  # the quick start's "--config PATH sha256:..."


def relocated(recorded: list[str], place: dict | None, folder: str) -> list[str]:
    """A fingerprint written by a record at ``place`` (:func:`record_place`), as it reads from the
    record's ``folder`` now. When the working folder moved and the record lies at the same place
    under it (a checkout copied to another path or machine and run from its root again), the paths
    under the old working folder point into the new one; paths outside it, and every record that
    cannot tell (written before records kept their place, or moved otherwise), stay as they are."""
    if not isinstance(place, dict) or not isinstance(place.get("at"), str) or not isinstance(place.get("cwd"), str):
        return list(recorded)
    old, new = place["cwd"], os.path.realpath(os.getcwd())
    if old == new or os.path.relpath(place["at"], old) != os.path.relpath(os.path.realpath(folder), new):
        return list(recorded)
    head = old.rstrip(os.sep) + os.sep

    def move(v: str) -> str:
        if v == old:
            return new
        if v.startswith(head):
            return os.path.join(new, v[len(head):])
        m = _HASH_LINE.match(v)
        if m and (m.group(2) == old or m.group(2).startswith(head)):
            return f"{m.group(1)} {move(m.group(2))} {m.group(3)}"
        return v

    return [move(v) if isinstance(v, str) else v for v in recorded]
