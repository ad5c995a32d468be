"""Rollout engines behind one interface (:class:`RolloutEngine`): Hugging Face ``generate``
(default, CPU and GPU) and vLLM (GPU, optional extra, imported lazily)."""
from __future__ import annotations

from taosr.errors import ConfigError
from taosr.rl.engines.base import RolloutEngine
from taosr.rl.engines.hf import HFEngine


def make_engine(name: str, **kwargs) -> RolloutEngine:
    if name == "hf":
        return HFEngine(**kwargs)
    if name == "vllm":
        from taosr.rl.engines.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    raise ConfigError(f"rollout engine {name!r} is unknown; expected 'hf' or 'vllm'")
