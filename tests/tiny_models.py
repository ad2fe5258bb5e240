"""Tiny transformers models for the tests: random weights from configs, no downloads."""

from __future__ import annotations

from typing import Any

import torch


def tiny_gpt2(**overrides: Any) -> torch.nn.Module:
    """A 2-layer GPT-2 (n_embd 64, 4 heads, vocab 1000), seeded."""
    import transformers

    options: dict[str, Any] = {
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "vocab_size": 1000,
        "n_positions": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**options, **overrides}))


def tiny_llama(**overrides: Any) -> torch.nn.Module:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 KV heads), seeded."""
    import transformers

    options: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 128,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**options, **overrides}))


def tiny(kind: str, **overrides: Any) -> torch.nn.Module:
    """``tiny("gpt2")`` or ``tiny("llama")``."""
    return tiny_gpt2(**overrides) if kind == "gpt2" else tiny_llama(**overrides)
