"""``track_memory(history=True)`` and ``mem.export_memory_viz(path)``, on the fake allocator."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from profiler import track_memory
from profiler.backends import cuda
from profiler.backends.fake import FakeAllocator, fake_snapshot
from profiler.errors import UsageError

MiB = 1024**2


def snapshot_with_history() -> dict:  # type: ignore[type-arg]
    snapshot = fake_snapshot([(0, 0, [(2 * MiB, "active_allocated"), (MiB, "inactive")])])
    alloc = {"action": "alloc", "addr": 0, "size": 2 * MiB, "stream": 0, "frames": []}
    snapshot["device_traces"] = [[alloc]]
    return snapshot


def train(model: torch.nn.Module, **options: object):  # type: ignore[no-untyped-def]
    with track_memory(model, stream=False, leaks=False, **options) as mem:
        model(torch.randn(3, 4)).sum().backward()
        recording = list(cuda._TORCH.history)  # type: ignore[attr-defined]
    return mem, recording


def test_the_history_is_recorded_bounded_and_exported_for_memory_viz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAllocator(snapshot=snapshot_with_history())
    monkeypatch.setattr(cuda, "_TORCH", fake)
    mem, recording = train(torch.nn.Linear(4, 4), history=5000)
    assert recording == [("all", 5000)]  # on inside the block, with its bound
    assert fake.history == [("all", 5000), (None, 5000)]  # off when it ends
    path = mem.export_memory_viz(tmp_path / "run.pickle")
    assert path.read_bytes()[:2] == b"\x80\x04"  # pickle protocol 4, as memory_viz reads
    assert pickle.loads(path.read_bytes()) == snapshot_with_history()


def test_true_keeps_the_last_100k_events_and_no_history_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAllocator(snapshot=snapshot_with_history())
    monkeypatch.setattr(cuda, "_TORCH", fake)
    model = torch.nn.Linear(4, 4)
    train(model, history=True)
    assert fake.history[0] == ("all", 100_000)
    plain, _ = train(model)
    with pytest.raises(UsageError, match="no allocator history was recorded"):
        plain.export_memory_viz(tmp_path / "none.pickle")
    assert not (tmp_path / "none.pickle").exists()
    with pytest.raises(UsageError, match="history must be"):
        track_memory(model, history=-3)


def test_a_build_without_history_warns_once_and_tracks_on(monkeypatch) -> None:
    monkeypatch.setattr(cuda, "_TORCH", FakeAllocator(has_history=False))
    model = torch.nn.Linear(4, 4)
    with pytest.warns(RuntimeWarning, match="no allocator history"):
        mem, _ = train(model, history=True)
    assert mem.breakdown().loc["weights", "current"] == (16 + 4) * 4
