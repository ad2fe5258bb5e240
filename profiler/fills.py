"""The values a dry run still knows: fake tensors made by ``torch.ones``/``zeros``/``full``.

Fake tensors have no data, so a check on their values cannot run, and transformers then takes
its "tracing" path: it cannot see that an ``attention_mask`` of ones masks nothing, so it builds
the 4-D mask and attention saves it (a ``(batch, 1, q, kv)`` boolean per layer, and on paths
that cannot use SDPA's ``is_causal`` a different kernel). A real device reads the values and
skips the mask. To take the path the real device takes, the dry run remembers the fill value of
every tensor a fill factory made (``ones``, ``zeros``, ``full``, their ``_like`` and ``new_``
forms), carries it through conversions, views, indexing, reductions and elementwise ops with
scalars, forgets it when the tensor (or anything sharing its storage) is written in place, and
answers ``bool()``/``item()`` and transformers' mask checks from it. Tensors whose values are
not known (``randint``, a mask with padding written into it) keep the tracing path, which is
the real path for a mask that does mask something.

It also knows ``torch.arange`` rows (consecutive along the last dimension, through offsets,
``unsqueeze``/``expand`` and conversions), and that ``torch.diff`` of such a row, prepended with
its own first column minus one, is all ones: transformers' packed-sequence check
(``find_packed_sequence_indices``, run where no cache is kept, as under gradient checkpointing)
then sees one sequence per row as the real device does, instead of building and saving a 4-D
mask per layer (32 KiB on a tiny GPT-2 at batch 8 x 64 tokens).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["Fills"]

_T = torch.Tensor
_FACTORIES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Any]] = {
    torch.ones: lambda a, k: 1,
    torch.zeros: lambda a, k: 0,
    torch.ones_like: lambda a, k: 1,
    torch.zeros_like: lambda a, k: 0,
    _T.new_ones: lambda a, k: 1,
    _T.new_zeros: lambda a, k: 0,
    torch.full: lambda a, k: a[1] if len(a) > 1 else k.get("fill_value"),
    torch.full_like: lambda a, k: a[1] if len(a) > 1 else k.get("fill_value"),
    _T.new_full: lambda a, k: a[2] if len(a) > 2 else k.get("fill_value"),
}
# ops whose result holds the input's value, converted to the result's dtype
_SAME = {
    getattr(_T, name)
    for name in [
        "to",
        "bool",
        "long",
        "int",
        "float",
        "half",
        "bfloat16",
        "double",
        "type",
        "type_as",
        "contiguous",
        "clone",
        "detach",
        "__getitem__",
        "view",
        "reshape",
        "expand",
        "expand_as",
        "unsqueeze",
        "squeeze",
        "flatten",
        "repeat",
        "narrow",
        "select",
        "t",
        "transpose",
        "permute",
        "cpu",
        "cuda",
        "all",
        "any",
        "amin",
        "amax",
        "min",
        "max",
    ]
} | {torch.clone, torch.reshape, torch.flatten, torch.unsqueeze, torch.squeeze, torch.all}
_UNARY: dict[Any, Callable[[Any], Any]] = {
    _T.__invert__: lambda v: not v if isinstance(v, bool) else ~v,
    _T.bitwise_not: lambda v: not v if isinstance(v, bool) else ~v,
    _T.logical_not: operator.not_,
    _T.__neg__: operator.neg,
}
_BINARY: dict[Any, Callable[[Any, Any], Any]] = {
    _T.__eq__: operator.eq,
    _T.__ne__: operator.ne,
    _T.__lt__: operator.lt,
    _T.__le__: operator.le,
    _T.__gt__: operator.gt,
    _T.__ge__: operator.ge,
    _T.__and__: lambda a, b: a & b,
    _T.__or__: lambda a, b: a | b,
    _T.__mul__: operator.mul,
    _T.__add__: operator.add,
    _T.__sub__: operator.sub,
    _T.__rsub__: lambda a, b: b - a,
    _T.eq: operator.eq,
    _T.ne: operator.ne,
    _T.logical_and: lambda a, b: bool(a) and bool(b),
    _T.logical_or: lambda a, b: bool(a) or bool(b),
}


_WRITES = frozenset(
    f"__i{op}__"
    for op in [
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
    ]
) | {"__setitem__"}


# ops whose result keeps each row of its input consecutive along the last dimension
_ROW_SAME = {
    getattr(_T, name)
    for name in ["to", "long", "int", "float", "double", "clone", "contiguous", "detach", "cpu"]
} | {torch.clone}
_ROW_SHIFT = {_T.__add__, _T.__radd__, _T.__sub__, _T.add, _T.sub, torch.add, torch.sub}


def _is_head(key: Any) -> bool:
    """``key`` is ``[:, :1]`` (or ``[..., :1]``): the first column of a 2-D row tensor."""
    if not isinstance(key, tuple) or not key or not isinstance(key[-1], slice):
        return False
    last = key[-1]
    first_only = last.start in (None, 0) and last.stop == 1 and last.step in (None, 1)
    return first_only and all(k == slice(None) or k is Ellipsis for k in key[:-1])


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point:
        return float(value)
    return int(value)


class Fills:
    """Fill values of fake tensors, kept by the dry run's function mode (see the module doc)."""

    def __init__(self) -> None:
        self._values: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        #: tensors whose rows are consecutive integers along the last dimension (an arange)
        self._rows: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        #: a row tensor's first column plus this offset (``rows[:, :1] - 1``: -1)
        self._heads: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def value(self, tensor: Any) -> Any:
        """The value every element of ``tensor`` holds, or None when it is not known."""
        if not isinstance(tensor, torch.Tensor):
            return None
        return self._values.get(tensor)

    def _operand(self, arg: Any) -> Any:
        if isinstance(arg, torch.Tensor):
            return self._values.get(arg)
        if isinstance(arg, bool | int | float):
            return arg
        return None

    def _forget(self, tensor: torch.Tensor) -> None:
        """``tensor`` was written in place: forget it and everything sharing its storage."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - storage-less tensors
            for known in (self._values, self._rows, self._heads):
                known.pop(tensor, None)
            return
        for known in (self._values, self._rows, self._heads):
            for other in list(known.keys()):
                with contextlib.suppress(RuntimeError, NotImplementedError):
                    if other.untyped_storage()._cdata == storage._cdata:
                        known.pop(other, None)

    def call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``func`` and record its result's fill value when the inputs' values are known."""
        name = getattr(func, "__name__", "")
        tracked = self._values or self._rows or self._heads
        if tracked and args and isinstance(args[0], torch.Tensor):
            known = func in (_T.__bool__, _T.item) and args[0] in self._values
            if known and args[0].numel() == 1:
                value = self._values[args[0]]
                return bool(value) if func is _T.__bool__ else value
            mutates = name.endswith("_") and not name.endswith("__")
            if mutates or name in _WRITES:
                self._forget(args[0])
        if isinstance(kwargs.get("out"), torch.Tensor):
            self._forget(kwargs["out"])
        result = func(*args, **kwargs)
        if not isinstance(result, torch.Tensor):
            return result
        value = self._result_value(func, args, kwargs, result)
        if value is not None:
            self._values[result] = _cast(value, result.dtype)
        elif func is torch.arange or self._rows or self._heads:
            self._track_rows(func, args, kwargs, result)
        return result

    def _track_rows(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: _T
    ) -> None:
        """Record ``result`` as a row tensor, or a row tensor's first column plus an offset."""
        if func is torch.arange:
            step = args[2] if len(args) > 2 else kwargs.get("step", 1)
            if step == 1 and not result.dtype.is_floating_point:
                self._rows[result] = True
            return
        if not args or not isinstance(args[0], torch.Tensor):
            return
        source = args[0]
        if source in self._rows:
            last_kept = result.dim() >= 1 and result.shape[-1] == source.shape[-1]
            reshaped = func in (_T.unsqueeze, torch.unsqueeze, _T.expand, _T.expand_as)
            shifted = func in _ROW_SHIFT and len(args) > 1 and self._operand(args[1]) is not None
            prepend = kwargs.get("prepend")
            if func in _ROW_SAME or (reshaped and last_kept) or shifted:
                self._rows[result] = True
            elif func is _T.__getitem__ and len(args) > 1 and _is_head(args[1]):
                self._heads[result] = 0
            elif (
                func is torch.diff
                and isinstance(prepend, torch.Tensor)
                and self._heads.get(prepend) == -1
                and kwargs.get("dim", -1) in (-1, source.dim() - 1)
                and kwargs.get("n", 1) == 1
            ):
                self._values[result] = _cast(1, result.dtype)  # consecutive: every step is 1
        elif source in self._heads and func in _ROW_SHIFT and len(args) > 1:
            offset = self._operand(args[1])
            if isinstance(offset, int) and not isinstance(offset, bool):
                sign = -1 if func in (_T.__sub__, _T.sub, torch.sub) else 1
                self._heads[result] = self._heads[source] + sign * offset

    def _result_value(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: _T
    ) -> Any:
        if func in _FACTORIES:
            return _FACTORIES[func](args, kwargs)
        if not self._values or not args:
            return None
        first = self._operand(args[0])
        if first is None or not isinstance(args[0], torch.Tensor):
            return None
        if func in _SAME:
            if func in (_T.all, torch.all):
                return bool(first) or args[0].numel() == 0
            if func is _T.any:
                return bool(first) and args[0].numel() > 0
            return first
        if func in (_T.cumsum, torch.cumsum) and first == 0:
            return 0
        if func in (_T.sum, torch.sum):
            reduced = args[0].numel() // max(result.numel(), 1)
            return first * reduced
        if func in _UNARY:
            return _UNARY[func](first)
        if func in _BINARY and len(args) > 1:
            second = self._operand(args[1])
            return None if second is None else _BINARY[func](first, second)
        return None

    @contextlib.contextmanager
    def transformers_checks(self) -> Iterator[None]:
        """Let transformers' mask checks read known values instead of taking the tracing path."""
        try:
            from transformers import masking_utils
        except Exception:  # noqa: BLE001 - transformers absent or broken: nothing to patch
            yield
            return
        original = masking_utils.is_tracing

        def is_tracing(tensor: Any = None) -> bool:
            if tensor is not None and self.value(tensor) is not None:
                return bool(original(None))
            return bool(original(tensor))

        masking_utils.is_tracing = is_tracing
        try:
            yield
        finally:
            masking_utils.is_tracing = original
