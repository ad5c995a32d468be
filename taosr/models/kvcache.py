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


# ----------------------------------------------------------------------------- written-only static cache
def written_static_cache(config, max_cache_len: int):
    """A transformers ``StaticCache`` (preallocated, written in place) whose layers hand attention
    only the positions written so far, and whose masks are that long: at decode step t the
    attention reads prompt + t keys instead of the whole preallocated length, the same keys (and
    the same numbers) a growing cache gives, without re-copying it every token. For eager decoding
    (CPU): the shapes change every step, so it is never captured in a graph. None when the model's
    cache is not made of plain static layers (sliding-window or hybrid models): use the plain one."""
    try:  # transformers before the layered caches (or a config StaticCache cannot build): no such cache
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        cache = StaticCache(config=config, max_cache_len=max_cache_len)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not StaticLayer for layer in layers):
            return None
        if not hasattr(layers[0], "cumulative_length") or not hasattr(StaticLayer, "get_mask_sizes"):
            return None
        layer_type = _written_layer_class()
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return None
    cache.layers = [layer_type(max_cache_len=max_cache_len) for _ in layers]
    return cache


@functools.lru_cache(maxsize=None)
def _written_layer_class():
    from transformers.cache_utils import StaticLayer

    class WrittenStaticLayer(StaticLayer):
        """A StaticLayer whose ``update`` returns views of the written positions only. Not
        compileable (its shapes change every step), which also lets transformers skip the mask of
        an unpadded batch as it does for a growing cache (same numbers as ``generate`` there too)."""

        is_compileable = False

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            n = int(self.cumulative_length)
            return keys[:, :, :n], values[:, :, :n]

        def get_mask_sizes(self, *args, **kwargs):  # (query_length) in transformers 5.x
            q = args[0] if args else next(iter(kwargs.values()))
            q = int(q.shape[-1]) if hasattr(q, "shape") else int(q)
            return (int(self.cumulative_length) if self.is_initialized else 0) + q, 0

    return WrittenStaticLayer
