"""Suggestions verified by replaying the step on fake tensors (profiler.replay, advice.verify).

The headline case (issue 11): a 4 x (512 -> 2048 -> 512) GELU MLP with AdamW, input
(256, 64, 512), on a simulated 400 MB device, runs out of memory in its very first forward. The
loop keeps each step's output (``out = model(x)``) until the next forward returns, so the true
largest batch is 54 (56 when the output is let go). The batch size gpumem suggests is checked by
running that batch and the next one for real under the same capacity.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from tiny_models import tiny
from torch import nn

from profiler import track_memory
from profiler.advice import RunFacts, rank
from profiler.advice.facts import Moment
from profiler.replay import Adam8bitLayout

transformers.logging.set_verbosity_error()
CAPACITY = "400MB"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        *[nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)) for _ in range(4)]
    )


def _run(
    batch: int,
    capacity: str | None = CAPACITY,
    steps: int = 2,
    keep: bool = True,
    mode: str = "auto",
):
    """(tracker, model, optimizer, whether it fit); ``keep``: the loop holds each output."""
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters())
    mem = track_memory(model, opt, capacity=capacity, stream=False, leaks=False, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mem:
                out = None
                for _ in range(steps):
                    x = torch.randn(batch, 64, 512)
                    if keep:
                        out = model(x)
                        out.sum().backward()
                    else:
                        model(x).sum().backward()
                    opt.step()
                    opt.zero_grad()
                del out
        except torch.OutOfMemoryError:
            return mem, model, opt, False
    return mem, model, opt, True


@pytest.fixture(scope="module")
def first_forward_oom():
    mem, model, opt, fits = _run(256)
    assert not fits
    return mem, model, opt


def _batch_of(suggestions) -> int:
    found = next(s for s in suggestions if s.kind == "batch_size")
    assert found.verified and found.fits is True and found.replayed_peak is not None
    return int(found.params["batch_size"])


def test_first_forward_oom_suggests_a_batch_that_really_fits(first_forward_oom) -> None:
    mem, _model, _opt = first_forward_oom
    failure = mem.failure
    assert failure.step == 0 and str(failure.phase) == "forward"
    at_oom = _batch_of(mem.oom_report.suggestions)
    # the projection alone said 163 here (an upper bound from partial activations); the replay
    # holds the first step's output through the second forward (not seen yet: the safe side)
    assert at_oom == 54
    assert _run(at_oom)[3] is True
    assert _run(at_oom + 1)[3] is False


def test_fast_mode_gives_the_same_batch(first_forward_oom) -> None:
    """Fast mode asked off CUDA measures in exact mode (its heap counter sees the whole
    process), and says so: the same OOM, the same replayed answer."""
    exact, _model, _opt = first_forward_oom
    fast, _model2, _opt2, fits = _run(256, mode="fast")
    assert not fits and fast.requested_mode == "fast" and str(fast.mode) == "exact"
    assert _batch_of(fast.oom_report.suggestions) == _batch_of(exact.oom_report.suggestions)


def test_the_same_batch_ahead_of_time_and_after_the_oom(first_forward_oom) -> None:
    mem, _model, _opt = first_forward_oom
    at_oom = _batch_of(mem.oom_report.suggestions)
    assert _batch_of(mem.suggestions()) == at_oom
    ahead, _model2, _opt2, fits = _run(16, capacity=None, steps=2)
    assert fits
    assert _batch_of(ahead.suggestions(capacity=CAPACITY)) == at_oom


def test_a_loop_seen_to_let_the_output_go_gets_the_larger_batch() -> None:
    """Two steps seen: the output was not held into the next forward, so the replay does not
    hold it either, and the batch is the true largest of that loop."""
    ahead, _model, _opt, fits = _run(16, capacity=None, steps=2, keep=False)
    assert fits
    batch = _batch_of(ahead.suggestions(capacity=CAPACITY))
    assert _run(batch, keep=False)[3] is True
    assert _run(batch + 1, keep=False)[3] is False


def test_a_run_that_fits_says_so_first() -> None:
    mem, _model, _opt, fits = _run(4, capacity=None, steps=2)
    assert fits
    found = mem.suggestions(capacity=CAPACITY)
    assert found[0].kind == "already_fits" and found[0].fits is True and found[0].verified
    assert found[0].params["peak_bytes"] == mem.peak_bytes


def test_every_fits_true_was_replayed(first_forward_oom) -> None:
    mem, _model, _opt = first_forward_oom
    for suggestion in mem.suggestions(capacity="2GB"):
        if suggestion.fits:
            assert suggestion.verified and suggestion.replayed_peak is not None
            assert suggestion.replayed_peak + 0 <= 2e9
        if not suggestion.verified:
            assert "Estimated" in suggestion.detail


def _gpt2_run(capacity: str | None, **step_options):
    model = tiny("gpt2")
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 1000, (8, 64))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step_options.get("amp", False)):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    if step_options.get("checkpointing"):
        model.gradient_checkpointing_enable()
    mem = track_memory(model, opt, capacity=capacity, stream=False, leaks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mem:
            for _ in range(2):
                step()
    return mem, model, opt


def test_autocast_and_checkpointing_replays_match_real_runs() -> None:
    mem, model, opt = _gpt2_run(None)
    found = {s.kind: s for s in mem.suggestions(capacity=mem.peak_bytes - 1)}
    amp, _m1, _o1 = _gpt2_run(None, amp=True)
    ckpt, _m2, _o2 = _gpt2_run(None, checkpointing=True)
    precision, checkpointing = found["precision"], found["checkpointing"]
    assert precision.verified and checkpointing.verified
    # the replay's loss is the model's own (labels given), so the peaks are the real ones
    assert precision.replayed_peak == amp.peak_bytes
    # checkpointing: equal too (without a cache transformers checks the position ids for packed
    # sequences; the dry run knows an arange row is one, see profiler/fills.py)
    assert checkpointing.replayed_peak == ckpt.peak_bytes
    assert "lora" in found and found["lora"].verified


def test_what_is_in_use_is_not_suggested() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny("llama"), peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, 1000, (2, 32))
    with track_memory(model, opt, stream=False, leaks=False) as mem:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    kinds = {s.kind for s in mem.suggestions(capacity=mem.peak_bytes // 2)}
    assert "lora" not in kinds and "precision" not in kinds


def test_estimates_never_say_they_fit() -> None:
    facts = RunFacts(
        moments=(Moment("backward", (100, 0, 100, 200, 1000, 0, 0, 0)),),
        capacity=1000,
        batch=8,
        training=True,
        optimizer_class="AdamW",
        optimizer_bytes=200,
        gradient_bytes=100,
        weight_bytes=100,
        param_count=25,
    )
    found = rank(facts)
    assert found and all(s.fits is not True and not s.verified for s in found)


def _state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of each state key over all parameters, a shared tensor counted once."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.untyped_storage().data_ptr() not in seen:
                seen.add(value.untyped_storage().data_ptr())
                out[key] = out.get(key, 0) + value.nbytes
            elif not torch.is_tensor(value):
                out.setdefault(key, 0)
    return out


def _stepped(make) -> torch.optim.Optimizer:
    params = [nn.Parameter(torch.zeros(n)) for n in (4096 + 1, 10, 5000)]
    opt = make(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt


def test_the_8bit_layout_holds_what_bitsandbytes_holds() -> None:
    blocks = -(-4097 // 256) + -(-5000 // 256)
    assert _state_bytes(_stepped(Adam8bitLayout)) == {
        "step": 0,  # a Python int
        "state1": 4097 + 10 * 4 + 5000,
        "state2": 4097 + 10 * 4 + 5000,
        "qmap1": 256 * 4,  # shared by the 8-bit tensors
        "qmap2": 256 * 4,
        "absmax1": blocks * 4,
        "absmax2": blocks * 4,
    }


def test_the_8bit_layout_is_bitsandbytes_own() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    real = _state_bytes(_stepped(bnb.optim.AdamW8bit))
    assert real == _state_bytes(_stepped(Adam8bitLayout))


def _two_blocks(make):
    model = _mlp()[:2]
    opt = make(model.parameters())
    with track_memory(model, opt, stream=False, leaks=False) as mem:
        for _ in range(2):
            out = model(torch.randn(4, 64, 512))
            out.sum().backward()
            opt.step()
            opt.zero_grad()
    return mem, model, opt


def test_a_real_8bit_adam_run_is_what_the_8bit_suggestion_replayed() -> None:
    """bitsandbytes' own AdamW8bit, tracked: its state (the shared maps once) is the optimizer
    category; the 8-bit suggestion replayed from an AdamW run of the same model has that run's
    peak to the byte; and no 8-bit optimizer is suggested to a run that already has one."""
    bnb = pytest.importorskip("bitsandbytes")
    adamw, _m1, _o1 = _two_blocks(torch.optim.AdamW)
    real, _m2, opt = _two_blocks(bnb.optim.AdamW8bit)
    assert int(real.breakdown().loc["optimizer", "current"]) == sum(_state_bytes(opt).values())
    found = {s.kind: s for s in adamw.suggestions(capacity=adamw.peak_bytes - 1)}
    assert found["optimizer"].verified
    assert found["optimizer"].replayed_peak == real.peak_bytes
    kinds = {s.kind for s in real.suggestions(capacity=real.peak_bytes // 2)}
    assert "optimizer" not in kinds


def test_no_replay_inside_another_trackers_block() -> None:
    """suggestions() asked inside an outer tracker's block: replaying would charge fake tensors
    to the outer tracker, so the suggestions stay estimates and the outer peak is untouched."""
    inner, _model, _opt, _fits = _run(4, capacity=None, steps=2)
    outer_model = nn.Linear(8, 8)
    with track_memory(outer_model, stream=False, leaks=False, mode="exact") as outer:
        outer_model(torch.randn(2, 8))
        before = outer.peak_bytes
        found = inner.suggestions(capacity=inner.peak_bytes // 2)
        assert outer.peak_bytes == before
    assert found and not any(s.verified for s in found)
    assert any("dispatch mode is active" in s.detail for s in found)


def test_a_mode_left_set_by_two_threads_does_not_stop_the_replay() -> None:
    """torch's ``is_in_torch_dispatch_mode`` is a process-wide flag: two threads that enter and
    leave dispatch modes in turn (two trackers in two threads) leave it set with no mode on any
    stack. The replay asks this thread's stack instead, and still runs."""
    import threading

    from torch.utils._python_dispatch import TorchDispatchMode, is_in_torch_dispatch_mode

    from profiler.replay import dispatch_mode_active

    class Passing(TorchDispatchMode):
        """Like gpumem's ledger: compiled code runs under it."""

        @classmethod
        def ignore_compile_internals(cls) -> bool:
            return True

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    entered, left = threading.Event(), threading.Event()

    def second() -> None:
        with Passing():  # entered while the first thread's mode is on: remembers "set"
            entered.set()
            left.wait(timeout=30)  # the first thread leaves its mode first

    mode = Passing()
    mode.__enter__()
    thread = threading.Thread(target=second)
    thread.start()
    entered.wait(timeout=30)
    mode.__exit__(None, None, None)
    left.set()
    thread.join(timeout=30)
    stuck = is_in_torch_dispatch_mode()
    try:
        assert not dispatch_mode_active()
        mem, _model, _opt, fits = _run(4, capacity=None, steps=2)
        assert fits
        found = mem.suggestions(capacity=mem.peak_bytes // 2)
        assert any(s.verified and s.replayed_peak for s in found)
    finally:
        import torch.utils._python_dispatch as python_dispatch

        python_dispatch._is_in_torch_dispatch_mode = False  # leave torch's flags as they should be
        python_dispatch._is_in_non_infra_torch_dispatch_mode = False
    assert stuck  # the flag torch leaves behind (if torch fixes it, this test can go)
