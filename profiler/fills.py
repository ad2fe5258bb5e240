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
            self._values.pop(tensor, None)
            return
        for other in list(self._values.keys()):
            with contextlib.suppress(RuntimeError, NotImplementedError):
                if other.untyped_storage()._cdata == storage._cdata:
                    self._values.pop(other, None)

    def call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``func`` and record its result's fill value when the inputs' values are known."""
        name = getattr(func, "__name__", "")
        if self._values and args and isinstance(args[0], torch.Tensor):
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
        return result

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
