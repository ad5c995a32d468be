"""A fine-tuned export as a small delta against its base model, and back (``taosr delta``).

A LoRA-merged export differs from its base by a matrix of rank at most r per stage in every adapted
linear layer (SmolLM2-135M + LoRA r16 through SFT then DPO: rank <= 32), so it travels as per-layer
low-rank factors: about 20 MB in float16 instead of the export's 540 MB of float32 weights. This is
what lets a start trained on a lent GPU (whose files come back 16 MiB at a time) serve a later
session, which rebuilds it from the packaged base.

A pack is a folder: ``delta.safetensors`` (tensors ``<name>.a`` and ``<name>.b`` with
``export = base + a @ b`` in float32, or ``<name>.full`` for a tensor stored whole), ``delta.json``
(format, the base's weight fingerprint, each tensor's kind and dtype, the reconstruction error) and
every non-weight file of the export (config, tokenizer, ``taosr_export.json``) as it was.

Each changed 2-D tensor keeps the singular values above ``rel_tol`` times its largest one (the
rounding noise of an fp32 merge sits far below 1e-4 of a LoRA delta), up to ``max_rank``; a delta
whose factors would be no smaller than the tensor (a full fine-tune) is stored whole, exactly.
Tensors equal to the base's are not stored. The factors are balanced (``a = U sqrt(S)``, ``b =
sqrt(S) V^T``) before the cast, so float16 keeps their range.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import torch

from taosr.errors import ConfigError
from taosr.models.factory import folder_written

FORMAT = "taosr-delta/1"
WEIGHTS, RECORD = "delta.safetensors", "delta.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _weight_files(folder: str) -> list[str]:
    return sorted(f for f in glob.glob(os.path.join(folder, "*.safetensors")) if not os.path.basename(f).startswith("adapter_"))


def load_weights(folder: str, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder's safetensors files (sharded or not), by name."""
    from safetensors.torch import load_file

    if not os.path.isdir(folder):
        raise ConfigError(f"{what}: {folder} is not a folder")
    files = _weight_files(folder)
    if not files:
        adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
        raise ConfigError(f"{what}: {folder} holds no model weights (*.safetensors)"
                          + ("; it is an adapter-only export: export the run merged" if adapter else ""))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def low_rank(delta: torch.Tensor, rel_tol: float = 1e-4, max_rank: int = 64) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Balanced factors ``(a, b)`` (float32) with ``a @ b`` ~ ``delta``, keeping the singular values
    above ``rel_tol`` times the largest; None (store it whole) when more than ``max_rank`` are kept
    or the factors would hold at least as many numbers as ``delta``."""
    d = delta.float()
    out_f, in_f = d.shape
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    if not len(s) or float(s[0]) == 0.0:
        return torch.zeros(out_f, 0), torch.zeros(0, in_f)
    r = int((s > rel_tol * s[0]).sum())
    if r > max_rank or r * (out_f + in_f) >= out_f * in_f:
        return None
    root = s[:r].sqrt()
    return (u[:, :r] * root).contiguous(), (root[:, None] * vh[:r]).contiguous()


def pack(export: str, base_weights: dict[str, torch.Tensor], out: str, dtype: str = "float16",
         rel_tol: float = 1e-4, max_rank: int = 64, base_name: str = "") -> dict:
    """Write the pack of ``export`` against ``base_weights`` into ``out``; returns its record."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"taosr delta pack: --dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    weights = load_weights(export, "taosr delta pack: the export")
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, dict] = {}
    worst = 0.0
    for name, w in weights.items():
        b = base_weights.get(name)
        entry = {"dtype": str(w.dtype).replace("torch.", ""), "shape": list(w.shape)}
        if b is not None and b.shape != w.shape:
            raise ConfigError(f"taosr delta pack: {name} is {tuple(w.shape)} in {export} but {tuple(b.shape)} in "
                              f"the base: not a fine-tune of that base")
        if b is not None and b.dtype == w.dtype and torch.equal(b, w):
            kinds[name] = {**entry, "kind": "same"}
            continue
        if b is not None and w.dim() == 2 and w.is_floating_point():
            delta = w.float() - b.float()
            factors = low_rank(delta, rel_tol, max_rank)
            if factors is not None:
                a, f = (t.to(DTYPES[dtype]) for t in factors)
                err = float((a.float() @ f.float() - delta).abs().max()) if a.shape[1] else float(delta.abs().max())
                worst = max(worst, err)
                tensors[f"{name}.a"], tensors[f"{name}.b"] = a, f
                kinds[name] = {**entry, "kind": "low_rank", "rank": int(a.shape[1]), "max_abs_error": err}
                continue
        tensors[f"{name}.full"] = w.contiguous()
        kinds[name] = {**entry, "kind": "full"}
    with folder_written(out) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt"})
        for f in sorted(os.listdir(export)):
            src = os.path.join(export, f)
            if os.path.isfile(src) and not f.endswith(".safetensors") and f != "model.safetensors.index.json":
                shutil.copy2(src, os.path.join(tmp, f))
        record = {"format": FORMAT, "base": base_name, "base_fingerprint": weights_fingerprint(base_weights),
                  "dtype": dtype, "rel_tol": rel_tol, "max_rank": max_rank, "max_abs_error": worst, "tensors": kinds}
        with open(os.path.join(tmp, RECORD), "w") as fh:
            json.dump(record, fh, indent=1)
    return record


def read_record(pack_dir: str) -> dict:
    path = os.path.join(pack_dir, RECORD)
    try:
        with open(path) as fh:
            record = json.load(fh)
    except OSError:
        raise ConfigError(f"taosr delta unpack: {path} not found (not a pack made by taosr delta pack)") from None
    except ValueError as e:
        raise ConfigError(f"taosr delta unpack: {path} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"taosr delta unpack: {path}: format {record.get('format') if isinstance(record, dict) else None!r}, "
                          f"expected {FORMAT!r}")
    if not isinstance(record.get("base_fingerprint"), str) or not isinstance(record.get("tensors"), dict):
        raise ConfigError(f"taosr delta unpack: {path} lacks base_fingerprint or tensors: the pack is damaged")
    return record


def unpack(pack_dir: str, base_weights: dict[str, torch.Tensor], out: str) -> dict:
    """Rebuild the export a pack was made from into ``out`` (one ``model.safetensors`` and the
    pack's other files); the base must be the one it was packed against."""
    from safetensors.torch import load_file, save_file

    record = read_record(pack_dir)
    fp = weights_fingerprint(base_weights)
    if fp != record["base_fingerprint"]:
        raise ConfigError(f"taosr delta unpack: the base's weights are not those {pack_dir} was packed against "
                          f"(packed against {record.get('base') or 'another base'}; fingerprint {fp[:12]} != "
                          f"{record['base_fingerprint'][:12]})")
    try:
        stored = load_file(os.path.join(pack_dir, WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a cut or foreign file
        raise ConfigError(f"taosr delta unpack: {os.path.join(pack_dir, WEIGHTS)} cannot be read "
                          f"({type(e).__name__}): the pack is damaged") from None
    weights: dict[str, torch.Tensor] = {}
    for name, entry in record["tensors"].items():
        try:
            dtype = getattr(torch, entry["dtype"])
            if entry["kind"] == "same":
                weights[name] = base_weights[name].clone()
            elif entry["kind"] == "low_rank":
                a, b = stored[f"{name}.a"].float(), stored[f"{name}.b"].float()
                weights[name] = (base_weights[name].float() + a @ b).to(dtype)
            else:
                weights[name] = stored[f"{name}.full"]
        except (KeyError, AttributeError, TypeError, RuntimeError) as e:
            raise ConfigError(f"taosr delta unpack: {name} cannot be rebuilt from {pack_dir} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'missing'}): the pack is damaged") from None
        if list(weights[name].shape) != entry["shape"]:
            raise ConfigError(f"taosr delta unpack: {name} rebuilt as {tuple(weights[name].shape)}, recorded "
                              f"{tuple(entry['shape'])}: the pack is damaged")
    with folder_written(out) as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        for f in sorted(os.listdir(pack_dir)):
            if f not in (WEIGHTS, RECORD) and os.path.isfile(os.path.join(pack_dir, f)):
                shutil.copy2(os.path.join(pack_dir, f), os.path.join(tmp, f))
    return record
