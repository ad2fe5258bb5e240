"""The CUDA caching allocator: the only module that touches ``torch.cuda`` internals.

Nothing here initialises CUDA: every reader returns ``None`` (or 0) while CUDA is not initialised.
"""

from __future__ import annotations

import torch

from profiler.records import AllocatorReading

__all__ = ["BLOCK_ROUNDING", "allocated_bytes", "allocator_reading", "is_initialized", "round_size"]

#: The caching allocator hands out blocks in multiples of 512 bytes (kMinBlockSize).
BLOCK_ROUNDING = 512


def round_size(nbytes: int) -> int:
    """The bytes the caching allocator charges for a request of ``nbytes``."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // BLOCK_ROUNDING) * BLOCK_ROUNDING


def is_initialized() -> bool:
    """Whether CUDA is initialised in this process (never initialises it)."""
    return torch.cuda.is_initialized()


def allocated_bytes(device: torch.device | int | None = None) -> int:
    """Bytes PyTorch has allocated on ``device`` (0 while CUDA is not initialised)."""
    if not is_initialized():
        return 0
    return int(torch.cuda.memory_allocated(device))


def allocator_reading(device: torch.device | int | None = None) -> AllocatorReading | None:
    """The allocator's figures for ``device``, or ``None`` while CUDA is not initialised."""
    if not is_initialized():
        return None
    stats = torch.cuda.memory_stats(device)
    if not stats:
        return None
    return AllocatorReading(
        allocated=int(stats.get("allocated_bytes.all.current", 0)),
        reserved=int(stats.get("reserved_bytes.all.current", 0)),
        active=int(stats.get("active_bytes.all.current", 0)),
        inactive_split=int(stats.get("inactive_split_bytes.all.current", 0)),
        peak_allocated=int(stats.get("allocated_bytes.all.peak", 0)),
        num_alloc_retries=int(stats.get("num_alloc_retries", 0)),
        num_ooms=int(stats.get("num_ooms", 0)),
    )
