"""Measure a training loop: every byte in a category and a module, predicted beside measured.

Run::

    python recipes/measure_training.py [--steps 4] [--mode auto|exact|fast] [--autocast]

What it shows: a tiny GPT-2 (random weights, no download; a torch-only model when transformers is
missing) trained for a few steps under ``track_memory``: the breakdown table (weights, gradients,
AdamW state, activations and temporaries, each with its peak, its share of the peak and the
formula's prediction), the modules that save the most activations, the timeline of one step, and
``mem.compare()`` explaining each gap between predicted and measured. With ``--autocast`` the
forward runs under bf16 autocast: the bf16 copies of the weights are counted as weights and the
activations shrink to their bf16 size.
"""

from __future__ import annotations

import argparse

import torch

from profiler import track_memory
from profiler.cli.demo import build_model


def main(steps: int = 4, mode: str = "auto", use_autocast: bool = False) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, is_hf = build_model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with track_memory(model, optimizer, mode=mode, stream=False) as mem:
        for _ in range(steps):
            ids = torch.randint(1, 2000, (8, 64), device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=use_autocast):
                if is_hf:
                    loss = model(input_ids=ids, labels=ids).loss
                else:
                    loss = torch.nn.functional.cross_entropy(
                        model(ids).flatten(0, 1), ids.flatten()
                    )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    print(mem)
    print("\nmodules saving the most activations:")
    print(mem.modules().sort_values("activations", ascending=False).head(6).to_string())
    print("\none step, sample by sample (bytes):")
    timeline = mem.timeline()
    print(timeline[timeline["step"] == 1].drop(columns=["time"]).to_string(index=False))
    print("\npredicted vs measured:")
    print(mem.compare().to_string())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    parser.add_argument("--autocast", action="store_true")
    args = parser.parse_args()
    main(args.steps, args.mode, args.autocast)
