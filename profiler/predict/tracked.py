"""Predictions for a live model and optimizer: what the tracker should measure, per category.

The tracker calls :func:`predict_tracked` when it closes to fill the ``predicted`` column of
``mem.breakdown()``. Every figure is derived from shapes, dtypes and the optimizer's class and
hyper-parameters, never from the measurement itself, so a gap between the two means something.

Optimizer state layouts (checked against torch 2.13 by running a step, see the tests):

=============  ==================================================================  ===========
class          per-parameter state                                                  ``step``
=============  ==================================================================  ===========
Adam, AdamW    ``exp_avg``, ``exp_avg_sq`` (+ ``max_exp_avg_sq`` with amsgrad)       float32 0-d
RAdam, Adamax  two tensors like the parameter                                       float32 0-d
NAdam          two tensors like the parameter, plus a float32 0-d ``mu_product``     float32 0-d
Adadelta       ``square_avg``, ``acc_delta``                                        float32 0-d
Rprop          ``prev``, ``step_size``                                              float32 0-d
Adagrad        ``sum``                                                              float32 0-d
RMSprop        ``square_avg`` (+ ``momentum_buffer`` if momentum, + ``grad_avg``     float32 0-d
               if centered)
SGD, Muon      ``momentum_buffer`` when momentum is not zero                        none
ASGD           ``ax`` plus 0-d ``eta`` and ``mu`` on the parameter's device          float32 0-d
Adafactor      ``row_var`` (shape[:-1]+(1,)) and ``col_var`` (shape[:-2]+(1,)+      float32 0-d
               shape[-1:]) for matrices, ``variance`` like the parameter otherwise
=============  ==================================================================  ===========

``step`` lives on the CPU unless the optimizer is ``capturable`` or ``fused``; it is counted
only when it sits on the same device as the parameter (always the case on CPU and in dry runs).
bitsandbytes 8-bit Adam keeps two uint8 states plus one float32 absmax per 256-element block for
tensors of at least 4096 elements, and two float32 states for smaller ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from profiler.records import CATEGORIES, Category
from profiler.shards import is_sharded, local_tensor, storage_nbytes

__all__ = [
    "optimizer_scratch_bytes",
    "optimizer_state_bytes",
    "predict_tracked",
    "round_bytes",
    "tensor_bytes",
]


def round_bytes(nbytes: int, rounding: int = 1) -> int:
    """``nbytes`` rounded up to a multiple of ``rounding`` (the CUDA allocator uses 512)."""
    if rounding <= 1 or nbytes <= 0:
        return max(nbytes, 0)
    return -(-nbytes // rounding) * rounding


def tensor_bytes(t: torch.Tensor, rounding: int = 1) -> int:
    """Bytes a tensor's elements occupy (numel × element size), rounded per tensor."""
    return round_bytes(t.numel() * t.element_size(), rounding)


def _storage_key(t: torch.Tensor) -> object:
    try:
        return local_tensor(t).untyped_storage()._cdata
    except Exception:  # noqa: BLE001 - some tensor subclasses have no storage
        return id(t)


def _storage_bytes(t: torch.Tensor) -> int:
    # a DTensor (FSDP2, tensor parallel): this rank's shard, with FSDP's padding
    try:
        return storage_nbytes(t)
    except Exception:  # noqa: BLE001
        return t.numel() * t.element_size()


def _unique_bytes(tensors: Iterable[torch.Tensor], rounding: int, seen: set[object]) -> int:
    total = 0
    for t in tensors:
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        total += round_bytes(_storage_bytes(t), rounding)
    return total


def _scalar_bytes() -> int:
    return 8 if torch.get_default_dtype() == torch.float64 else 4


def _like(p: torch.Tensor, rounding: int) -> int:
    return tensor_bytes(p, rounding)


def _adafactor_torch(p: torch.Tensor, rounding: int) -> int:
    item = p.element_size()
    if p.dim() > 1:
        shape = list(p.shape)
        rows = math.prod(shape[:-1])
        cols = math.prod(shape[:-2]) * shape[-1]
        return round_bytes(rows * item, rounding) + round_bytes(cols * item, rounding)
    return _like(p, rounding)


def _adafactor_hf(p: torch.Tensor, group: dict[str, Any], rounding: int) -> int:
    """transformers.optimization.Adafactor: float32 factored second moments, optional exp_avg."""
    total = 0
    if group.get("beta1") is not None:
        total += _like(p, rounding)
    if p.dim() >= 2:
        shape = list(p.shape)
        total += round_bytes(math.prod(shape[:-1]) * 4, rounding)
        total += round_bytes(math.prod(shape[:-2] + shape[-1:]) * 4, rounding)
    else:
        total += round_bytes(p.numel() * 4, rounding)
    return total


def _bnb_8bit(p: torch.Tensor, group: dict[str, Any], rounding: int, states: int) -> int:
    n = p.numel()
    if n < 4096:
        return states * round_bytes(n * 4, rounding)
    blocks = -(-n // 256)
    return states * (round_bytes(n, rounding) + round_bytes(blocks * 4, rounding))


def _per_param_rule(
    optimizer: torch.optim.Optimizer,
) -> Callable[[torch.Tensor, dict[str, Any], int], int] | None:
    """The function giving one parameter's state bytes for this optimizer, or None if unknown."""
    cls = type(optimizer)
    name = cls.__name__
    module = cls.__module__ or ""
    scalar = _scalar_bytes()

    def step_bytes(p: torch.Tensor, group: dict[str, Any], rounding: int) -> int:
        on_device = (
            group.get("capturable") or group.get("fused") or p.device.type in ("cpu", "meta")
        )
        return round_bytes(scalar, rounding) if on_device else 0

    def full(n: int, with_step: bool = True) -> Callable[[torch.Tensor, dict[str, Any], int], int]:
        def rule(p: torch.Tensor, group: dict[str, Any], rounding: int) -> int:
            return n * _like(p, rounding) + (step_bytes(p, group, rounding) if with_step else 0)

        return rule

    if "bitsandbytes" in module:
        states = 1 if "Momentum" in name or "RMSprop" in name or "Lion" in name else 2
        if "8bit" in name:
            return lambda p, g, r: _bnb_8bit(p, g, r, states)
        return lambda p, g, r: states * round_bytes(p.numel() * 4, r)
    if name == "Adafactor" and module.startswith("transformers"):
        return _adafactor_hf
    if name in ("Adam", "AdamW"):
        return lambda p, g, r: (3 if g.get("amsgrad") else 2) * _like(p, r) + step_bytes(p, g, r)
    if name in ("RAdam", "Adamax", "Adadelta", "Rprop"):
        return full(2)
    if name == "NAdam":
        return lambda p, g, r: 2 * _like(p, r) + step_bytes(p, g, r) + round_bytes(scalar, r)
    if name == "Adagrad":
        return full(1)
    if name == "RMSprop":
        return lambda p, g, r: (
            (1 + bool(g.get("momentum")) + bool(g.get("centered"))) * _like(p, r)
            + step_bytes(p, g, r)
        )
    if name in ("SGD", "Muon"):
        return lambda p, g, r: _like(p, r) if g.get("momentum") else 0
    if name == "ASGD":
        return lambda p, g, r: _like(p, r) + 3 * round_bytes(scalar, r)
    if name == "Adafactor":
        return lambda p, g, r: _adafactor_torch(p, r) + step_bytes(p, g, r)
    return None


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, rounding: int = 1) -> int | None:
    """Bytes the optimizer's state will hold after its first step, or None for an unknown class.

    Only parameters that require grad get state (torch skips the others once they have no
    ``.grad``), except with Adagrad, which builds state for every parameter in its constructor;
    a parameter listed in two groups is counted once.
    """
    rule = _per_param_rule(optimizer)
    if rule is None:
        return None
    total = 0
    seen: set[int] = set()
    eager = type(optimizer).__name__ == "Adagrad"  # builds state for every parameter up front
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in seen or not (p.requires_grad or eager):
                continue
            seen.add(id(p))
            total += rule(local_tensor(p), group, rounding)
    return total


_ADAM_LIKE = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")


def optimizer_scratch_bytes(optimizer: Any, rounding: int = 1) -> int:
    """Transient bytes an Adam-style step allocates on top of its state, 0 for other classes.

    The multi-tensor (foreach) path, torch's default for CUDA parameters, takes the square root
    of every second moment at once (``_foreach_sqrt``): one state-sized tensor per parameter.
    The per-parameter loop (the CPU default) and fused kernels hold at most two
    parameter-sized temporaries at a time.
    """
    if type(optimizer).__name__ not in _ADAM_LIKE:
        return 0
    total = 0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            continue
        foreach = group.get("foreach")
        if foreach is None:
            foreach = not group.get("fused") and all(p.device.type == "cuda" for p in params)
        if foreach and not group.get("fused"):
            total += sum(tensor_bytes(local_tensor(p), rounding) for p in params)
        else:
            total = max(total, 2 * max(tensor_bytes(local_tensor(p), rounding) for p in params))
    return total


def _activation_prediction(
    model: Any,
    *,
    batch: int | None,
    seq: int | None,
    training: bool,
    autocast_dtype: torch.dtype | None,
    rounding: int,
    kv_tokens: int | None,
) -> tuple[int | None, int | None]:
    from profiler.predict.formulas import (
        activation_bytes_for_module,
        is_checkpointing,
        kv_cache_bytes,
    )
    from profiler.predict.modelshape import shape_from_module

    shape = shape_from_module(model)
    if shape is None:
        return None, None
    kv: int | None = None
    config = getattr(model, "config", None)
    checkpointing = is_checkpointing(model)
    if kv_tokens is None and training and checkpointing:
        kv_tokens = 0  # transformers turns use_cache off under gradient checkpointing
    if kv_tokens is None and seq is not None and getattr(config, "use_cache", False):
        kv_tokens = seq  # a transformers forward with use_cache builds a cache of the input
    if kv_tokens is not None and batch is not None:
        dtype = autocast_dtype or _module_dtype(model)
        kv = kv_cache_bytes(shape, tokens=kv_tokens, batch=batch, dtype_bytes=_itemsize(dtype))
    acts: int | None = None
    if batch is not None and seq is not None:
        acts = activation_bytes_for_module(
            model,
            shape,
            batch=batch,
            seq=seq,
            training=training,
            autocast_dtype=autocast_dtype,
            rounding=rounding,
        )
    return acts, kv


def _training_transients(
    model: Any,
    optimizer: Any,
    batch: int | None,
    seq: int | None,
    autocast_dtype: torch.dtype | None,
    rounding: int,
) -> int | None:
    """The largest transient of a training step: the logits and their gradients, or the
    optimizer's scratch, whichever is larger."""
    from profiler.predict.modelshape import shape_from_module

    scratch = optimizer_scratch_bytes(optimizer, rounding) if optimizer is not None else 0
    shape = shape_from_module(model)
    if shape is None or batch is None or seq is None:
        return scratch if optimizer is not None else None
    a = _itemsize(autocast_dtype or _module_dtype(model))
    logits = batch * seq * shape.vocab_size
    parts = [logits * a, logits * 4, logits * 4] + ([logits * 4] if a != 4 else [])
    return max(sum(round_bytes(n, rounding) for n in parts), scratch)


def _autocast_cache_bytes(model: Any, dtype: torch.dtype | None, rounding: int) -> int:
    """Autocast's cached low-precision copies of the weights its matmuls use.

    Inside ``torch.autocast`` every weight and bias of a matmul or convolution module
    (``nn.Linear``, ``nn.ConvNd``, transformers' ``Conv1D``) that is a leaf parameter in another
    dtype is cast once per autocast region and kept in the cast cache, which the tracker counts
    as weights.
    """
    if dtype is None:
        return 0
    itemsize = _itemsize(dtype)
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        matmul = isinstance(module, torch.nn.Linear | torch.nn.modules.conv._ConvNd)
        if not (matmul or type(module).__name__ == "Conv1D"):  # transformers' GPT-2 Conv1D
            continue
        for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if p is None or id(p) in seen or not p.is_floating_point() or p.dtype == dtype:
                continue
            seen.add(id(p))
            total += round_bytes(local_tensor(p).numel() * itemsize, rounding)
    return total


def _module_dtype(model: Any) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


_warned: set[str] = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"gpumem: cannot predict {what}: {exc}", stacklevel=3)


def predict_tracked(
    model: Any,
    optimizer: Any,
    *,
    batch: int | None = None,
    seq: int | None = None,
    training: bool = False,
    autocast_dtype: torch.dtype | None = None,
    rounding: int = 1,
    kv_tokens: int | None = None,
    ddp_bucket_copy: bool = False,
) -> dict[Category, int | None]:
    """Predicted bytes per category for a tracked model and optimizer; never raises.

    Args:
        model: the tracked ``nn.Module`` (or None).
        optimizer: the tracked optimizer (or None).
        batch, seq: the input's batch size and sequence length, when the tracker saw them.
        training: whether a backward pass ran (gradients and saved activations exist).
        autocast_dtype: the autocast dtype in effect, if any.
        rounding: bytes each tensor is rounded up to (1 exact, 512 for the CUDA allocator).
        kv_tokens: tokens held per sequence in a KV cache, if one was seen.
        ddp_bucket_copy: DDP wrapped the model with buckets that copy the gradients.

    Returns:
        A dict with every category; a value is None where no prediction can be made.
        ``other`` is always None. After training, ``temporaries`` is the largest transient of
        a step (the logits with their fp32 gradients at the start of backward, or the Adam
        scratch); for inference it holds the prefill's working set, which the ledger counts as
        temporaries because nothing is saved for backward.
    """
    result: dict[Category, int | None] = dict.fromkeys(CATEGORIES)
    if model is not None:
        try:
            seen: set[object] = set()
            result[Category.WEIGHTS] = _unique_bytes(
                model.parameters(), rounding, seen
            ) + _autocast_cache_bytes(model, autocast_dtype, rounding)
            result[Category.BUFFERS] = _unique_bytes(model.buffers(), rounding, seen)
            grads = 0
            if training:
                grad_seen: set[int] = set()
                for p in model.parameters():
                    if p.requires_grad and id(p) not in grad_seen:
                        grad_seen.add(id(p))
                        # FSDP2's sharded gradients are views of a padded flat buffer
                        grads += (
                            round_bytes(storage_nbytes(p), rounding)
                            if is_sharded(p)
                            else tensor_bytes(p, rounding)
                        )
            if ddp_bucket_copy or (
                type(model).__name__ == "DistributedDataParallel"
                and not getattr(model, "gradient_as_bucket_view", True)
            ):
                grads *= 2  # DDP's buckets hold a flat copy of the gradients for the all-reduce
            result[Category.GRADIENTS] = grads
        except Exception as exc:  # noqa: BLE001 - predictions never break tracking
            _warn_once("weights", exc)
        try:
            acts, kv = _activation_prediction(
                model,
                batch=batch,
                seq=seq,
                training=training,
                autocast_dtype=autocast_dtype,
                rounding=rounding,
                kv_tokens=kv_tokens,
            )
            if training or acts is None:
                result[Category.ACTIVATIONS] = acts
                if training:
                    result[Category.TEMPORARIES] = _training_transients(
                        model, optimizer, batch, seq, autocast_dtype, rounding
                    )
            else:
                # Under no_grad nothing is saved for backward: the ledger counts the prefill's
                # working set as temporaries.
                result[Category.ACTIVATIONS] = 0
                result[Category.TEMPORARIES] = acts
            result[Category.KV_CACHE] = kv
        except Exception as exc:  # noqa: BLE001
            _warn_once("activations", exc)
    if optimizer is not None:
        try:
            result[Category.OPTIMIZER] = optimizer_state_bytes(optimizer, rounding)
        except Exception as exc:  # noqa: BLE001
            _warn_once("optimizer state", exc)
    elif model is not None and training:
        result[Category.OPTIMIZER] = 0
    return result
