"""Recognises KV-cache tensors: transformers ``Cache`` objects and ``past_key_values`` tuples.

Nothing here imports transformers: a cache is recognised by shape of use (an object passed or
returned as ``past_key_values``, or one whose class is a transformers ``Cache``), and its tensors
are found by walking its attributes, lists, tuples and dicts a few levels deep. That covers
``DynamicCache`` (``layers[i].keys/values`` in transformers 5, ``key_cache``/``value_cache`` lists
in 4.x), ``StaticCache``, ``SlidingWindowCache``, encoder-decoder caches, the legacy
tuple-of-tuples format and custom caches handed to ``mem.mark_kv_cache``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["cache_positions", "cache_tensors", "find_caches", "is_cache_object"]

_MAX_DEPTH = 5
#: Where a model's inputs and outputs carry their KV cache, newest transformers name first.
_CACHE_KEYS = ("cache", "past_key_values", "past_key_value")


def is_cache_object(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``Cache`` (without importing transformers)."""
    cache_utils = sys.modules.get("transformers.cache_utils")
    cache_cls = getattr(cache_utils, "Cache", None) if cache_utils is not None else None
    if cache_cls is not None and isinstance(obj, cache_cls):
        return True
    return any(cls.__name__.endswith("Cache") for cls in type(obj).__mro__[:-1])


def cache_tensors(
    obj: Any, _depth: int = 0, _seen: set[int] | None = None
) -> Iterator[torch.Tensor]:
    """Every tensor reachable from a cache object, each object visited once."""
    if _seen is None:
        _seen = set()
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if _depth > _MAX_DEPTH or id(obj) in _seen or isinstance(obj, str | bytes | int | float):
        return
    _seen.add(id(obj))
    if isinstance(obj, list | tuple):
        for item in obj:
            yield from cache_tensors(item, _depth + 1, _seen)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from cache_tensors(item, _depth + 1, _seen)
    elif isinstance(obj, torch.nn.Module):
        return  # a cache that points back at a model must not pull its weights in
    else:
        attributes = getattr(obj, "__dict__", None)
        if attributes:
            for item in attributes.values():
                yield from cache_tensors(item, _depth + 1, _seen)


def cache_positions(obj: Any) -> int:
    """Positions a cache holds per sequence: the longest dim -2 of its (batch, heads, T, dim)."""
    return max((int(t.shape[-2]) for t in cache_tensors(obj) if t.dim() >= 3), default=0)


def _is_legacy_past(value: Any) -> bool:
    """A legacy ``past_key_values``: a tuple of per-layer tuples of tensors."""
    return (
        isinstance(value, tuple)
        and len(value) > 0
        and all(
            isinstance(layer, tuple) and layer and isinstance(layer[0], torch.Tensor)
            for layer in value
        )
    )


def find_caches(value: Any) -> list[Any]:
    """The KV caches held by a model's inputs or outputs (a ModelOutput, dict, tuple or Cache)."""
    found: list[Any] = []
    if value is None or isinstance(value, torch.Tensor):
        return found
    if is_cache_object(value):
        return [value]
    past = None
    # transformers 5.2x names the output's cache ``cache``; earlier releases ``past_key_values``
    # (asking a newer ModelOutput for the old name logs a deprecation, so look before asking).
    for key in _CACHE_KEYS:
        if isinstance(value, dict):
            # dict's own lookup: a ModelOutput's ``in`` maps the old names to ``cache`` and logs
            if dict.__contains__(value, key):
                past = dict.__getitem__(value, key)
                break
        elif isinstance(value, Mapping):
            if key in value:
                past = value[key]
                break
        elif key in getattr(value, "__dict__", ()):
            past = getattr(value, key)
            break
    if past is not None and (is_cache_object(past) or _is_legacy_past(past)):
        found.append(past)
    elif isinstance(value, tuple | list) and not isinstance(value, str):
        for item in value:
            if item is not None and not isinstance(item, torch.Tensor) and is_cache_object(item):
                found.append(item)
    return found
