"""Which packed SmolLM2 start the parts gathered on a lent GPU machine make (``gpu_session.sh
smollm2_restore``): joined here into one tar, checked against the md5 its name carries.

    python3 benchmarks/start_parts.py GATHERED CARRIED OUT_TAR

``smollm2_pack`` splits the start's tar into ``smollm2-start-<md5[:12]>.tar.part-aa, -ab, ...``; the
device tool carries a few parts a call, and each call copies its own (``CARRIED``, ``.gpu/start``) to
``GATHERED`` (``/tmp/start``), which may also hold parts of other starts from earlier uses of the
machine. The start is the one tag whose parts, joined in name order, give that md5; where several
do, the one ``CARRIED`` has parts of. Prints the tag chosen and writes its tar to ``OUT_TAR``; exits
1 with one line naming the tags when no start is whole or the choice is not single.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

PART = re.compile(r"^smollm2-start-([0-9a-f]{12})\.tar\.part-[a-z]+$")


def tags(folder: str) -> dict[str, list[str]]:
    """The start tags whose parts ``folder`` holds, each with its part files in name (= join) order."""
    found: dict[str, list[str]] = {}
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        m = PART.match(name)
        if m:
            found.setdefault(m.group(1), []).append(os.path.join(folder, name))
    return found


def joined_md5(parts: list[str]) -> str:
    h = hashlib.md5()
    for p in parts:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def choose(gathered: str, carried: str) -> tuple[str, list[str]]:
    """The tag of the start to restore and its parts; ValueError (one line) when there is none to choose."""
    found = tags(gathered)
    if not found:
        raise ValueError(f"no parts of a start (smollm2-start-<md5>.tar.part-*) were carried in {carried}")
    whole = [t for t, parts in sorted(found.items()) if joined_md5(parts)[:12] == t]
    if not whole:
        raise ValueError(f"the parts in {gathered} (tags: {' '.join(sorted(found))}) do not make a packed start "
                         "(checksum): one is missing or damaged")
    if len(whole) > 1:  # several whole starts: the one this call carries parts of
        here = set(tags(carried))
        picked = [t for t in whole if t in here]
        if len(picked) != 1:
            raise ValueError(f"{gathered} holds more than one whole start ({' '.join(whole)}) and {carried} does not "
                             "carry parts of exactly one of them; remove the ones not wanted")
        whole = picked
    return whole[0], found[whole[0]]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    gathered, carried, out = argv
    try:
        tag, parts = choose(gathered, carried)
    except ValueError as e:
        print(f"smollm2_restore: {e}", file=sys.stderr)
        return 1
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
    os.replace(tmp, out)
    print(f"smollm2_restore: start {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
