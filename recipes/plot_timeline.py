"""Plot a training run's memory: the timeline stacked by category, the capacity and the peak.

Run::

    python recipes/plot_timeline.py [--steps 4] [--out docs/timeline.png] [--capacity 160MB]

What it shows: a tiny GPT-2 (a torch-only model when transformers is missing) trained for a few
steps under ``track_memory`` with a simulated GPU's memory as the capacity line; ``mem.plot()``
draws weights, gradients, AdamW state, activations and temporaries as stacked bands, sample by
sample (each forward's activations rising and falling back after backward), with the peak
marked. The PNG is the picture in the README. Needs matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from profiler import track_memory
from profiler.cli.demo import build_model


def main(steps: int = 4, out: str = "docs/timeline.png", capacity: str = "160MB") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model, is_hf = build_model("cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with track_memory(model, optimizer, stream=False, capacity=capacity) as mem:
        for _ in range(steps):
            ids = torch.randint(1, 2000, (8, 64))
            if is_hf:
                loss = model(input_ids=ids, labels=ids).loss
            else:
                loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    ax = mem.plot()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"wrote {path} (peak {mem.peak_bytes} B of a {capacity} capacity)")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="docs/timeline.png")
    parser.add_argument("--capacity", default="160MB")
    args = parser.parse_args()
    main(args.steps, args.out, args.capacity)
