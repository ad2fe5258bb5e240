"""Tracking overhead, measured side by side in one process: untracked vs exact vs fast vs MemTracker.

Run: ``python benchmarks/overhead.py [--repeats N]``. Prints one line per workload with the median
step time of each variant, its ratio to untracked and the spread of that ratio over the rounds
(min-max); the variants are interleaved round by round so that machine noise hits them alike.
Each timed loop is the steady state: it starts after three steps inside the block (set-up, the
first step, which fast mode measures with the exact ledger, and the stream's first files) and a
full garbage collection (what the previous variant left is not charged to the next). ``exact`` and ``fast`` run as users run them: the leak detector and the session stream on; fast
mode keeps glibc's heap counter on CPU here (users get exact mode there, with a notice).
Workloads:

(a) small ops: MLP 32-64-64-10, batch 8, Adam (MemTracker is ~19x slower than untracked here);
(b) big ops: a 2-layer transformer encoder, d_model 512, seq 256, batch 8, AdamW;
(c) 2,000 modules: 1,000 Linear(8, 8) + ReLU pairs, batch 4, SGD; with (a), it shows whether
    fast mode's per-step cost (microseconds over untracked) grows with the module count;
(d) generation: a tiny GPT-2 from transformers (4 layers, d_model 256, random weights) generating
    32 tokens greedily after an 8-token prompt; times per token.

Each workload also splits fast mode's extra time into its counter reads (one per sample; on CPU
glibc's ``mallinfo2``, which walks the heap: its cost grows with the heap, not with fast mode's
work; on CUDA the counter is the caching allocator's) and its own work (the rest), per round.

Targets: exact <= 3.5x on (a), <= 1.05x on (b) and <= 2.5x per token on (d); fast <= 1.10x on (a)
and <= 1.01x on (b), and its microseconds per step on (c) no more than on (a). Also: the tracker's own records after a
100k-step run stay bounded (samples and steps are thinned, events capped), measured as the deep
size of the records.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from profiler import track_memory
from profiler.tracking import fast as fast_module


def small_workload() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, 32)
    y = torch.randint(0, 10, (8,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, optimizer, step


def big_workload() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(8, 256, 512)

    def step() -> None:
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, optimizer, step


def many_modules_workload() -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None]]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(1000):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(4, 8)

    def step() -> None:
        model(x).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, optimizer, step


def generation_workload() -> tuple[nn.Module, None, Callable[[], None]]:
    """A tiny GPT-2 (4 layers, d 256) generating 32 tokens greedily after an 8-token prompt."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4, n_embd=256, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 1000, (1, 8))
    mask = torch.ones_like(ids)

    def step() -> None:
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=GENERATED_TOKENS,
                min_new_tokens=GENERATED_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )

    return model, None, step


#: Tokens generated per timed call of (d); its times are per token.
GENERATED_TOKENS = 32


def _memtracker(model: nn.Module, optimizer: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    return tracker


def measure(
    build: Callable,  # type: ignore[type-arg]
    steps: int,
    repeats: int,
    home: str,
    *,
    memtracker: bool = True,
    per: int = 1,
) -> dict[str, list[float]]:
    """CPU time per step of each variant, one value per round (process time: robust to load)."""
    model, optimizer, step = build()
    for _ in range(3):
        step()  # warm-up: optimizer state, allocator, lazy init
    variants: dict[str, Callable[[], contextlib.AbstractContextManager]] = {  # type: ignore[type-arg]
        "untracked": contextlib.nullcontext,
        "exact": lambda: track_memory(model, optimizer, mode="exact", home=home),
        "fast": lambda: track_memory(model, optimizer, mode="fast", home=home),
    }
    if memtracker:
        variants["memtracker"] = lambda: _memtracker(model, optimizer)
    times: dict[str, list[float]] = {name: [] for name in variants}
    times["fast counter"] = []
    for _ in range(repeats):
        for name, make in variants.items():
            context = make()
            with context as tracker:
                for _ in range(3):  # set-up, the first (sampled) step, the stream's first files
                    step()
                    if name == "memtracker":
                        tracker.reset_mod_stats()
                    elif per > 1 and tracker is not None:
                        tracker.step()
                taken = len(tracker.samples) if name == "fast" else 0
                gc.collect()  # no variant pays for the garbage of the one before
                start = time.process_time()
                for _ in range(steps):
                    step()
                    if name == "memtracker":
                        tracker.reset_mod_stats()
                    elif per > 1 and tracker is not None:
                        tracker.step()  # an inference loop ends its steps by hand
                elapsed = time.process_time() - start
                if name == "fast":
                    # each fast-mode sample read the counter once: what those reads cost, read
                    # again now, in the same heap
                    reads = len(tracker.samples) - taken
                    times["fast counter"].append(
                        reads * counter_read(tracker._engine.fast.read_counter) / steps / per
                    )
            times[name].append(elapsed / steps / per)
    return times


def counter_read(counter: Callable[[], object]) -> float:
    """Seconds (process time) one call of ``counter`` takes here and now."""
    start = time.process_time()
    for _ in range(50):
        counter()
    return (time.process_time() - start) / 50


def _deep_size(root: object) -> int:
    """Bytes of the records under ``root``: containers, records and the values they hold.

    Descends into tuples, lists, dicts, sets and slotted objects (samples, step records, events,
    ledger entries); counts strings and numbers; skips what is shared with the rest of the
    process (enum members, classes, functions, modules, None) and weak references' targets.
    """
    import enum
    import sys
    import types

    seen: set[int] = set()
    stack = [root]
    total = 0
    skip = (type, types.ModuleType, types.FunctionType, types.MethodType, enum.Enum, bool)
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, skip) or id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, tuple | list | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        else:
            for cls in type(obj).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if name != "__weakref__":
                        stack.append(getattr(obj, name, None))
            if hasattr(obj, "__dict__") and not isinstance(obj, types.ModuleType):
                stack.append(vars(obj))
    return total


def memory_bound(steps: int) -> tuple[int, int, int]:
    """The tracker's own records after a ``steps``-step training run of a tiny model.

    Returns (deep size of the tracker's samples, step records, events and ledger entries, in
    bytes; samples kept; step records kept).
    """
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4)
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(steps):
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    engine = mem._engine
    history = engine.history
    records = [
        history.samples.items,
        history.steps.items,
        history.events,
        engine.state.ledger.entries,
    ]
    return _deep_size(records), len(mem.samples), len(mem.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-steps", type=int, default=100_000)
    parser.add_argument("--memory-only", action="store_true", help="skip the timing workloads")
    parser.add_argument("--only", default="abcd", help="which workloads to time (a, b, c, d)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Off CUDA, fast mode measures in exact mode; keep glibc's heap counter here to time fast
    # mode's own work on this machine (on CUDA the counter is the caching allocator's).
    fast_module.CPU_HEAP_COUNTER = True
    workloads = [
        ("a", "(a) small ops: MLP 32-64-64-10, batch 8, Adam", small_workload, 200, True),
        ("b", "(b) big ops: transformer d512 x2, seq 256, batch 8, AdamW", big_workload, 2, True),
        (
            "c",
            "(c) 2,000 modules: 1,000 x (Linear 8-8, ReLU), SGD",
            many_modules_workload,
            10,
            False,
        ),
        (
            "d",
            f"(d) generation, per token: GPT-2 4 x d256, {GENERATED_TOKENS} tokens greedy",
            generation_workload,
            3,
            False,
        ),
    ]
    with tempfile.TemporaryDirectory() as home:
        for key, label, build, steps, memtracker in workloads:
            if args.memory_only or key not in args.only:
                continue
            per = GENERATED_TOKENS if key == "d" else 1
            times = measure(build, steps, args.repeats, home, memtracker=memtracker, per=per)
            counter = times.pop("fast counter")
            base = times["untracked"]
            parts = []
            for name, values in times.items():
                ratios = [v / b for v, b in zip(values, base, strict=True)]
                median = statistics.median(values)
                extra = (median - statistics.median(base)) * 1e6
                parts.append(
                    f"{name} {median * 1e3:.3f} ms ({statistics.median(ratios):.2f}x, "
                    f"{min(ratios):.2f}-{max(ratios):.2f}; {extra:+.0f} us/step)"
                )
            print(f"{label}: " + ", ".join(parts), flush=True)
            own = [f - b - c for f, b, c in zip(times["fast"], base, counter, strict=True)]
            print(
                f"    fast: counter reads {statistics.median(counter) * 1e6:.0f} us/step "
                f"(glibc's heap walk on CPU), its own work {statistics.median(own) * 1e6:+.0f} "
                f"us/step ({min(own) * 1e6:+.0f} to {max(own) * 1e6:+.0f})",
                flush=True,
            )
    size, samples, steps = memory_bound(args.memory_steps)
    print(
        f"tracker memory after {args.memory_steps} training steps: {size / 2**20:.1f} MiB of "
        f"records (target <= 64 MiB), {samples} samples and {steps} step records kept"
    )


if __name__ == "__main__":
    main()
