"""The measurement engine on CPU: exact bytes from shapes and dtypes."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
import weakref

import pytest
import torch
from torch import nn

from profiler import Category, Phase, UsageError, track_memory
from profiler.ledger import Ledger
from profiler.tracking.engine import MODULE_SAMPLE_EVERY

F32 = 4
BF16 = 2


def unique_param_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.untyped_storage()._cdata] = p.untyped_storage().nbytes()
    return sum(seen.values())


def mlp(inp: int = 16, hidden: int = 32, out: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def row(mem, category: Category):  # type: ignore[no-untyped-def]
    return mem.breakdown().loc[str(category)]


# ---------------------------------------------------------------------------- categories


def test_mlp_adamw_weights_gradients_optimizer_exact() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 16)
    params = unique_param_bytes(model)
    n_params = len(list(model.parameters()))
    with track_memory(model, optimizer, stream=False) as mem:
        train(model, optimizer, x, steps=3)
    assert row(mem, Category.WEIGHTS)["current"] == params
    assert row(mem, Category.GRADIENTS)["peak"] == params
    assert row(mem, Category.GRADIENTS)["current"] == 0  # zero_grad(set_to_none=True)
    # AdamW: exp_avg and exp_avg_sq like each parameter, plus a float32 scalar step per parameter
    assert row(mem, Category.OPTIMIZER)["current"] == 2 * params + n_params * F32
    assert mem.mode == "exact"
    assert len(mem.steps) == 3


def test_activations_are_the_saved_tensors_of_a_known_mlp() -> None:
    batch, inp, hidden, out = 4, 16, 32, 8
    model = mlp(inp, hidden, out)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(batch, inp)
    with track_memory(model, optimizer, stream=False) as mem:
        train(model, optimizer, x, steps=2)
    # GELU saves its input (the first Linear's output), the second Linear saves GELU's output;
    # the first Linear saves x, which existed before the block (other), and the weights.
    expected = 2 * batch * hidden * F32
    assert row(mem, Category.ACTIVATIONS)["peak"] == expected
    assert row(mem, Category.ACTIVATIONS)["current"] == 0
    modules = mem.modules()
    assert modules.loc["1", "activations"] == batch * hidden * F32  # GELU
    assert modules.loc["2", "activations"] == batch * hidden * F32  # second Linear
    assert modules.loc["0", "activations"] == 0
    assert modules.loc["Sequential", "activations_inclusive"] == expected
    assert modules.loc["1", "calls"] == 2
    assert row(mem, Category.OTHER)["current"] == batch * inp * F32  # the input


def test_at_peak_sums_to_peak_and_columns_are_int_bytes() -> None:
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters())
    with track_memory(model, optimizer, stream=False) as mem:
        train(model, optimizer, torch.randn(4, 16), steps=2)
    frame = mem.breakdown()
    assert frame.index.name == "category"
    assert list(frame.index) == [str(c) for c in Category]
    assert int(frame["at_peak"].sum()) == mem.peak_bytes
    for column in ("current", "peak", "at_peak"):
        assert str(frame[column].dtype) == "int64"
    assert (frame["peak"] >= frame["current"]).all()
    assert mem.peak_bytes >= int(frame["current"].sum())


def test_tied_weights_and_views_count_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids))

    model = Tied()
    with track_memory(model, stream=False) as mem, torch.no_grad():
        model(torch.randint(0, 100, (2, 5)))
    assert row(mem, Category.WEIGHTS)["current"] == 100 * 16 * F32

    with track_memory(stream=False) as mem2:
        base = torch.empty(1000)
        views = [base[10:], base.view(10, 100), base.t() if base.dim() == 2 else base[::2]]
        total = base.sum()
    assert row(mem2, Category.TEMPORARIES)["current"] == 1000 * F32 + total.numel() * F32
    del views


def test_batchnorm_buffers() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16))
    with track_memory(model, stream=False) as mem:
        model(torch.randn(4, 8)).sum().backward()
    # running_mean and running_var (float32) and num_batches_tracked (int64 scalar)
    assert row(mem, Category.BUFFERS)["current"] == 16 * F32 * 2 + 8
    assert row(mem, Category.WEIGHTS)["current"] == (8 * 16 + 16 + 16 + 16) * F32


def test_bf16_autocast_casts_are_weights_and_activations_are_bf16() -> None:
    batch, inp, hidden, out = 4, 16, 32, 8
    model = mlp(inp, hidden, out)
    params = unique_param_bytes(model)
    x = torch.randn(batch, inp)
    with track_memory(model, stream=False) as mem:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        y.float().sum().backward()
    # every parameter gets a bf16 copy (cached by autocast for the forward): half the fp32 bytes
    assert row(mem, Category.WEIGHTS)["peak"] == params + params // 2
    assert row(mem, Category.WEIGHTS)["current"] == params
    # saved: the bf16 copy of x, the first Linear's bf16 output (for GELU), GELU's bf16 output
    expected = (batch * inp + 2 * batch * hidden) * BF16
    assert row(mem, Category.ACTIVATIONS)["peak"] == expected
    assert mem.autocast_dtype == torch.bfloat16


def test_rounding_charges_as_the_caching_allocator() -> None:
    with track_memory(stream=False, rounding=512) as mem:
        a = torch.empty(10)  # 40 B -> 512 B
        b = torch.empty(129, dtype=torch.uint8)  # 129 B -> 512 B
        c = torch.empty(600, dtype=torch.uint8)  # 600 B -> 1024 B
        d = torch.empty(0)  # nothing
    assert row(mem, Category.TEMPORARIES)["current"] == 512 + 512 + 1024
    del a, b, c, d


# ---------------------------------------------------------------------------- steps and phases


def test_phases_and_steps_without_reset() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with track_memory(model, optimizer, stream=False) as mem:
        train(model, optimizer, torch.randn(4, 16), steps=5)
    assert [s.step for s in mem.steps] == [0, 1, 2, 3, 4]
    phases = {s.phase for s in mem.samples}
    assert {Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER} <= phases
    # SGD with momentum: one buffer per parameter
    assert row(mem, Category.OPTIMIZER)["current"] == unique_param_bytes(model)
    timeline = mem.timeline()
    assert list(timeline.columns) == (
        ["time", "step", "phase", "module"] + [str(c) for c in Category] + ["total"]
    )
    assert (timeline[[str(c) for c in Category]].sum(axis=1) == timeline["total"]).all()
    # every step's peak is the same in steady state, and equal to the run's peak after step 0
    assert len({s.peak for s in mem.steps[1:]}) == 1


def test_inference_steps_with_mem_step() -> None:
    model = mlp()
    with track_memory(model, stream=False) as mem, torch.no_grad():
        for _ in range(4):
            model(torch.randn(2, 16))
            mem.step()
    assert len(mem.steps) == 4
    assert row(mem, Category.ACTIVATIONS)["peak"] == 0  # no_grad saves nothing


def test_two_blocks_in_a_row_give_the_same_numbers() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(4, 16)
    train(model, optimizer, x, steps=1)  # optimizer state exists before both blocks
    results = []
    for _ in range(2):
        with track_memory(model, optimizer, stream=False) as mem:
            train(model, optimizer, x, steps=2)
        frame = mem.breakdown()
        results.append((mem.peak_bytes, frame["peak"].tolist(), frame["current"].tolist()))
    assert results[0] == results[1]


def test_no_model_tracks_everything_created_in_the_block() -> None:
    with track_memory(stream=False) as mem:
        a = torch.zeros(256)
        b = torch.ones(128, dtype=torch.float64)
        c = a * 2
        del c
    assert row(mem, Category.TEMPORARIES)["current"] == 256 * F32 + 128 * 8
    assert row(mem, Category.TEMPORARIES)["peak"] == 2 * 256 * F32 + 128 * 8
    assert mem.peak_bytes == 2 * 256 * F32 + 128 * 8
    del a, b


# ---------------------------------------------------------------------------- never break


def test_outputs_and_gradients_bit_identical_with_and_without_tracking() -> None:
    def run(mode: str | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = mlp()
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
        if mode is not None:
            with track_memory(model, mode=mode, stream=False):
                out = model(x)
                out.square().sum().backward()
        else:
            out = model(x)
            out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_a, grads_a = run(None)
    for mode in ("exact", "fast"):
        out_b, grads_b = run(mode)
        assert torch.equal(out_a, out_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def _hook_state(model: nn.Module) -> tuple:  # type: ignore[type-arg]
    import torch.nn.modules.module as module_mod
    import torch.optim.optimizer as optim_mod

    return (
        len(module_mod._global_forward_pre_hooks),
        len(module_mod._global_forward_hooks),
        len(module_mod._global_forward_hooks_always_called),
        len(optim_mod._global_optimizer_pre_hooks),
        len(optim_mod._global_optimizer_post_hooks),
        len(model._forward_pre_hooks),
        len(model._forward_hooks),
        sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters()),
        torch._C._len_torch_dispatch_stack(),
        torch._C._autograd._top_saved_tensors_default_hooks(False),
    )


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_no_hook_left_behind_also_when_the_body_raises(mode: str) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_state(model)
    with track_memory(model, optimizer, mode=mode, stream=False):
        train(model, optimizer, torch.randn(4, 16), steps=1)
    assert _hook_state(model) == before
    with (
        pytest.raises(ValueError, match="boom"),
        track_memory(model, optimizer, mode=mode, stream=False),
    ):
        model(torch.randn(4, 16)).sum().backward()
        raise ValueError("boom")
    assert _hook_state(model) == before


def test_model_is_garbage_collected_after_the_block() -> None:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters())
    ref = weakref.ref(model)
    with track_memory(model, optimizer, stream=False) as mem:
        train(model, optimizer, torch.randn(4, 16), steps=2)
    del model, optimizer
    gc.collect()
    assert ref() is None
    assert mem.peak_bytes > 0  # results outlive the model
    assert mem.breakdown().loc["weights", "current"] > 0


def test_an_exception_inside_a_hook_is_warned_once_and_that_part_stops() -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with track_memory(model, optimizer, stream=False) as mem:

            def broken(*args: object, **kwargs: object) -> None:
                raise RuntimeError("injected")

            mem._engine.state.ledger.claim = broken  # type: ignore[method-assign]
            train(model, optimizer, x, steps=3)
    messages = [str(w.message) for w in caught if "gpumem" in str(w.message)]
    assert len(messages) == 1, messages
    assert "switched off" in messages[0]
    # the program's results are untouched and the rest kept measuring
    assert mem.breakdown().loc["weights", "current"] == unique_param_bytes(model)


def test_cuda_is_never_initialised_on_a_cpu_run() -> None:
    code = (
        "import torch\n"
        "from profiler import track_memory\n"
        "m = torch.nn.Linear(4, 4)\n"
        "with track_memory(m, stream=False) as mem:\n"
        "    m(torch.randn(2, 4)).sum().backward()\n"
        "print(mem); print(mem.timeline().shape)\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_importing_profiler_pulls_neither_textual_nor_pandas() -> None:
    code = (
        "import sys, profiler\n"
        "bad = [m for m in ('textual', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        track_memory(mode="turbo")
    with pytest.raises(UsageError):
        track_memory(model="not a model")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        track_memory(capacity="-3GB")


# ---------------------------------------------------------------------------- fast mode


def test_fast_mode_known_categories_are_exact() -> None:
    model = mlp(64, 256, 64)
    optimizer = torch.optim.Adam(model.parameters())
    params = unique_param_bytes(model)
    n_params = len(list(model.parameters()))
    with track_memory(model, optimizer, mode="fast", stream=False) as mem:
        for _ in range(3):
            loss = model(torch.randn(32, 64)).sum()
            loss.backward()
            optimizer.step()
        # gradients still set at the end
    frame = mem.breakdown()
    assert mem.mode == "fast"
    assert frame.loc["weights", "current"] == params
    assert frame.loc["gradients", "current"] == params
    assert frame.loc["optimizer", "current"] == 2 * params + n_params * F32
    assert int(frame["at_peak"].sum()) == mem.peak_bytes
    assert len(mem.steps) == 3
    # per-module figures come from the sampled steps (step 0 of 3 here), and the run says so
    assert mem.modules().loc["0", "calls"] == 1
    notes = [e.data["module_every"] for e in mem.events if "module_every" in e.data]
    assert notes == [MODULE_SAMPLE_EVERY]


# ---------------------------------------------------------------------------- ledger


def test_ledger_frees_through_weak_references_and_never_holds_storage() -> None:
    ledger = Ledger()
    t = torch.empty(100)
    entry = ledger.add_tensor(t, 6)
    assert entry is not None and ledger.total == 400
    view = t[50:]
    assert ledger.add_tensor(view, 6) is entry  # same storage
    del t
    assert ledger.total == 400  # the view keeps the storage alive
    del view
    assert ledger.total == 0 and not ledger.entries
    assert ledger.peak == 400


def test_a_saved_tensor_is_an_activation_only_while_autograd_holds_it() -> None:
    embed = nn.Embedding(50, 8)
    optimizer = torch.optim.SGD(embed.parameters(), lr=0.1)
    with track_memory(embed, optimizer, stream=False) as mem:
        ids = torch.randint(0, 50, (4, 16))  # int64, made in the block: a temporary
        out = embed(ids)  # the embedding saves ids for its backward: an activation
        during = mem.breakdown()
        out.sum().backward()
        optimizer.step()
    after = mem.breakdown()
    ids_bytes = 4 * 16 * 8
    assert during.loc["activations", "current"] == ids_bytes
    assert after.loc["activations", "current"] == 0  # released with the graph
    assert after.loc["activations", "peak"] == ids_bytes
    assert after.loc["temporaries", "current"] == ids_bytes + 4 * 16 * 8 * 4  # ids and out
    assert mem.top_modules() == [("Embedding", ids_bytes)]
    del ids, out
