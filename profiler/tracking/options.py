"""The tracker's options: validated when the tracker is made, resolved when the block starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from profiler.backends import cuda
from profiler.errors import UsageError
from profiler.notebook import notebook_name
from profiler.tracking.state import Mode
from profiler.units import parse_bytes

__all__ = ["Options", "default_name", "device_filter"]

_MODES = ("auto", "exact", "fast")


@dataclass(frozen=True, slots=True)
class Options:
    """What the user asked for (see :class:`~profiler.tracker.MemoryTracker` for each)."""

    mode: str = "auto"
    device: torch.device | str | int | None = None
    name: str = "python"
    stream: bool = True
    home: str | os.PathLike[str] | None = None
    capacity: int | None = None
    gpu_name: str | None = None
    rounding: int | None = None
    leaks: bool = True
    max_samples: int = 50_000
    max_steps: int = 20_000
    history: int = 0

    @classmethod
    def validated(
        cls,
        *,
        mode: str = "auto",
        device: torch.device | str | int | None = None,
        name: str | None = None,
        stream: bool = True,
        home: str | os.PathLike[str] | None = None,
        capacity: str | int | None = None,
        gpu: tuple[str, int] | None = None,
        rounding: int | None = None,
        leaks: bool = True,
        max_samples: int = 50_000,
        max_steps: int = 20_000,
        history: bool | int = False,
    ) -> Options:
        """Options from the user's arguments, or a :class:`UsageError` saying what is wrong.

        ``gpu`` is a catalogue entry already looked up: (its name, its memory in bytes).
        ``history``: record the CUDA allocator's history (``True``: its last 100,000 events, or
        that many).
        """
        if mode not in _MODES:
            raise UsageError(f"unknown mode {mode!r}", hint="use 'auto', 'exact' or 'fast'")
        gpu_name, size = gpu if gpu is not None else (None, None)
        if capacity is not None:
            size = parse_bytes(capacity)
        if rounding is not None and (not isinstance(rounding, int) or rounding < 1):
            raise UsageError(f"rounding must be a positive number of bytes, got {rounding!r}")
        if history is True:
            history = 100_000
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            history = 0 if history is False else -1
        if history < 0:
            raise UsageError("history must be True, False or a number of allocator events")
        return cls(
            history=history,
            mode=mode,
            device=device,
            name=name or default_name(),
            stream=stream,
            home=home,
            capacity=size,
            gpu_name=gpu_name,
            rounding=rounding,
            leaks=leaks,
            max_samples=max_samples,
            max_steps=max_steps,
        )

    def resolve_device(self, model: torch.nn.Module | None) -> torch.device:
        """The device to account for: the option, else the model's, else CUDA if it is already
        initialised (never initialised here), else the CPU."""
        device = self.device
        if device is not None:
            if isinstance(device, int):
                return torch.device("cuda", device)
            return torch.device(device)
        if model is not None:
            for param in model.parameters():
                return param.device
            for buffer in model.buffers():
                return buffer.device
        if cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def resolve_mode(self, device: torch.device) -> Mode:
        """``auto``: fast on CUDA, exact elsewhere and whenever a capacity is simulated."""
        if self.mode != "auto":
            return Mode(self.mode)
        if self.capacity is not None:
            return Mode.EXACT
        return Mode.FAST if device.type == "cuda" else Mode.EXACT

    def resolve_rounding(self, device: torch.device) -> int:
        """Bytes each storage is rounded up to: the option, else 512 on CUDA, else 1."""
        return self.rounding or (512 if device.type == "cuda" else 1)


def device_filter(device: torch.device | None) -> Callable[[torch.Tensor], bool] | None:
    """A predicate for the tensors on ``device``; ``None`` when every tensor qualifies."""
    if device is None:
        return None
    if device.type == "cuda":
        index = device.index
        if index is None:
            return lambda t: t.is_cuda
        return lambda t: t.is_cuda and t.get_device() == index
    if device.type == "meta":
        return lambda t: t.is_meta
    if device.type == "cpu":
        return lambda t: t.is_cpu
    kind = device.type
    return lambda t: t.device.type == kind


def default_name() -> str:
    """The session's default name: in a notebook kernel the notebook's (else ``notebook``, see
    :func:`profiler.notebook.notebook_name`), else the script's file name without ``.py`` (else
    ``python``)."""
    in_notebook = notebook_name()
    if in_notebook is not None:
        return in_notebook
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    base = os.path.basename(argv0)
    if base in ("", "-c", "-m"):
        return "python"
    if base.endswith(".py"):
        base = base[:-3]
    return base or "python"
