"""Rollout engines behind one interface (:class:`RolloutEngine`), chosen by name from
:data:`ENGINES`: Hugging Face ``generate`` (``hf``, default, CPU and GPU) and vLLM (``vllm``, GPU,
optional extra). Both are imported only when built."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from taosr.errors import ConfigError
from taosr.registry import Registry
from taosr.rl.engines.base import RolloutEngine

ENGINE_KEY = "trainer.callbacks[RolloutCallback].init_args.engine"


@dataclass(frozen=True)
class EngineEntry:
    module: str            # imported when the engine is built
    cls: str
    on_policy: bool        # samples from the trainer's model object itself (its log-probs are the update's)

    def build(self, **kwargs) -> RolloutEngine:
        cls = getattr(importlib.import_module(self.module), self.cls)
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            unknown = [k for k in kwargs if k not in params or k == "self"]
            if unknown:
                takes = ", ".join(k for k in params if k != "self")
                raise ConfigError(f"{ENGINE_KEY}: {unknown[0]!r} is not an option of engine {self.cls} (it takes {takes})")
        return cls(**kwargs)


ENGINES: Registry[EngineEntry] = Registry("rollout engine", ENGINE_KEY)
ENGINES.register("hf", EngineEntry("taosr.rl.engines.hf", "HFEngine", on_policy=True))
ENGINES.register("vllm", EngineEntry("taosr.rl.engines.vllm_engine", "VLLMEngine", on_policy=False))


def make_engine(name: str, **kwargs) -> RolloutEngine:
    return ENGINES.get(name).build(**kwargs)
