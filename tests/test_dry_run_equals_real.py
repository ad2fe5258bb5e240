"""The dry run is the real run: every category and every module, to the byte, on tiny models.

Each case runs the same build and step twice: on fake tensors through ``dry_run`` and for real
on the CPU through ``track_memory`` (exact mode). The steps pass an ``attention_mask`` of ones,
the case where transformers reads the mask's values to skip building a 4-D mask: the fake run
must take the same path (see ``profiler/fills.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas
import pytest
import torch
import transformers
from tiny_models import tiny

from profiler.dryrun import dry_run
from profiler.fills import Fills
from profiler.tracker import track_memory

transformers.logging.set_verbosity_error()


def _mistral() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        sliding_window=8,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.MistralForCausalLM(config)


def _t5() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.T5Config(
        d_model=64,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        d_kv=16,
        vocab_size=1000,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(config)


def _checkpointed(kind: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        model = tiny(kind)
        model.gradient_checkpointing_enable()
        model.train()
        return model

    return build


def _lora() -> torch.nn.Module:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return peft.get_peft_model(tiny("llama"), config)


def _train(seq: int = 32, padded: bool = False) -> Callable[[Any, Any], None]:
    def step(model: Any, opt: torch.optim.Optimizer) -> None:
        ids = torch.randint(0, 1000, (2, seq))
        mask = torch.ones(2, seq, dtype=torch.long)
        if padded:
            mask[1, :5] = 0  # left padding: the mask masks something, on both runs
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def _t5_step(model: Any, opt: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, 1000, (2, 16))
    labels = torch.randint(0, 1000, (2, 8))
    mask = torch.ones(2, 16, dtype=torch.long)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()
    opt.zero_grad()


def _prefill(model: Any, _opt: Any) -> None:
    ids = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones(2, 24, dtype=torch.long), use_cache=True)


CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[Any, Any], None]]] = {
    "gpt2": (lambda: tiny("gpt2"), _train()),
    "llama-gqa": (lambda: tiny("llama"), _train()),
    "llama-mha": (lambda: tiny("llama", num_key_value_heads=4), _train()),
    "llama-padded": (lambda: tiny("llama"), _train(padded=True)),
    "mistral-sliding-window": (_mistral, _train(seq=32)),
    "mistral-prefill": (_mistral, _prefill),
    "t5": (_t5, _t5_step),
    "llama-lora": (_lora, _train()),
    "llama-checkpointing": (_checkpointed("llama"), _train()),
    "gpt2-checkpointing": (_checkpointed("gpt2"), _train()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_equals_the_real_run_to_the_byte(case: str) -> None:
    make, step = CASES[case]

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = make()
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(trainable, lr=1e-3)

    dry = dry_run(build, step, steps=2, device="cpu")
    model, opt = build()
    with track_memory(model, opt, mode="exact", stream=False) as mem:
        for _ in range(2):
            step(model, opt)
            mem.step()
    assert dry.peak_bytes == mem.peak_bytes
    columns = ["current", "peak", "at_peak"]
    pandas.testing.assert_frame_equal(dry.breakdown()[columns], mem.breakdown()[columns])
    pandas.testing.assert_frame_equal(dry.modules(), mem.modules())
    # the run is not trivially empty: every training case saved activations
    assert mem.breakdown().loc["activations", "peak"] > 0 or case == "mistral-prefill"


def test_the_padding_case_builds_the_mask_on_both_runs() -> None:
    """A mask with padding written in is not all ones: the 4-D mask is built, and saved."""
    make, _ = CASES["llama-gqa"]
    peaks = {}
    for padded in (False, True):
        step = _train(padded=padded)

        def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
            model = make()
            return model, torch.optim.AdamW(model.parameters())

        peaks[padded] = dry_run(build, step, steps=1, device="cpu").breakdown()
    saved = peaks[True].loc["activations", "peak"] - peaks[False].loc["activations", "peak"]
    # one (2, 1, 32, 32) boolean mask saved by each of the 2 layers' attention, and more
    assert saved >= 2 * 2 * 32 * 32


def test_fills_follow_conversions_views_and_forget_writes() -> None:
    fills = Fills()

    def call(func: Any, *args: Any, **kwargs: Any) -> Any:
        return fills.call(func, args, kwargs)

    ones = call(torch.ones, 2, 3, dtype=torch.long)
    assert fills.value(ones) == 1
    flags = call(torch.Tensor.to, ones, torch.bool)
    assert fills.value(flags) is True
    assert fills.value(call(torch.Tensor.__invert__, flags)) is False
    total = call(torch.Tensor.sum, ones)
    assert fills.value(total) == 6
    assert call(torch.Tensor.__bool__, call(torch.Tensor.__eq__, total, 6)) is True
    row = call(torch.Tensor.__getitem__, ones, 0)
    assert fills.value(row) == 1
    call(torch.Tensor.__setitem__, row, 0, 0)  # a write through a view: the base changed too
    assert fills.value(ones) is None
    assert fills.value(row) is None
    assert fills.value(call(torch.randint, 0, 5, (3,))) is None
    assert fills.value(call(torch.full, (2,), 7.0)) == 7.0


def _packed(fills: Fills, position_ids: torch.Tensor) -> bool | None:
    """transformers' packed-sequence check, step by step through ``fills``: whether it can
    tell that there is one sequence per row (None: the values are not known)."""

    def call(func: Any, *args: Any, **kwargs: Any) -> Any:
        return fills.call(func, args, kwargs)

    first = call(
        torch.Tensor.sub,
        call(torch.Tensor.__getitem__, position_ids, (slice(None), slice(None, 1))),
        1,
    )
    diff = call(torch.diff, position_ids, prepend=first, dim=-1)
    mask = call(torch.Tensor.cumsum, call(torch.Tensor.ne, diff, 1), -1)
    last = call(torch.Tensor.__getitem__, mask, (slice(None), -1))
    return fills.value(call(torch.Tensor.all, call(torch.Tensor.__eq__, last, 0)))


def test_fills_know_an_arange_row_is_one_sequence() -> None:
    """Without a cache (gradient checkpointing) transformers checks the position ids for packed
    sequences; an arange row is one sequence, as the real device computes."""
    fills = Fills()

    def call(func: Any, *args: Any, **kwargs: Any) -> Any:
        return fills.call(func, args, kwargs)

    rows = call(torch.Tensor.unsqueeze, call(torch.Tensor.add, call(torch.arange, 16), 3), 0)
    assert _packed(fills, rows) is True
    from transformers.masking_utils import find_packed_sequence_indices

    assert find_packed_sequence_indices(rows) is None  # the real values: one sequence per row
    assert _packed(fills, call(torch.randint, 0, 16, (1, 16))) is None  # unknown: tracing path
    assert _packed(fills, call(torch.Tensor.mul, rows, 2)) is None  # steps of 2: not a row
    call(torch.Tensor.__setitem__, rows, (0, 5), 0)  # written in place: forgotten
    assert _packed(fills, rows) is None
