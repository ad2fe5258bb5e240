"""Measure generation: the KV cache as its own category, exact to the byte, GQA included.

Run::

    python recipes/measure_generation.py [--new-tokens 32] [--batch 2]

What it shows: a tiny Llama with grouped-query attention (4 query heads, 2 KV heads; random
weights from a config, no download) generates under ``track_memory``; each generated token is a
``mem.step()``. The KV cache is measured from the transformers ``Cache`` object and compared with
2 x layers x kv_heads x head_dim x tokens x batch x bytes. Needs transformers.
"""

from __future__ import annotations

import argparse

import torch

from profiler import format_bytes, track_memory


def main(new_tokens: int = 32, batch: int = 2, prompt: int = 16) -> int:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2000,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(1, 2000, (batch, prompt))
    with track_memory(model, stream=False) as mem, torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
        )
        mem.step()
    tokens = prompt + new_tokens - 1
    head_dim = config.hidden_size // config.num_attention_heads
    formula = (
        2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * tokens * batch * 4
    )
    measured = int(mem.breakdown().loc["kv_cache", "current"])
    print(mem)
    print(
        f"\nKV cache: measured {format_bytes(measured)}, formula {format_bytes(formula)} "
        f"({tokens} positions x batch {batch}, 2 KV heads of 4)"
    )
    del out
    return 0 if measured == formula else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    raise SystemExit(main(args.new_tokens, args.batch))
