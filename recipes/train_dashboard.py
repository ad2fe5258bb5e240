"""Train a small transformer for a minute under ``track_memory`` and watch it in ``gpumem top``.

Run, in one terminal::

    python recipes/train_dashboard.py            # 60 s; on CUDA when there is a GPU, else CPU

and in a second terminal::

    gpumem top                                   # enter opens the session, ? shows the keys

What it shows: the session appears in the sessions table, its step and current bytes move, the
session screen stacks weights, gradients, optimizer state and activations (measured beside
predicted), and the history chart breathes with every forward and backward. With ``--leak`` the
loop keeps every step's logits (a classic leak): activations grow step after step, the leak detector
raises an alert with its fix, and the OOM-risk line counts down to the device's capacity.

Options: ``--seconds`` (60), ``--leak``, ``--name`` (train_dashboard), ``--home`` (the gpumem
home, default ``$GPUMEM_HOME``), ``--device`` (``cuda`` when available, else ``cpu``),
``--capacity`` (a simulated device size, like ``2GB``, for a CPU run), ``--stop-file`` (stop
early once this file exists; the tests use it).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn

from profiler import track_memory


class TinyTransformer(nn.Module):
    """A two-layer decoder-style transformer language model (about 0.9 M parameters)."""

    def __init__(self, vocab: int = 512, width: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(256, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        hidden = self.embed(tokens) + self.position(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        for block in self.blocks:
            hidden = block(hidden, src_mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


def main(argv: list[str] | None = None) -> int:
    """Train until ``--seconds`` have passed; print the tracker's table at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--leak", action="store_true", help="keep every step's logits (a leak)")
    parser.add_argument("--name", default="train_dashboard")
    parser.add_argument("--home", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--capacity", default=None, help="simulated device size, e.g. 2GB")
    parser.add_argument("--stop-file", default=None, help="stop early once this file exists")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    with device:
        model = TinyTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    kept: list[torch.Tensor] = []
    options = {"name": args.name, "home": args.home}
    if args.capacity:
        options["capacity"] = args.capacity
    deadline = time.monotonic() + args.seconds
    step = 0
    with track_memory(model, optimizer, **options) as mem:
        print(f"tracking {mem.name}: open `gpumem top` in another terminal", flush=True)
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            tokens = torch.randint(0, 512, (args.batch, args.length + 1), device=device)
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 512), tokens[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if args.leak:
                kept.append(logits)  # keeps every step's logits (2 MiB each) alive: the leak
            step += 1
            if step % 50 == 0:
                print(
                    f"step {step}: loss {loss.item():.3f} (ln 512 = {math.log(512):.3f})",
                    flush=True,
                )
    print(mem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
