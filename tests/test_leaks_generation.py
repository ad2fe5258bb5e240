"""A KV cache growing within a generation is no leak; one fed new prompts without a reset is."""

from __future__ import annotations

import inspect

import pytest
import torch

from profiler import track_memory

transformers = pytest.importorskip("transformers")
from tiny_models import tiny_gpt2  # noqa: E402

CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(transformers.GPT2LMHeadModel.forward).parameters
    else "past_key_values"
)
BATCH, EMBED, LAYERS, PROMPT, TOKENS = 32, 256, 2, 8, 24
#: One generated token adds 2 (K, V) x layers x embed x batch x 4 bytes = 128 KiB: well above the
#: detector's 64 KiB-per-step floor, so per-token steps would look like a leak if counted.
PER_TOKEN = 2 * LAYERS * EMBED * BATCH * 4


def generate(model: torch.nn.Module, mem, cache, prompt: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    out = model(input_ids=prompt, use_cache=True, **{CACHE_ARG: cache})
    for _ in range(TOKENS):
        token = out.logits[:, -1:].argmax(-1)
        out = model(input_ids=token, use_cache=True, **{CACHE_ARG: cache})
        mem.step()  # a step per generated token


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_per_token_steps_in_one_generation_are_not_a_leak(mode: str) -> None:
    model = tiny_gpt2(n_embd=EMBED, n_positions=256).eval()
    prompt = torch.randint(1, 1000, (BATCH, PROMPT))
    cache = transformers.DynamicCache()
    with track_memory(model, stream=False, mode=mode) as mem, torch.no_grad():
        generate(model, mem, cache, prompt)
    assert mem.kv_cache_reused is False
    assert mem.leaks() == []
    # the cache holds the prompt and every token fed back: (PROMPT + TOKENS) positions
    assert mem.breakdown().loc["kv_cache", "current"] == PER_TOKEN * (PROMPT + TOKENS)


def test_a_second_prompt_into_the_same_cache_counts_as_not_reset() -> None:
    model = tiny_gpt2(n_embd=EMBED, n_positions=256).eval()
    prompt = torch.randint(1, 1000, (BATCH, PROMPT))
    with track_memory(model, stream=False) as mem, torch.no_grad():
        cache = transformers.DynamicCache()
        generate(model, mem, cache, prompt)
        assert mem.kv_cache_reused is False
        model(input_ids=prompt, use_cache=True, **{CACHE_ARG: cache})
        assert mem.kv_cache_reused is True
