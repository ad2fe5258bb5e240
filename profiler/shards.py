"""What a tensor occupies on this rank: a DTensor is charged by its local shard, never its global size.

A ``DTensor`` (FSDP2's ``fully_shard`` parameters, gradients and optimizer state, tensor
parallelism) is a wrapper: ``untyped_storage()`` on it describes the *global* tensor (no data
behind it), while the bytes this rank holds are its ``_local_tensor``'s storage (FSDP2 pads each
shard, and that padding is in the local storage). The ledger, the known tensors and the
predictions all ask this module, so the three agree.

The names of the sub-labels (FSDP- and DDP-specific memory inside the existing categories,
named as ``torch.distributed._tools.FSDPMemTracker`` names them) live here too.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "ALL_GATHER",
    "DDP_BUCKET",
    "REDUCE_SCATTER",
    "SHARDED_GRAD",
    "SHARDED_PARAM",
    "SUBLABELS",
    "UNSHARDED_GRAD",
    "UNSHARDED_PARAM",
    "is_sharded",
    "local_tensor",
    "storage_nbytes",
]

# Sub-labels: where in its category a byte sits. Each belongs to one category (the byte's
# role): parameters and what gathers them are weights, gradients and what reduces them are
# gradients.
SHARDED_PARAM = "sharded_param"  # weights: this rank's FSDP shard of a parameter (padded)
UNSHARDED_PARAM = "unsharded_param"  # weights: a parameter gathered whole, while gathered
ALL_GATHER = "all_gather"  # weights: FSDP's all-gather output buffer
SHARDED_GRAD = "sharded_grad"  # gradients: this rank's shard of a gradient
UNSHARDED_GRAD = "unsharded_grad"  # gradients: a whole gradient before its reduce-scatter
REDUCE_SCATTER = "reduce_scatter"  # gradients: FSDP's reduce-scatter input buffer
DDP_BUCKET = "ddp_bucket"  # gradients: a DDP gradient bucket (a communication buffer)

#: Every sub-label with the category it lies in.
SUBLABELS: dict[str, str] = {
    SHARDED_PARAM: "weights",
    UNSHARDED_PARAM: "weights",
    ALL_GATHER: "weights",
    SHARDED_GRAD: "gradients",
    UNSHARDED_GRAD: "gradients",
    REDUCE_SCATTER: "gradients",
    DDP_BUCKET: "gradients",
}

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage this rank holds: a DTensor's local shard, else ``tensor``."""
    if type(tensor) in _PLAIN:
        return tensor
    local = getattr(tensor, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else tensor


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor-like wrapper with a local shard."""
    return (
        isinstance(tensor, torch.Tensor)
        and type(tensor) not in _PLAIN
        and isinstance(getattr(tensor, "_local_tensor", None), torch.Tensor)
    )


def storage_nbytes(tensor: torch.Tensor) -> int:
    """Bytes of the storage behind ``tensor`` on this rank (its local shard's for a DTensor)."""
    local = local_tensor(tensor)
    try:
        return int(local.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError, TypeError):
        return local.numel() * local.element_size()
