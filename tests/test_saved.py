"""mem.metrics(), mem.to_json()/save() and profiler.load(): the same views back, bad files refused."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import profiler
from profiler import SimulatedOutOfMemoryError, track_memory
from profiler.errors import StreamError
from profiler.records import CATEGORIES

F32 = 4
#: Linear(16, 32) + Linear(32, 8): weights and biases, float32.
PARAM_BYTES = (16 * 32 + 32 + 32 * 8 + 8) * F32


def train(steps: int = 3, **options: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 16)
    with track_memory(model, optimizer, stream=False, **options) as mem:
        for _ in range(steps):
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    return mem


def test_metrics_are_flat_int_bytes_named_for_loggers() -> None:
    mem = train()
    metrics = mem.metrics()
    assert metrics["gpumem/weights"] == PARAM_BYTES
    assert metrics["gpumem/gradients"] == 0  # zero_grad(set_to_none) freed them
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a 4-byte step tensor each (4 params)
    assert metrics["gpumem/optimizer"] == 2 * PARAM_BYTES + 4 * 4
    assert metrics["gpumem/peak_gradients"] == PARAM_BYTES
    assert metrics["gpumem/peak"] == mem.peak_bytes
    assert metrics["gpumem/current"] == sum(metrics[f"gpumem/{c}"] for c in CATEGORIES)
    assert metrics["gpumem/predicted_weights"] == PARAM_BYTES
    assert (metrics["gpumem/step"], metrics["gpumem/leaks"]) == (3, 0)
    assert all(type(v) is int for v in metrics.values())
    assert all(name.startswith("gpumem/") for name in metrics)


def test_a_saved_run_gives_the_same_views(tmp_path: Path) -> None:
    mem = train()
    path = mem.save(tmp_path / "run.json")
    back = profiler.load(path)
    assert back.breakdown().equals(mem.breakdown())
    assert back.timeline().equals(mem.timeline())
    assert back.modules().equals(mem.modules())
    assert back.metrics() == mem.metrics()
    assert back.summary() == mem.summary()
    assert str(back) == str(mem)
    assert back.steps == mem.steps and list(back.samples) == mem.samples
    assert json.loads(mem.to_json()) == json.loads(path.read_text())


def test_the_failure_comes_back_with_its_sample(tmp_path: Path) -> None:
    mem = None
    try:
        with pytest.warns(UserWarning):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            with track_memory(
                model, optimizer, capacity=PARAM_BYTES * 3, home=tmp_path, stream=False
            ) as mem:
                for _ in range(3):
                    model(torch.randn(4, 16)).sum().backward()
                    optimizer.step()
    except SimulatedOutOfMemoryError:
        pass
    assert mem is not None and mem.failure is not None
    back = profiler.load(mem.save(tmp_path / "oom.json"))
    assert back.failure == mem.failure
    assert back.failure is not None and back.failure.sample in back.samples


def test_bad_files_are_one_line_stream_errors(tmp_path: Path) -> None:
    cases = {
        "not json": b"{",
        "another document": json.dumps({"schema": "other"}).encode(),
        "a newer schema": json.dumps({"schema": "gpumem.run", "v": 2}).encode(),
        "missing parts": json.dumps({"schema": "gpumem.run", "v": 1}).encode(),
        "infinity": b'{"schema": "gpumem.run", "v": 1, "device_total": Infinity}',
    }
    for name, data in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        with pytest.raises(StreamError) as info:
            profiler.load(path)
        assert "\n" not in info.value.message, name
    with pytest.raises(StreamError, match="unsupported saved-run schema v2"):
        profiler.load(tmp_path / "a_newer_schema")
    with pytest.raises(StreamError, match="not a regular file"):
        profiler.load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StreamError, match="not a regular file"):
        profiler.load(fifo)  # never blocks on a FIFO
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "not_json")
    with pytest.raises(StreamError, match="cannot open"):
        profiler.load(link)
    with pytest.raises(StreamError, match="cannot open"):
        profiler.load(tmp_path / "missing.json")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "schema",
                "v",
                "categories",
                "info",
                "samples",
                "steps",
                "peaks",
                "predicted",
                "device_total",
                "modules",
                "failure",
                "leaks",
            ]
        ),
        JSON,
    )
)
def test_any_json_is_a_run_or_a_stream_error(
    tmp_path_factory: pytest.TempPathFactory, document: dict
) -> None:  # type: ignore[type-arg]
    document.setdefault("schema", "gpumem.run")
    document.setdefault("v", 1)
    path = tmp_path_factory.mktemp("hyp") / "run.json"
    path.write_text(json.dumps(document))
    with contextlib.suppress(StreamError):  # a run, or our error: nothing else, no hang
        profiler.load(path)
