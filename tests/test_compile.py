"""torch.compile with inductor on CPU: compiled code stays compiled, and exact mode measures it.

A dispatch mode on the stack makes dynamo skip frames and mark their code as never to compile
again, unless the mode says ``ignore_compile_internals``. These tests run a real inductor
program (C++ kernels on CPU) before, inside and after blocks in every mode and during a leak hunt,
and check that the same compiled program runs throughout: the backend's compiled callable is
called each time, no new graph is made, and the program keeps saving what the compiled program
saves (the eager one saves six times more).
"""

from __future__ import annotations

import pytest
import torch

from profiler import track_memory
from profiler.records import EventKind

pytestmark = pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")

N = 512
F32 = 4
BLOCK = N * N * F32  # one (N, N) float32 tensor: 1 MiB


class Chain(torch.nn.Module):
    """A matmul (its output is saved for backward) and a chain of pointwise ops.

    Eager autograd saves the input of every ``sin`` (the first is the matmul's output); inductor
    fuses the chain and saves only the matmul's output (recomputing the rest in backward).
    """

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(N, N) / N**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w
        for _ in range(6):
            y = torch.sin(y) * 1.01
        return y.sum()


class Saved:
    """Bytes autograd saves in one forward, new storages only (independent of gpumem)."""

    def __init__(self, *known: torch.Tensor) -> None:
        self.known = {t.untyped_storage()._cdata for t in known}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage()._cdata
        if key not in self.known:
            self.storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    def bytes(self) -> int:
        return sum(self.storages.values())


@pytest.fixture(scope="module")
def compiled() -> tuple[Chain, torch.nn.Module, list[int]]:
    from torch._inductor.compile_fx import compile_fx

    calls: list[int] = []

    def counting_inductor(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        program = compile_fx(gm, example_inputs)  # inductor, as backend="inductor" runs it

        def run(*args: object) -> object:
            calls.append(1)
            return program(*args)

        return run

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Chain()
    return model, torch.compile(model, backend=counting_inductor), calls


def _saved_by(program: torch.nn.Module, model: Chain, x: torch.Tensor) -> int:
    saved = Saved(x, model.w)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        out = program(x)
    out.backward()
    model.w.grad = None
    return saved.bytes()


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_the_programs_differ_so_the_checks_below_can_fail(compiled) -> None:
    model, program, calls = compiled
    x = torch.randn(N, N)
    assert _saved_by(program, model, x) == BLOCK  # compiled: the matmul's output only
    assert _saved_by(model, model, x) == 6 * BLOCK  # eager: the input of every sin


@pytest.mark.parametrize("mode", ["exact", "fast", "fast-hunting"])
def test_compiled_code_stays_compiled_inside_and_after_the_block(compiled, mode: str) -> None:
    model, program, calls = compiled
    x = torch.randn(N, N)
    _saved_by(program, model, x)  # compiled once, outside
    graphs = _unique_graphs()
    before = len(calls)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with track_memory(model, optimizer, mode=mode.split("-")[0], stream=False, leaks=False) as mem:
        if mode == "fast-hunting":
            mem.hunt(3)  # the exact strategy swapped in for a few steps
            assert mem.hunting
        for _ in range(2):
            out = program(x)
            out.backward()
            optimizer.step()
            optimizer.zero_grad()
        inside = len(calls)
    after = _saved_by(program, model, x)
    assert inside - before == 2  # the compiled program ran at each step inside the block
    assert len(calls) - inside == 1  # and after it, with no torch._dynamo.reset()
    assert after == BLOCK  # saving what the compiled program saves, not the eager 6 blocks
    assert _unique_graphs() == graphs  # no recompilation, nothing reset


def test_exact_mode_measures_the_compiled_programs_activations(compiled) -> None:
    model, program, calls = compiled
    x = torch.randn(N, N)
    expected = _saved_by(program, model, x)
    with track_memory(model, mode="exact", stream=False, leaks=False) as mem:
        out = program(x)
        out.backward()
    assert mem.breakdown().loc["activations", "peak"] == expected == BLOCK
    assert mem.breakdown().loc["gradients", "peak"] == BLOCK
    # the result says how compiled regions were seen
    notes = [e for e in mem.events if e.kind is EventKind.WARNING and e.data.get("compiled")]
    assert len(notes) == 1 and "scratch" in notes[0].message
    # the eager program, same block: six blocks saved
    with track_memory(model, mode="exact", stream=False, leaks=False) as eager:
        model(x).backward()
    assert eager.breakdown().loc["activations", "peak"] == 6 * BLOCK
    assert not [e for e in eager.events if e.data.get("compiled")]
