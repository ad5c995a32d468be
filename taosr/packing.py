"""``taosr delta pack|unpack``: a fine-tuned export as a small low-rank delta against its base model
(:mod:`taosr.models.delta`), and the export rebuilt from it.

    taosr delta pack runs/quickstart-smollm2/dpo/export --base smollm2-135m --out packs/dpo
    taosr delta unpack packs/dpo --base smollm2-135m --out runs/quickstart-smollm2/dpo/export

``--base`` is a Hugging Face folder or the ``smollm2-135m`` preset (built once from the packaged
weights into ``--cache-dir``).
"""
from __future__ import annotations

import os

from taosr.cliargs import ArgumentParser
from taosr.errors import ConfigError


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def base_folder(base: str, cache_dir: str) -> str:
    from taosr.models.presets import SMOLLM2_PRESET, ensure_smollm2

    if base == SMOLLM2_PRESET:
        return ensure_smollm2(cache_dir)
    if not os.path.isdir(base):
        raise ConfigError(f"--base: {base!r} is no folder and not {SMOLLM2_PRESET}")
    return base


def delta_main(argv: list[str]) -> int:
    from taosr.models.delta import DTYPES, load_weights, pack, unpack
    from taosr.models.factory import PRESET_CACHE

    p = ArgumentParser(prog="taosr delta", description="A fine-tuned export as a small low-rank delta against its "
                                                        "base model, and the export rebuilt from it.")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("pack", help="write an export's low-rank delta against its base")
    k.add_argument("export", help="a taosr export (merged) or any Hugging Face model folder fine-tuned from --base")
    k.add_argument("--out", required=True, help="the pack folder to write")
    k.add_argument("--dtype", default="float16", choices=tuple(DTYPES), help="the factors' dtype (default float16)")
    k.add_argument("--max-rank", type=int, default=64, help="a delta of higher rank is stored whole (default 64)")
    k.add_argument("--rel-tol", type=float, default=1e-4,
                   help="singular values below this share of a delta's largest are dropped (default 1e-4)")
    u = sub.add_parser("unpack", help="rebuild the export a pack was made from")
    u.add_argument("pack", help="a folder written by taosr delta pack")
    u.add_argument("--out", required=True, help="the export folder to write")
    for s in (k, u):
        s.add_argument("--base", required=True, help="the base model: a Hugging Face folder or smollm2-135m")
        s.add_argument("--cache-dir", default=PRESET_CACHE, help=f"where a preset base is built (default {PRESET_CACHE})")
    a = p.parse_args(argv)
    if a.cmd == "pack" and a.max_rank < 1:
        raise ConfigError(f"taosr delta pack: --max-rank must be at least 1, got {a.max_rank}")
    if a.cmd == "pack" and not 0 < a.rel_tol < 1:
        raise ConfigError(f"taosr delta pack: --rel-tol must be in (0, 1), got {a.rel_tol}")
    base = load_weights(base_folder(a.base, a.cache_dir), "--base")
    if a.cmd == "pack":
        rec = pack(a.export, base, a.out, dtype=a.dtype, rel_tol=a.rel_tol, max_rank=a.max_rank, base_name=a.base)
        kinds = [t["kind"] for t in rec["tensors"].values()]
        ranks = [t["rank"] for t in rec["tensors"].values() if t["kind"] == "low_rank"]
        print(f"taosr delta pack: {a.out}: {_folder_size(a.out) / 2**20:.1f} MiB (export {_folder_size(a.export) / 2**20:.1f} "
              f"MiB); {kinds.count('low_rank')} tensors low-rank (rank {min(ranks, default=0)}-{max(ranks, default=0)}), "
              f"{kinds.count('full')} whole, {kinds.count('same')} as the base; largest error {rec['max_abs_error']:.2e}")
    else:
        unpack(a.pack, base, a.out)
        print(f"taosr delta unpack: {a.out} rebuilt from {a.pack} and {a.base}")
    return 0
