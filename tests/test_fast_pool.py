"""Fast mode's lean steps: gradients as one pool, the backward's end at the next boundary, and
records the garbage collector untracks, all of them.

The gradient bytes are derived from the parameters' shapes (fp32: 4 bytes an element); the pool
must equal what charging each gradient storage gives, and follow ``zero_grad()``.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from profiler import track_memory
from profiler.ledger import GRADIENTS
from profiler.records import Phase
from profiler.tracking import engine as engine_module
from profiler.tracking.gradients import GradientPool

F32 = 4


def _mlp() -> tuple[nn.Module, torch.optim.Optimizer, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    params = sum(p.numel() for p in model.parameters()) * F32
    return model, torch.optim.SGD(model.parameters(), lr=0.01), params


def _gradients_now(mem) -> int:  # type: ignore[no-untyped-def]
    return int(mem._engine.state.ledger.current[GRADIENTS])


@pytest.fixture
def full_claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts full claims (every gradient charged storage by storage); steps 0, 1000... are the
    exact ledger's."""
    monkeypatch.setattr(engine_module, "MODULE_SAMPLE_EVERY", 1000)
    calls: list[int] = []
    original = GradientPool.full_claim

    def counting(self: GradientPool, *args: object) -> None:
        calls.append(1)
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(GradientPool, "full_claim", counting)
    return calls


@pytest.mark.parametrize("set_to_none", [True, False])
def test_the_pool_is_the_gradients_and_follows_zero_grad(
    full_claims: list[int], set_to_none: bool
) -> None:
    model, optimizer, params = _mlp()
    x = torch.randn(8, 16)
    seen = []
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(6):
            model(x).sum().backward()
            optimizer.step()
            seen.append(_gradients_now(mem))  # after the step: the gradients are there
            optimizer.zero_grad(set_to_none=set_to_none)
            seen.append(_gradients_now(mem))  # freed (set_to_none) or zeroed in place
        engine = mem._engine
        assert engine.strategy is engine.fast and engine.known.lean_grads
    after_zero = 0 if set_to_none else params
    assert seen == [params, after_zero] * 6
    assert full_claims == [1]  # step 0 only: the five lean steps charged the pool
    assert mem.breakdown().loc["gradients", "peak"] == params


def test_micro_batches_charge_the_pool_once(full_claims: list[int]) -> None:
    model, optimizer, params = _mlp()
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(4):
            for _ in range(3):  # gradient accumulation: three backwards into the same .grad
                model(torch.randn(8, 16)).sum().backward()
            optimizer.step()
            assert _gradients_now(mem) == params
            optimizer.zero_grad()
            assert _gradients_now(mem) == 0
    assert full_claims == [1]


def test_a_lean_step_takes_the_backward_end_at_the_next_boundary(full_claims: list[int]) -> None:
    model, optimizer, params = _mlp()
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(3):
            for _ in range(2):
                model(torch.randn(8, 16)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        assert mem._engine.phases.defer_end  # no callback queued on autograd's engine
        before = len(mem.samples)
        model(torch.randn(8, 16)).sum().backward()
        assert mem._engine.state.phase is Phase.BACKWARD  # nothing has ended it yet
        mem.step()  # a boundary: the backward's end, then the step's
    lean = [str(s.phase) for s in mem.samples[before:]]
    assert lean[-3:] == ["backward", "idle", "idle"]  # backward end, step end, block end
    last_step = [s for s in mem.samples if s.step == 2]
    # each micro-batch: forward start and end, then its backward's end (taken when the next
    # forward starts, or at the optimizer step), then the step's end
    assert [str(s.phase) for s in last_step] == ["forward", "forward", "backward"] * 2 + [
        "optimizer"
    ]
    backward_ends = [s for s in last_step if s.phase is Phase.BACKWARD]
    assert all(s.bytes[GRADIENTS] == params for s in backward_ends)


def test_every_record_is_untracked_by_the_collector() -> None:
    model, optimizer, _ = _mlp()
    x = torch.randn(2, 16)
    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(100, 2, 2)
    try:
        with track_memory(model, optimizer, mode="fast", stream=False) as mem:
            for _ in range(2_000):
                model(x).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            samples = list(mem._engine.history.samples.items)
            steps = list(mem._engine.history.steps.items)
    finally:
        gc.set_threshold(*threshold)
    # the newest records may not have met a collection yet; every older one has, and a record
    # whose split was examined after it (a quarter of them before the splits were held) stays
    # tracked into the oldest generation
    old_samples, old_steps = samples[: -len(samples) // 10], steps[: -len(steps) // 10]
    assert len(old_samples) > 7_000 and len(old_steps) > 1_700
    assert sum(gc.is_tracked(s) for s in old_samples) == 0
    assert sum(gc.is_tracked(s) for s in old_steps) == 0


def _calls_per_lean_step(layers: int) -> list[int]:
    """Python calls into gpumem's own code in each of five lean fast-mode steps."""
    import os
    import sys

    import profiler

    root = os.path.dirname(profiler.__file__)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4)
    counts = []
    count = [0]

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_filename.startswith(root):
            count[0] += 1

    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False):
        for step in range(8):
            count[0] = 0
            sys.setprofile(profile if step >= 3 else None)
            try:
                model(x).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            finally:
                sys.setprofile(None)
            if step >= 3:
                counts.append(count[0])
    return counts


def test_a_lean_step_does_the_same_work_whatever_the_model_size() -> None:
    # 4 layers (8 parameters) and 400 layers (800 parameters): fast mode's lean steps make as
    # many calls into gpumem (nothing walks the modules or the parameters: a walk would add
    # hundreds); a few calls depend on the counter's readings (a sample that sets a new peak
    # records it), so the counts may differ by those
    small, large = _calls_per_lean_step(4), _calls_per_lean_step(400)
    assert min(small) > 50
    assert abs(max(large) - max(small)) <= 4 and abs(min(large) - min(small)) <= 4


def test_records_with_device_readings_are_untracked_too(monkeypatch) -> None:
    """On CUDA every sample carries the allocator's (and NVML's) reading: the kept tuple holds
    their fields, not the reading objects, so it is untracked too; the records read back
    equal the readings taken."""
    from profiler.records import AllocatorReading, NvmlReading
    from profiler.tracking.history import History

    counter = iter(range(10**9))
    nvml = NvmlReading(process_used=7, device_used=8, device_total=9, device_index=0)

    def allocator_reading(self: History) -> AllocatorReading:
        return AllocatorReading(allocated=next(counter), reserved=1 << 20, num_ooms=0)

    monkeypatch.setattr(History, "allocator_reading", allocator_reading)
    monkeypatch.setattr(History, "nvml_reading", lambda self: nvml)
    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4)
    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(100, 2, 2)
    try:
        with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
            mem._state.on_cuda = True  # the readings path, with the readings scripted above
            for _ in range(1_000):
                model(x).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            samples = list(mem._engine.history.samples.items)
            records = mem._engine.history.sample_records()
            mem._state.on_cuda = False
    finally:
        gc.set_threshold(*threshold)
    old = samples[: -len(samples) // 10]
    assert len(old) > 3_000
    assert sum(gc.is_tracked(s) for s in old) == 0
    taken = [r for r in records if r.allocator is not None]
    assert len(taken) > 3_000
    assert [r.allocator.allocated for r in taken] == sorted(r.allocator.allocated for r in taken)
    assert all(r.allocator.reserved == 1 << 20 and r.allocator.active is None for r in taken)
    assert all(r.nvml == nvml for r in taken)
