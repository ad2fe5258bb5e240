"""Leak: one KV cache reused for every request and never reset.

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/kv_cache_not_reset.py --steps 12

A small serving loop answers one request per step (``mem.step()``) with a tiny GPT-2 built from
a config (no download). It hands the same ``DynamicCache`` to every request, so the cache keeps
every earlier request's keys and values: 256 KiB more per request here. gpumem flags the
``kv_cache`` growth within ten steps at the line that feeds the cache: create a fresh cache (or
call ``cache.reset()``) for each request.
"""

from __future__ import annotations

import argparse
import inspect

import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from profiler.tracker import MemoryTracker, track_memory

# transformers 5.2x calls the argument `cache`; older releases `past_key_values`
CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters
    else "past_key_values"
)


def main(steps: int = 12, mode: str = "auto") -> MemoryTracker:
    """Serve ``steps`` requests of 32 tokens (batch 4) through one never-reset cache."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=128,
        n_head=4,
        vocab_size=1000,
        n_positions=1024,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    cache = DynamicCache()
    with track_memory(model, stream=False, mode=mode) as mem, torch.no_grad():
        for _ in range(steps):
            prompt = torch.randint(0, 1000, (4, 32))
            out = model(input_ids=prompt, use_cache=True, **{CACHE_ARG: cache})  # LEAK
            out.logits[:, -1].argmax(-1)
            mem.step()
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    for leak in main(args.steps, args.mode).leaks():
        print(leak.describe())
