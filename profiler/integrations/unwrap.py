"""The real model and optimizer behind the wrappers frameworks put around them."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ddp_copies_gradients", "unwrap_model", "unwrap_optimizer"]


def _wrappers() -> tuple[type, ...]:
    """The wrapper classes that keep the model as ``.module`` (DDP, DataParallel, FSDP v1)."""
    found: list[type] = [torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel]
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        found.append(FullyShardedDataParallel)
    except ImportError:  # a torch built without distributed
        pass
    return tuple(found)


def unwrap_model(model: Any) -> Any:
    """The innermost ``nn.Module`` behind DDP, FSDP (v1), DataParallel and ``torch.compile``.

    FSDP2 (``fully_shard``) wraps nothing (it changes the module's class in place), so the model
    is itself. Anything that is not a wrapper comes back unchanged.
    """
    wrappers = _wrappers()
    for _ in range(16):  # wrappers nest a few deep at most
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, torch.nn.Module) and isinstance(model, wrappers):
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
    return model


def ddp_copies_gradients(model: Any) -> bool:
    """Whether ``model`` is a DDP wrapper whose buckets copy the gradients (not views of them)."""
    return isinstance(model, torch.nn.parallel.DistributedDataParallel) and not getattr(
        model, "gradient_as_bucket_view", True
    )


def unwrap_optimizer(optimizer: Any) -> Any:
    """The real optimizer behind accelerate's ``AcceleratedOptimizer`` (and similar wrappers that
    keep it as ``.optimizer``)."""
    seen: set[int] = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            return optimizer
        optimizer = inner
    return optimizer
