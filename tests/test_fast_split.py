"""Fast mode's split, on CPU, exact to what its counter saw.

Fast mode is the CUDA default, but its attribution logic (known tensors exactly, the counter's
residual by phase) runs the same with any counter. Here the heap counter is replaced by a
scripted one that sees the known tensors plus bytes the test allocates on purpose at known
moments: activations in a forward, scratch in a backward. Every figure fast mode reports must be
exactly what that counter implies.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from profiler import track_memory
from profiler.records import CATEGORIES, Category, Phase
from profiler.tracking import engine as engine_module
from profiler.tracking import fast as fast_module

BASE = 3 * 1024 * 1024  # what the process held before the block (the counter's "other")
ACT = 1 << 20  # bytes the forward keeps for backward
TMP = 4096  # scratch the backward leaves until the optimizer step
INDEX = {c: i for i, c in enumerate(CATEGORIES)}


class ScriptedCounter:
    """A heap counter: the known tensors' bytes plus a residual the test scripts."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.residual = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        known = sum(p.untyped_storage().nbytes() for p in self.model.parameters())
        known += sum(
            p.grad.untyped_storage().nbytes() for p in self.model.parameters() if p.grad is not None
        )
        return BASE + known + self.residual


class _Keep(torch.autograd.Function):
    counter: ScriptedCounter

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        _Keep.counter.residual += ACT
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        _Keep.counter.residual += TMP - ACT
        return grad


class Keep(nn.Module):
    """Keeps ACT bytes from its forward until its backward (as the scripted counter sees it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Keep.apply(x)


class ScratchSGD(torch.optim.SGD):
    """SGD whose step releases the backward's scratch."""

    counter: ScriptedCounter

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        super().step(closure)
        self.counter.residual -= TMP


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Module, ScriptedCounter]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Keep())
    counter = ScriptedCounter(model)
    _Keep.counter = counter
    ScratchSGD.counter = counter
    monkeypatch.setattr(fast_module, "heap_bytes_reader", lambda: counter)
    # per-module reads are chosen by timing the counter; make the choice deterministic here
    monkeypatch.setattr(fast_module, "MODULE_READ_BUDGET", 1.0)
    # the counter's split itself: fast mode's own module hooks on every step (no sampled steps
    # on which the exact ledger would charge real tensors the scripted counter does not hold)
    monkeypatch.setattr(engine_module, "MODULE_SAMPLE_EVERY", 0)
    return model, counter


def forward_ends(samples: list) -> list:  # type: ignore[type-arg]
    """The sample at each forward's end: the one just before its backward's end."""
    return [samples[i - 1] for i, s in enumerate(samples) if s.phase is Phase.BACKWARD]


def weight_bytes(model: nn.Module) -> int:
    return sum(p.untyped_storage().nbytes() for p in model.parameters())


def run(model: nn.Module, steps: int, **options: object):  # type: ignore[no-untyped-def]
    optimizer = ScratchSGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False, **options) as mem:
        for _ in range(steps):
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    return mem


def test_the_residual_is_activations_in_forward_and_temporaries_after_backward(scripted) -> None:
    model, counter = scripted
    mem = run(model, steps=3)
    assert counter.reads > 0 and mem.mode == "fast"
    weights, grads = weight_bytes(model), weight_bytes(model)  # one gradient per parameter
    samples = mem.samples
    ends = forward_ends(samples)
    assert all(s.phase is Phase.FORWARD for s in ends)
    backward_ends = [s for s in samples if s.phase is Phase.BACKWARD]
    step_ends = [s for s in samples if s.phase is Phase.OPTIMIZER]
    assert len(ends) == len(backward_ends) == len(step_ends) == 3
    for sample in ends:  # the forward kept ACT bytes: activations, not temporaries
        by = sample.by_category()
        assert (by[Category.ACTIVATIONS], by[Category.TEMPORARIES]) == (ACT, 0)
        assert (by[Category.WEIGHTS], by[Category.GRADIENTS], by[Category.OTHER]) == (
            weights,
            0,
            BASE,
        )
    for sample in backward_ends:  # activations freed, gradients known, scratch left over
        by = sample.by_category()
        assert (by[Category.ACTIVATIONS], by[Category.TEMPORARIES]) == (0, TMP)
        assert by[Category.GRADIENTS] == grads
        assert sample.total == BASE + weights + grads + TMP
    for sample in step_ends:  # the step released the scratch; zero_grad comes after the sample
        by = sample.by_category()
        assert (by[Category.ACTIVATIONS], by[Category.TEMPORARIES]) == (0, 0)
        assert sample.total == BASE + weights + grads


def test_peaks_and_steps_follow_the_counter(scripted) -> None:
    model, _ = scripted
    mem = run(model, steps=2)
    weights = weight_bytes(model)
    peak_split = (weights, 0, 0, 0, ACT, 0, 0, BASE)  # the forward's end is the highest point
    assert mem.peak_bytes == BASE + weights + ACT
    assert tuple(mem.breakdown()["at_peak"]) == peak_split
    assert mem.breakdown().loc["temporaries", "peak"] == TMP
    assert mem.breakdown().loc["gradients", "peak"] == weights
    assert [record.peak for record in mem.steps] == [BASE + weights + ACT] * 2
    assert all(record.peak_bytes == peak_split for record in mem.steps)


def test_per_module_figures_are_the_counter_growth_inside_each_module(scripted) -> None:
    model, _ = scripted
    frame = run(model, steps=2).modules()
    # fast mode sees totals only: a module's own and inclusive figures are both its growth
    assert frame.loc["1", "activations"] == ACT  # Keep
    assert frame.loc["1", "forward_peak"] == ACT
    assert frame.loc["0", "activations"] == 0  # Linear: the counter did not move
    assert frame.loc["Sequential", "activations_inclusive"] == ACT
    assert list(frame["calls"]) == [2, 2, 2]
    assert frame["backward_peak"].isna().all()  # per-module backward needs exact mode


def test_a_slow_counter_reports_calls_only_and_says_so(scripted, monkeypatch) -> None:
    model, _ = scripted
    monkeypatch.setattr(fast_module, "MODULE_READ_BUDGET", 0.0)  # every counter is too slow
    mem = run(model, steps=1)
    frame = mem.modules()
    assert frame["activations"].isna().all() and frame["forward_peak"].isna().all()
    assert list(frame["calls"]) == [1, 1, 1]
    # the phase samples still split the residual exactly
    forward_end = forward_ends(mem.samples)[0]
    assert forward_end.bytes[INDEX[Category.ACTIVATIONS]] == ACT


def test_a_leak_hunt_swaps_in_the_exact_ledger_and_back(scripted) -> None:
    model, counter = scripted
    optimizer = ScratchSGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        engine = mem._engine
        assert engine.strategy is engine.fast
        mem.hunt(2)
        assert engine.strategy is engine.exact and engine.exact.on and mem.hunting
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert engine.strategy is engine.exact  # one of the two steps left
        reads = counter.reads
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert engine.strategy is engine.fast and not engine.exact.on and not mem.hunting
        assert counter.reads == reads  # the exact ledger measured the hunt's steps
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert counter.reads > reads  # fast again after the hunt
    forward_end = forward_ends(mem.samples)[-1]
    # the total is the counter's again; the storages the hunt's ledger saw that existed before
    # (the input, 128 B) stay charged as other, and the residual shrinks by as much
    assert forward_end.total == BASE + weight_bytes(model) + ACT
    by = forward_end.by_category()
    assert (by[Category.ACTIVATIONS], by[Category.OTHER]) == (ACT - x.nbytes, BASE + x.nbytes)


def test_a_subclass_step_calling_super_ends_one_step(scripted) -> None:
    model, _ = scripted
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch patches SGD.step too
    mem = run(model, steps=3)  # ScratchSGD.step -> SGD.step: the hooks fire nested
    assert [record.step for record in mem.steps] == [0, 1, 2]
    assert sum(s.phase is Phase.OPTIMIZER for s in mem.samples) == 3


def test_a_step_that_raised_does_not_hide_the_next_ones(scripted) -> None:
    model, _ = scripted
    optimizer = ScratchSGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        model(x).sum().backward()
        with pytest.raises(ZeroDivisionError):
            optimizer.step(lambda: 1 / 0)  # the closure raises inside the step
        for _ in range(2):
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
    assert [record.step for record in mem.steps] == [0, 1]
