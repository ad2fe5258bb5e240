"""The tracked program under interrupts and threads: nothing leaks, each tracker sees its own."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

from profiler import Category, track_memory
from profiler.tracker import _Predictions
from profiler.tracking.capture import FailureCapture
from profiler.tracking.engine import Engine

F32 = 4


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gpumem-stream" and t.is_alive()]


def _global_hooks() -> tuple[int, int]:
    return len(module_mod._global_forward_pre_hooks), len(module_mod._global_forward_hooks)


def _summary(home: Path) -> dict:
    (session,) = (home / "sessions").iterdir()
    return json.loads((session / "summary.json").read_text())


def _run(home: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    with track_memory(model, optimizer, home=home, name="interrupt"):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()


def _own_hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Hooks on the model's modules and on the optimizer (gpumem's input recorder adds some)."""
    on_modules = sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
    return on_modules + len(optimizer._optimizer_step_pre_hooks)


def _interrupt(*_: object, **__: object) -> None:
    raise KeyboardInterrupt


def _interrupt_at_exit(self: _Predictions, basis: str) -> None:
    """Ctrl-C while the exit's predictions are made (entry and first step go through)."""
    if basis == "end":
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (Engine, "start_recording"),  # inside __enter__, the stream already running
        (_Predictions, "predict"),  # inside __exit__, after the engine stopped
        (FailureCapture, "detach"),  # inside the engine's own exit, the first uninstall step
    ],
)
def test_an_interrupt_inside_enter_or_exit_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    before = _global_hooks()
    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setattr(owner, name, _interrupt_at_exit if owner is _Predictions else _interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, model, optimizer)
    assert _stream_threads() == []  # the flusher stopped
    assert _global_hooks() == before  # every global hook removed
    assert _own_hooks(model, optimizer) == 0  # and every hook on the model and optimizer
    summary = _summary(tmp_path)
    assert summary["status"] == "interrupted"


def test_ctrl_c_in_the_block_says_interrupted(tmp_path: Path) -> None:
    model = nn.Linear(4, 4)
    with pytest.raises(KeyboardInterrupt), track_memory(model, home=tmp_path, name="ctrl-c"):
        model(torch.randn(2, 4))
        raise KeyboardInterrupt
    assert _summary(tmp_path)["status"] == "interrupted"
    assert _stream_threads() == []


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("give_optimizer", [True, False])
def test_two_trackers_in_two_threads_each_see_their_own(give_optimizer: bool) -> None:
    """Two threads train two models of different sizes at once, interleaving step by step."""
    sizes = {"a": (8, 16), "b": (32, 64)}
    steps = {"a": 3, "b": 5}
    barrier = threading.Barrier(2)
    results: dict[str, tuple[int, int, int, int]] = {}
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            torch.manual_seed(0)
            inp, hidden = sizes[key]
            model = nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, 2))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randn(4, inp)
            given = (optimizer,) if give_optimizer else ()
            with track_memory(model, *given, stream=False, mode="exact") as mem:
                for i in range(max(steps.values())):
                    barrier.wait(timeout=30)
                    if i < steps[key]:
                        model(x).sum().backward()
                        optimizer.step()
                        optimizer.zero_grad()
            optimizer_bytes = int(mem.breakdown().loc[str(Category.OPTIMIZER)]["current"])
            n = len(list(model.parameters()))
            results[key] = (len(mem.steps), optimizer_bytes, _param_bytes(model), n)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(key,)) for key in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for key, (n_steps, optimizer_bytes, params, n) in results.items():
        assert n_steps == steps[key], key
        # AdamW: exp_avg and exp_avg_sq like each parameter, plus a float32 step per parameter
        assert optimizer_bytes == 2 * params + n * F32, key
