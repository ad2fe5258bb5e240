"""The leak detector's tests' run: the shared :class:`~fakes.ScriptedTracker`, set up as they need."""

from __future__ import annotations

import dataclasses

from fakes import ScriptedTracker, session_info

from profiler.run import TrackedRun

__all__ = ["FakeTracker"]


class FakeTracker(ScriptedTracker):
    """A run whose live storages, facts and capacity a test sets; it records hunts and events.

    Args:
        mode: the run's mode (``"fast"`` or ``"exact"``): a hunt in fast mode says so.
        capacity: a simulated device capacity (also :attr:`device_total`).
        kv_cache_reused: whether a prompt was fed to a cache that already held positions
            (``False``: KV-cache growth is left out of the growth test).
    """

    def __init__(
        self, mode: str = "fast", capacity: int | None = None, *, kv_cache_reused: bool = True
    ) -> None:
        info = session_info(
            name="fake",
            mode=mode,
            capacity=capacity,
            kv_cache_reused=kv_cache_reused,
            training=True,
            pid=0,
        )
        super().__init__(info=info, device_total=capacity)

    @property
    def hunt_calls(self) -> list[int]:
        """The steps of each hunt the detector asked for."""
        return self.hunts

    @property
    def kv_cache_reused(self) -> bool:
        """Whether a prompt was fed to a cache that already held positions."""
        return self.info.kv_cache_reused

    @kv_cache_reused.setter
    def kv_cache_reused(self, value: bool) -> None:
        self.info = dataclasses.replace(self.info, kv_cache_reused=value)


# FakeTracker must be a TrackedRun: mypy checks it member by member here
_: TrackedRun = FakeTracker()
