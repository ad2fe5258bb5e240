"""What advice reads and writes: the measured run as :class:`RunFacts` (a few :class:`Moment`
of bytes per category, and what is known about the model), and each :class:`Suggestion` made.

Plain frozen data: no torch, no device access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from profiler.records import CATEGORIES, Category, Phase

__all__ = ["INDEX", "N_CATEGORIES", "Moment", "RunFacts", "Suggestion"]

#: A category's position in the per-category tuples (:data:`~profiler.records.CATEGORIES`).
INDEX: dict[Category, int] = {c: i for i, c in enumerate(CATEGORIES)}
#: How many categories there are.
N_CATEGORIES = len(CATEGORIES)
_SCALING_PHASES = frozenset({str(Phase.FORWARD), str(Phase.BACKWARD)})


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One change that shrinks the peak: what to do, bytes saved, and whether the run then fits.

    ``fits`` is ``None`` when no capacity is known, or when the change was not replayed (an
    estimate never says it fits). ``params`` holds the change's settings (for ``batch_size``:
    ``batch_size``, ``accumulation_steps``, ``effective_batch``). ``verified`` says the peak was
    measured: replayed on fake tensors with the change applied (``replayed_peak``, tracked bytes
    without the device's overhead), or, for ``already_fits``, the run's own.
    """

    kind: str
    title: str
    saves_bytes: int
    fits: bool | None
    params: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""
    peak_after: int | None = None
    verified: bool = False
    replayed_peak: int | None = None

    def _repr_html_(self) -> str:
        """The suggestion as HTML for notebooks (:func:`profiler.notebook.suggestion_html`)."""
        from profiler.notebook import suggestion_html

        return suggestion_html(self)


@dataclass(frozen=True, slots=True)
class Moment:
    """Bytes per category (``CATEGORIES`` order) at one moment, and the phase it was in."""

    phase: str
    bytes: tuple[int, ...]

    def fixed_and_scaling(self) -> tuple[list[int], list[int]]:
        """The bytes split into what does not grow with the batch and what does."""
        fixed = list(self.bytes)
        scaling = [0] * N_CATEGORIES
        for category in (Category.ACTIVATIONS, Category.KV_CACHE):
            i = INDEX[category]
            scaling[i], fixed[i] = fixed[i], 0
        t = INDEX[Category.TEMPORARIES]
        if self.phase in _SCALING_PHASES:
            scaling[t], fixed[t] = fixed[t], 0
        return fixed, scaling


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What advice needs to know about a run, all measured or derived from the measurement.

    Args:
        moments: the bytes per category at the moments that may be the peak.
        capacity: the device's size in bytes (``None``: unknown, ``fits`` will be ``None``).
        overhead: bytes on the device outside the tracked tensors (CUDA context, the
            allocator's cache, other processes); 0 on a simulated device.
        batch: the batch size the moments were measured at.
        training: whether a backward pass ran.
        optimizer_class: the optimizer's class name.
        optimizer_bytes: the steady-state optimizer state (measured or predicted).
        gradient_bytes: the gradients once all are accumulated.
        weight_bytes, param_count, trainable_param_count: the model's parameters.
        autocast_dtype: the autocast dtype seen, if any.
        checkpointing: whether activation checkpointing is on (``None``: unknown).
        layer_activations: activation bytes saved per repeated layer (for checkpointing).
        layer_inputs: the bytes of each such layer's input, where known (same order).
        seq: the sequence length seen, if any.
        kv_positions: the positions a live KV cache held, if one was seen (for its advice).
        cached_free: allocator cache that no tensor used at the failure (part of ``overhead``).
        fragmented: whether fragmentation caused the failure (free cache >= the request).
        other_processes: bytes other processes hold on the device (part of ``overhead``).
        other_pids: their process ids.
        pretrained: a model worth fine-tuning with adapters (a transformers model, or one of at
            least 100M parameters): LoRA and QLoRA are suggested only then.
    """

    moments: tuple[Moment, ...]
    capacity: int | None = None
    overhead: int = 0
    batch: int | None = None
    training: bool = False
    optimizer_class: str | None = None
    optimizer_bytes: int = 0
    gradient_bytes: int = 0
    weight_bytes: int = 0
    param_count: int | None = None
    trainable_param_count: int | None = None
    autocast_dtype: str | None = None
    checkpointing: bool | None = None
    layer_activations: tuple[int, ...] = ()
    layer_inputs: tuple[int, ...] = ()
    seq: int | None = None
    kv_positions: int | None = None
    cached_free: int = 0
    fragmented: bool = False
    other_processes: int = 0
    other_pids: tuple[int, ...] = ()
    pretrained: bool = False
