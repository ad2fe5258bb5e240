"""The exception tree of gpumem.

Every error the library raises on purpose is a :class:`GpumemError`; the CLI turns each into one
line on stderr and an exit code (``exit_code``), never a traceback::

    GpumemError                    (exit 1)
    ├── UsageError                 (exit 2) bad input: unknown preset, malformed config, bad sizes
    │   ├── ConfigError            a config that is malformed or incomplete
    │   └── UnknownNameError       an unknown preset / GPU / format, with the closest names
    ├── BackendUnavailable         (exit 1) a device source is missing (no NVML, no CUDA, old torch)
    ├── DryRunError                (exit 1) a model that cannot run on fake tensors, and why
    ├── StreamError                (exit 1) a session stream or report that cannot be read
    └── TrackingError              (exit 1) the tracker was used wrongly (nested on one model, ...)

    torch.OutOfMemoryError
    └── SimulatedOutOfMemoryError  a simulated device ran out (``track_memory(capacity=...)``)

A message says what failed; where the user can do something about it, a second line starting
with ``HINT:`` says what.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DryRunError",
    "GpumemError",
    "SimulatedOutOfMemoryError",  # noqa: F822 (made on first use, see __getattr__)
    "StreamError",
    "TrackingError",
    "UnknownNameError",
    "UsageError",
]


class GpumemError(Exception):
    """Base of every error gpumem raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\nHINT: {hint}")

    def one_line(self) -> str:
        """The message and hint on one line, for the CLI."""
        return self.message if self.hint is None else f"{self.message} (hint: {self.hint})"


class UsageError(GpumemError):
    """Bad input from the user: the CLI exits with code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A model config that is malformed or lacks a field the formulas need."""


class UnknownNameError(UsageError):
    """An unknown preset, GPU or format name; ``suggestions`` holds the closest known names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        import difflib

        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        if not self.suggestions:
            lowered = name.lower()
            self.suggestions = [k for k in known if lowered in k.lower()][:3]
        hint = (
            f"did you mean {', '.join(self.suggestions)}?"
            if self.suggestions
            else f"known: {', '.join(sorted(known)[:12])}"
        )
        super().__init__(f"unknown {kind} {name!r}", hint=hint)


class BackendUnavailable(GpumemError):
    """A device source (NVML, CUDA, an allocator hook) is not available here."""


def require(module: str, *, by: str, package: str) -> Any:
    """``import module`` for an optional integration ``by``, or :class:`BackendUnavailable` with
    the ``pip install`` hint: a missing framework is the user's to install, not our bug."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise BackendUnavailable(
            f"{by} needs {package} ({error})", hint=f"pip install {package}"
        ) from None


class DryRunError(GpumemError):
    """A model or step that cannot run on fake tensors."""


class StreamError(GpumemError):
    """A session stream, summary or report that is missing, torn or corrupt."""


class TrackingError(GpumemError):
    """The tracker was used in a way it cannot measure."""


def _simulated_oom_class() -> type:
    import torch

    class SimulatedOutOfMemoryError(torch.OutOfMemoryError):
        """A simulated device ran out of memory: the tracked total would exceed its capacity.

        A subclass of ``torch.OutOfMemoryError`` so that existing OOM handlers treat it alike.
        """

        def __init__(self, message: str, *, requested: int, capacity: int, total: int) -> None:
            super().__init__(message)
            self.requested = requested
            self.capacity = capacity
            self.total = total

    SimulatedOutOfMemoryError.__module__ = __name__
    return SimulatedOutOfMemoryError


def __getattr__(name: str) -> Any:
    # SimulatedOutOfMemoryError subclasses torch's error: made on first use, so that importing
    # the errors (every CLI command does) does not import torch.
    if name == "SimulatedOutOfMemoryError":
        cls = _simulated_oom_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
