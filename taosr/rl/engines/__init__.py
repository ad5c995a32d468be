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

    def engine_class(self):
        return getattr(importlib.import_module(self.module), self.cls)  # the engine's own deps load when built

    def check(self, options: dict, key: str = ENGINE_KEY) -> None:
        """Refuse an option the engine's constructor does not take (``key`` names where it is set)."""
        params = inspect.signature(self.engine_class().__init__).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return
        unknown = [k for k in options if k not in params or k == "self"]
        if unknown:
            takes = ", ".join(k for k in params if k != "self")
            raise ConfigError(f"{key}.{unknown[0]}: not an option of rollout engine {self.cls} (it takes {takes})")

    def build(self, **kwargs) -> RolloutEngine:
        self.check(kwargs)
        return self.engine_class()(**kwargs)


ENGINES: Registry[EngineEntry] = Registry("rollout engine", ENGINE_KEY)
ENGINES.register("hf", EngineEntry("taosr.rl.engines.hf", "HFEngine", on_policy=True))
ENGINES.register("vllm", EngineEntry("taosr.rl.engines.vllm_engine", "VLLMEngine", on_policy=False))


def make_engine(name: str, **kwargs) -> RolloutEngine:
    return ENGINES.get(name).build(**kwargs)
