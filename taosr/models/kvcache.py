"""The key/value cache's name in transformers' forward signature and outputs, across versions.

transformers 5.x renamed ``past_key_values`` to ``cache`` (argument and output field); the old
name still works with a deprecation warning until 5.40. taosr passes a cache in three places
(the rollout decoder, the shared-prefix update, the reference growing-cache sampler): they call
:func:`cache_kwargs` and :func:`output_cache`, which read the forward's signature, so versions
before the rename and after it both run without warnings.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_arg(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def base_model(model):
    """The transformers model under a peft wrapper (whose forward takes ``**kwargs``)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def cache_kwargs(model, cache) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, as ``model``'s forward names it."""
    return {_cache_arg(type(base_model(model))): cache}


def output_cache(out):
    """The cache a forward returned (``out.cache``, or ``out.past_key_values`` before the rename)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
