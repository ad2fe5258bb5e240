"""Benchmark: what ``mem.compare()`` costs now that it replays the step on fake tensors.

Run: ``PYTHONPATH=. python benchmarks/compare_cost.py [--rounds 5]``

For each model (an MLP 32-64-10 with AdamW, batch 8; a tiny GPT-2, 2 layers × 64, vocab 1000,
batch 2 × seq 32; a GPT-2 of 4 layers × 256, vocab 8000, batch 4 × seq 128), each round tracks
two training steps in exact mode in a fresh tracker, then times side by side: the tracked step,
the first ``compare()`` (the replay plus the frame), the second ``compare()`` (the replay reused)
and the formulas-only frame (``profiler.predict.compare.compare`` over the breakdown). Prints
the median of the rounds with the min-max in brackets, how many categories' replayed predictions
equalled the measurement to the byte, and the largest gap (this loop's ``loss()`` frees its
input after backward; the replay keeps its input until the step's end).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.1f} ms ({min(values) * 1e3:.1f}-{max(values) * 1e3:.1f})"


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    import transformers

    from profiler import track_memory, views
    from profiler.predict.compare import compare

    transformers.logging.set_verbosity_error()

    def mlp() -> tuple[torch.nn.Module, Callable[[], Any]]:
        model = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        return model, lambda: model(torch.randn(8, 32)).sum()

    def gpt2(layers: int, width: int, vocab: int, batch: int, seq: int) -> Callable[[], Any]:
        def make() -> tuple[torch.nn.Module, Callable[[], Any]]:
            config = transformers.GPT2Config(
                n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=seq,
                bos_token_id=0, eos_token_id=0,
            )  # fmt: skip
            model = transformers.GPT2LMHeadModel(config)

            def loss() -> Any:
                ids = torch.randint(0, vocab, (batch, seq))
                return model(input_ids=ids, labels=ids).loss

            return model, loss

        return make

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("MLP 32-64-10, batch 8, AdamW", mlp),
        ("GPT-2 2x64, vocab 1000, 2x32, AdamW", gpt2(2, 64, 1000, 2, 32)),
        ("GPT-2 4x256, vocab 8000, 4x128, AdamW", gpt2(4, 256, 8000, 4, 128)),
    ]
    print(f"{'case':<40} {'tracked step':>26} {'compare() first':>26} "
          f"{'compare() again':>26} {'formulas only':>26}  replayed = measured")  # fmt: skip
    for name, make in cases:
        timings: dict[str, list[float]] = {"step": [], "first": [], "again": [], "formulas": []}
        gaps: dict[str, int] = {}
        for _ in range(args.rounds):
            torch.manual_seed(0)
            model, loss = make()
            opt = torch.optim.AdamW(model.parameters())
            with track_memory(model, opt, mode="exact", stream=False) as mem:
                for _ in range(2):
                    began = time.perf_counter()
                    loss().backward()
                    opt.step()
                    opt.zero_grad()
                    mem.step()
                    timings["step"].append(time.perf_counter() - began)
            began = time.perf_counter()
            table = mem.compare()
            timings["first"].append(time.perf_counter() - began)
            began = time.perf_counter()
            mem.compare()
            timings["again"].append(time.perf_counter() - began)
            began = time.perf_counter()
            compare(mem.breakdown(), context=views.compare_context(mem))
            timings["formulas"].append(time.perf_counter() - began)
            for category, gap in table["gap"].items():
                gaps[str(category)] = max(gaps.get(str(category), 0), abs(int(gap)))
            assert table.attrs["replay_problem"] is None, table.attrs["replay_problem"]
        cells = " ".join(
            f"{_spread(timings[k]):>26}" for k in ("step", "first", "again", "formulas")
        )
        equal = sum(1 for gap in gaps.values() if gap == 0)
        worst = max(gaps, key=lambda c: gaps[c])
        print(f"{name:<40} {cells}  {equal}/{len(gaps)}, largest gap {gaps[worst]} B ({worst})")


if __name__ == "__main__":
    main()
