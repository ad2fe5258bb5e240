"""The engine's shared state: one slotted object every part reads and writes.

The hot path reads a handful of these fields per call, so they live in one ``__slots__`` object
instead of being spread over a dozen classes. Only the engine's parts write here; the facade
reads it to answer :class:`~profiler.run.RunView`.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch

from profiler.ledger import Ledger
from profiler.ranks import current_ranks
from profiler.records import CATEGORIES, Category, Failure, ModuleActivity, Phase, SessionInfo

if TYPE_CHECKING:
    from profiler.tracking.options import Options

__all__ = ["CALLS", "EngineState", "Mode", "ModuleStats", "enter_microbatch", "new_module_stats"]


class Mode(StrEnum):
    """How the engine measures: the exact ledger, or allocator counter reads at boundaries."""

    EXACT = "exact"
    FAST = "fast"


# Per-module statistics, one list of ints per module FQN (the hot path indexes it): calls;
# activation bytes saved by the module itself in this micro-batch and the most in any one; the
# same with its descendants; the highest total above the starting one during its forward and its
# backward; the total when it started; the micro-batch its OWN and INCL belong to.
CALLS, OWN, OWN_MAX, INCL, INCL_MAX, FWD_PEAK, BWD_PEAK, BASE, MICROBATCH = range(9)
ModuleStats = list[int]


def new_module_stats() -> ModuleStats:
    """A fresh per-module statistics list (all zeros)."""
    return [0] * 9


def enter_microbatch(stats: ModuleStats, microbatch: int) -> None:
    """A module's first forward in ``microbatch``: the last one's activations are folded into
    the most in any micro-batch, and counting starts again (gradient accumulation runs several
    micro-batches per step; each is a forward pass of the outermost module)."""
    if stats[OWN] > stats[OWN_MAX]:
        stats[OWN_MAX] = stats[OWN]
    if stats[INCL] > stats[INCL_MAX]:
        stats[INCL_MAX] = stats[INCL]
    stats[OWN] = stats[INCL] = 0
    stats[MICROBATCH] = microbatch


class EngineState:
    """What the engine knows about the run now: where it is, what it measured, the facts."""

    __slots__ = (
        "active",
        "attention_impl",
        "autocast_dtype",
        "backward_stack",
        "capacity",
        "checkpointing",
        "compiled_calls",
        "compiled_depth",
        "device",
        "end_time",
        "failure",
        "gpu_name",
        "home",
        "kv_cache_reused",
        "kv_tokens",
        "ledger",
        "microbatch",
        "mode",
        "model_class",
        "model_ref",
        "module_every",
        "module_frames",
        "module_stack",
        "module_stats",
        "name",
        "names",
        "observed_batch",
        "observed_seq",
        "on_cuda",
        "optimizer_class",
        "optimizer_refs",
        "param_count",
        "phase",
        "pid",
        "predicted",
        "rounding",
        "saw_backward",
        "session_dir",
        "start_time",
        "step",
        "step_start",
        "thread",
        "trainable_param_count",
        "wanted",
    )

    def __init__(
        self,
        options: Options,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        self.model_ref: weakref.ref[torch.nn.Module] | None = (
            weakref.ref(model) if model is not None else None
        )
        self.optimizer_refs: list[weakref.ref[torch.optim.Optimizer]] = (
            [weakref.ref(optimizer)] if optimizer is not None else []
        )
        self.name = options.name
        self.home = options.home
        self.capacity = options.capacity
        self.gpu_name = options.gpu_name
        self.device = torch.device("cpu")
        self.mode = Mode.EXACT
        self.rounding = 1
        self.on_cuda = False
        self.wanted: Callable[[torch.Tensor], bool] | None = None
        self.ledger = Ledger()
        self.active = False
        self.thread = threading.get_ident()
        self.pid = os.getpid()
        self.model_class: str | None = type(model).__name__ if model is not None else None
        self.optimizer_class: str | None = type(optimizer).__name__ if optimizer else None
        self.param_count: int | None = None
        self.trainable_param_count: int | None = None
        self.attention_impl: str | None = None
        self.checkpointing: bool | None = None
        self.predicted: dict[Category, int | None] = dict.fromkeys(CATEGORIES)
        self.session_dir: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget what a previous ``with`` block measured (the facts of the model stay)."""
        self.phase = Phase.IDLE
        self.step = 0
        self.step_start = 0.0
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.saw_backward = False
        self.module_stack: list[str] = []
        self.backward_stack: list[str] = []
        self.names: dict[int, str] = {}
        self.module_stats: dict[str, ModuleStats] = {}
        self.module_frames = True  # per-module boundary reads (off in fast mode, slow counter)
        #: Fast mode: per-module figures from every this many steps (0: from every step).
        self.module_every = 0
        self.failure: Failure | None = None
        #: Forward passes of the outermost module so far (micro-batches; 0 before the first).
        self.microbatch = 0
        self.observed_batch: int | None = None
        self.observed_seq: int | None = None
        #: Positions per sequence held by the largest KV cache seen (``None``: no cache seen).
        self.kv_tokens: int | None = None
        #: Whether a prompt was fed to a KV cache that already held positions. Until then a
        #: growing cache is a generation in progress (steps may end per token), not a leak.
        self.kv_cache_reused = False
        self.autocast_dtype: torch.dtype | None = None
        #: Calls of ``torch.compile``'d modules seen (their inner ops run without dispatch).
        self.compiled_calls = 0
        #: How many compiled modules are running now (nested ones count each).
        self.compiled_depth = 0

    @property
    def model(self) -> torch.nn.Module | None:
        """The tracked model while it is alive (held weakly)."""
        return self.model_ref() if self.model_ref is not None else None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The tracked optimizers still alive."""
        return [o for o in (ref() for ref in self.optimizer_refs) if o is not None]

    def is_wanted(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is on the tracked device."""
        wanted = self.wanted
        return wanted is None or wanted(tensor)

    def module_name(self, module: torch.nn.Module) -> str:
        """The module's fully qualified name (its class name when it is not in the model)."""
        return self.names.get(id(module)) or type(module).__name__

    def innermost_module(self) -> str | None:
        """The module running now (forward stack first, then the ledger's backward module)."""
        stack = self.module_stack
        return stack[-1] if stack else self.ledger.module

    # ------------------------------------------------------------------ as records

    def info(self) -> SessionInfo:
        """The run's facts as seen so far, as an immutable record."""
        autocast = self.autocast_dtype
        ranks = current_ranks()
        return SessionInfo(
            name=self.name,
            mode=str(self.mode),
            device=str(self.device),
            device_type=self.device.type,
            device_index=self.device.index,
            rounding=self.rounding,
            capacity=self.capacity,
            gpu_name=self.gpu_name,
            pid=self.pid,
            step=self.step,
            model_class=self.model_class,
            param_count=self.param_count,
            trainable_param_count=self.trainable_param_count,
            optimizer_class=self.optimizer_class,
            observed_batch=self.observed_batch,
            observed_seq=self.observed_seq,
            kv_tokens=self.kv_tokens,
            kv_cache_reused=self.kv_cache_reused,
            autocast_dtype=None if autocast is None else str(autocast).removeprefix("torch."),
            checkpointing=self.checkpointing,
            attention_impl=self.attention_impl,
            training=self.saw_backward,
            start_time=self.start_time,
            end_time=self.end_time,
            session_dir=None if self.session_dir is None else str(self.session_dir),
            home=None if self.home is None else os.fspath(self.home),
            rank=ranks.rank,
            local_rank=ranks.local_rank,
            world_size=ranks.world_size,
            job_id=ranks.job_id,
        )

    def module_activity(self) -> list[ModuleActivity]:
        """One record per module seen, in the order first seen (``None``: not measured)."""
        measured = self.module_frames
        exact = self.mode is Mode.EXACT or self.module_every > 0
        return [
            ModuleActivity(
                name=name,
                calls=s[CALLS],
                activations=max(s[OWN], s[OWN_MAX]) if measured else None,
                activations_inclusive=max(s[INCL], s[INCL_MAX]) if measured else None,
                forward_peak=s[FWD_PEAK] if measured else None,
                backward_peak=s[BWD_PEAK] if exact else None,
            )
            for name, s in list(self.module_stats.items())
        ]
