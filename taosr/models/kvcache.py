"""The key/value cache's name in transformers' forward signature and outputs, across versions.

transformers 5.x renamed ``past_key_values`` to ``cache`` (argument and output field); the old
name still works with a deprecation warning until 5.40. taosr passes a cache in three places
(the rollout decoder, the shared-prefix update, the reference growing-cache sampler): they call
:func:`cache_kwargs` and :func:`output_cache`, which read the forward's signature, so versions
before the rename and after it both run without warnings.

Also the decoder's static caches (:func:`static_cache`): one dtype for keys and values
(:func:`cast_inputs`), and the written-only variant that CPU evaluation decodes on.
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


# ----------------------------------------------------------------------------- static caches of one dtype
def static_cache(config, max_cache_len: int, dtype=None, written: bool = False):
    """A transformers ``StaticCache`` (preallocated, written in place) for the decoder, whose layers
    store keys and values in ``dtype`` (:func:`cast_inputs`; nothing is cast when None).

    ``written``: the layers hand attention only the positions written so far, and masks are that
    long: at decode step t the attention reads prompt + t keys instead of the whole preallocated
    length, the same keys (and the same numbers) a growing cache gives, without re-copying it
    every token. For eager decoding (CPU): the shapes change every step, so it is never captured.

    None when the model's cache is not made of plain static layers (sliding-window or hybrid
    models): the decoder then decodes eagerly on transformers' own ``StaticCache``."""
    try:  # transformers before the layered caches (or a config StaticCache cannot build): no such cache
        from transformers import StaticCache

        cache = StaticCache(config=config, max_cache_len=max_cache_len)
        if not plain_static_layers(cache):
            return None
        if written:
            layer_type = _written_layer_class()
            cache.layers = [layer_type(max_cache_len=max_cache_len) for _ in cache.layers]
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return None
    return cast_inputs(cache, dtype)


def cast_inputs(cache, dtype):
    """``cache`` (any layered transformers cache) with every layer casting the keys and values it
    receives to ``dtype`` (nothing when None), so both are stored in it. Under autocast with fp32
    weights a Llama's keys come out fp32 (RoPE's tables promote them) and its values in the autocast
    dtype; transformers 5.17 (the GPU machines' version) allocates a static layer's values in the
    keys' dtype and then refuses the values (``index_copy_``: Float vs BFloat16). The decoder passes
    autocast's dtype, which is what attention computes in there anyway (SDPA is a lower-precision op
    under autocast on CUDA and on CPU), so nothing changes numerically and the keys take half the
    memory."""
    if dtype is None:
        return cache
    for layer in getattr(cache, "layers", ()):
        for name in ("lazy_initialization", "update"):
            method = getattr(layer, name, None)
            if method is not None:
                setattr(layer, name, _casting(method, dtype))
    return cache


def _casting(method, dtype):
    def call(key_states, value_states, *args, **kwargs):
        return method(key_states.to(dtype), value_states.to(dtype), *args, **kwargs)
    return call


def plain_static_layers(cache) -> bool:
    """Whether ``cache`` is made of transformers' plain ``StaticLayer``s (or taosr's written-only
    subclass): device-side positions (``cumulative_length``) throughout, which a captured step
    needs. A sliding-window layer keeps a Python int that a CUDA graph would freeze at capture."""
    from transformers.cache_utils import StaticLayer

    layers = getattr(cache, "layers", None)
    if not layers or not hasattr(layers[0], "cumulative_length") or not hasattr(StaticLayer, "get_mask_sizes"):
        return False
    return all(type(layer) in (StaticLayer, _written_layer_class()) for layer in layers)


def written_static_cache(config, max_cache_len: int, dtype=None):
    """:func:`static_cache` with ``written=True``."""
    return static_cache(config, max_cache_len, dtype=dtype, written=True)


@functools.lru_cache(maxsize=None)
def _written_layer_class():
    from transformers.cache_utils import StaticLayer

    class WrittenStaticLayer(StaticLayer):
        """A static layer whose ``update`` returns views of the written positions only. Not
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
