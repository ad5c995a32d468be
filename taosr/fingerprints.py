"""What a file or folder holds, for the commands that decide whether to continue an earlier run's
file (``taosr sample``, ``score``, ``reason``, ``test``): its files' stats (:func:`file_stats`), a
digest of their contents (:func:`content_fingerprint`) and the file-times fingerprint taosr recorded
before 2026-12-04 (:func:`file_times_fingerprint`)."""
from __future__ import annotations

import hashlib
import os

_DIGESTS: dict[tuple, str] = {}


def file_stats(path: str) -> list[tuple[str, int, int, str]]:
    """``(name, size, mtime_ns, full path)`` of a file, or of a folder's files in walk order (names
    relative to the folder)."""
    if os.path.isfile(path):
        top, files = os.path.dirname(path), [path]
    else:
        top = path
        files = [os.path.join(root, f) for root, _, names in sorted(os.walk(path)) for f in sorted(names)]
    out = []
    for f in files:
        st = os.stat(f)
        out.append((os.path.relpath(f, top), st.st_size, st.st_mtime_ns, f))
    return out


def content_fingerprint(path: str) -> str:
    """What a file or folder holds: a digest of its files' names and bytes, so a copy or a move of the
    tree (new modification times) keeps it and a re-export changes it (hashing a 135M-parameter
    export takes about half a second, a small share of loading it; a process hashes a folder once
    while its files' sizes and times stay as they were)."""
    stats = file_stats(path)
    key = (os.path.realpath(path), tuple(s[:3] for s in stats))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for rel, size, _, f in stats:
            h.update(f"{rel}\0{size}\0".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def file_times_fingerprint(folder: str) -> str:
    """The fingerprint taosr recorded for a folder before 2026-12-04: its files' names, sizes and
    modification times (read only to keep files of that time resumable)."""
    h = hashlib.sha1()
    for rel, size, mtime, _ in file_stats(folder):
        h.update(f"{rel}:{size}:{mtime}\n".encode())
    return h.hexdigest()[:16]
