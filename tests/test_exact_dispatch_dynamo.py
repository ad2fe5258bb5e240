"""Exact mode's dispatch mode and dynamo: gpumem's code is never traced, at no cost per op.

torch wraps a dispatch mode's ``__torch_dispatch__`` in ``torch._dynamo.disable`` (a wrapper
call per op); gpumem marks its mode's code for dynamo to skip, recursively, instead. An op that
breaks a compiled function's graph runs eagerly inside the frame dynamo is compiling, with the
ledger's dispatch on the stack: dynamo must convert no more frames there than with torch's
wrapper, and converts more without either (the control that shows this check can fail).
"""

from __future__ import annotations

import pytest
import torch

from profiler import track_memory
from profiler.tracking import exact


def _frames_converted_in_a_block() -> int:
    from torch._dynamo.utils import counters

    def program(x: torch.Tensor) -> torch.Tensor:
        y = torch.sin(x)
        n = int(y.sum().item() > 0)  # a graph break at an op: it runs eagerly in this frame
        return torch.cos(y * (2 + n))

    torch._dynamo.reset()
    compiled = torch.compile(program, backend="eager")
    x = torch.randn(4)
    expected = compiled(x)  # compiled before the block
    frames = counters["frames"]["total"]
    with track_memory(mode="exact", stream=False, leaks=False):
        for _ in range(3):
            assert torch.equal(compiled(x), expected)
    return int(counters["frames"]["total"] - frames)


def test_the_ledgers_dispatch_is_not_wrapped_and_dynamo_skips_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert exact._CAN_SKIP_CODE  # torch 2.13 has the per-code strategy
    raw = exact._LedgerMode.__dict__["__torch_dispatch__"]
    assert raw.__qualname__ == "_LedgerMode.__torch_dispatch__"  # no wrapper around it
    ours = _frames_converted_in_a_block()

    with monkeypatch.context() as patch:  # torch's own protection, for comparison
        patch.setattr(exact._LedgerMode, "__torch_dispatch__", torch._disable_dynamo(raw))
        torchs = _frames_converted_in_a_block()
    assert ours == torchs

    from torch._C._dynamo.eval_frame import (
        _FrameAction,
        _FrameExecStrategy,
        set_code_exec_strategy,
    )

    default = _FrameExecStrategy(_FrameAction.DEFAULT, _FrameAction.DEFAULT)
    set_code_exec_strategy(raw.__code__, default)  # the control: no protection at all
    try:
        unprotected = _frames_converted_in_a_block()
    finally:
        exact._skip_dynamo_in(exact._LedgerMode)
    assert unprotected > ours  # dynamo converted the dispatch frames the breaking op ran
