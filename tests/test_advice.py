"""Fix suggestions as pure functions of measured moments: exact savings, fits and ranking."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from profiler.advice import Moment, RunFacts, largest_batch, peak_after, rank
from profiler.advice.reading import capacity_bytes, layer_groups
from profiler.advice.suggestions import batch_wording
from profiler.errors import UsageError


def _bytes(w=0, b=0, g=0, o=0, a=0, kv=0, t=0, other=0) -> tuple[int, ...]:
    return (w, b, g, o, a, kv, t, other)


#: End of forward (activations alive) and the optimizer step (Adam scratch) of a training run.
TRAINING = RunFacts(
    moments=(
        Moment("backward", _bytes(w=100, a=1000, t=50, other=10)),
        Moment("optimizer", _bytes(w=100, g=100, o=200, t=100, other=10)),
    ),
    capacity=1000,
    batch=10,
    training=True,
    optimizer_class="AdamW",
    optimizer_bytes=200,
    gradient_bytes=100,
    weight_bytes=100,
    param_count=25,
    trainable_param_count=25,
    layer_activations=(300, 300, 300),
    layer_inputs=(50, 50, 50),
    pretrained=True,
)


def test_peak_charges_the_full_optimizer_state_at_every_moment():
    # forward end: 100 weights + 200 optimizer state (not yet created) + 10 other + 1050
    assert peak_after(TRAINING) == 1360


@pytest.mark.parametrize(
    ("capacity", "expected"), [(1000, 6), (1045, 7), (1044, 6), (310, 0), (309, 0)]
)
def test_largest_batch_is_exact(capacity, expected):
    # fits when 310 + 105 * b <= capacity and the optimizer step (510) fits
    assert largest_batch(TRAINING, capacity) == expected


def test_ranked_suggestions_with_exact_savings():
    found = rank(TRAINING)
    summary = [(s.kind, s.saves_bytes, s.fits, s.peak_after) for s in found]
    # without a replay every suggestion is an estimate: none says it fits (None), some do not
    assert summary == [
        ("checkpointing", 450, None, 910),
        ("batch_size", 420, None, 940),
        ("precision", 370, None, 990),
        ("lora", 284, False, 1076),
        ("offload", 200, False, 1160),
        ("lora", 198, False, 1162),
        ("optimizer", 150, False, 1210),
    ]
    batch = found[1]
    assert dict(batch.params) == {
        "batch_size": 6,
        "accumulation_steps": 2,
        "micro_batch": 5,
        "effective_batch": 10,
    }
    assert batch.title == (
        "Reduce the batch size from 10 to 6 (the largest that fits); to keep the effective batch "
        "of 10, accumulate gradients over 2 micro-batches of 5"
    )
    assert dict(found[3].params) == {"method": "qlora", "rank": 16, "bits": 4}
    assert dict(found[6].params) == {"optimizer": "bitsandbytes.optim.AdamW8bit", "state_bytes": 50}


def test_lora_only_for_models_worth_fine_tuning():
    scratch = RunFacts(**{**_fields(TRAINING), "pretrained": False})
    assert [s.kind for s in rank(scratch)] == [
        "checkpointing",
        "batch_size",
        "precision",
        "offload",
        "optimizer",
    ]


def test_capacity_argument_overrides_and_none_means_unknown():
    roomy = rank(TRAINING, capacity=10_000)
    assert roomy[0].kind == "already_fits" and roomy[0].fits is True and roomy[0].verified
    assert roomy[0].params["peak_bytes"] == 1360
    assert {s.fits for s in roomy[1:]} == {None}  # estimates, not replayed
    batch = next(s for s in roomy if s.kind == "batch_size")
    assert batch.params["batch_size"] == 92  # (10000 - 310) * 10 // 1050
    assert batch.saves_bytes == 1360 - (310 + 1050 * 92 // 10)
    unknown = rank(RunFacts(**{**_fields(TRAINING), "capacity": None}))
    assert {s.fits for s in unknown} == {None}
    halved = next(s for s in unknown if s.kind == "batch_size")
    assert (halved.params["batch_size"], halved.saves_bytes) == (5, 525)


def test_no_batch_fits_when_fixed_memory_exceeds_the_device():
    found = rank(TRAINING, capacity=300)
    batch = next(s for s in found if s.kind == "batch_size")
    assert (batch.params["batch_size"], batch.fits) == (0, False)


def _fields(facts: RunFacts) -> dict:
    return {name: getattr(facts, name) for name in RunFacts.__slots__}


INFERENCE = RunFacts(
    moments=(Moment("forward", _bytes(w=400, a=100, kv=300)),),
    capacity=600,
    batch=2,
    weight_bytes=400,
    param_count=100,
    seq=30,
    kv_positions=60,
)


def test_inference_suggestions():
    found = rank(INFERENCE)
    summary = [(s.kind, s.saves_bytes, s.fits) for s in found]
    assert summary == [
        ("precision", 400, None),
        ("quantization", 345, None),
        ("quantization", 300, None),
        ("batch_size", 200, None),
        ("kv_cache", 200, None),
        ("kv_cache", 150, False),
    ]
    kv = found[4]
    assert dict(kv.params) == {"fraction": 0.333, "kv_bytes": 99, "max_positions": 19}
    assert kv.title.startswith("Cap the KV cache at 19 positions")
    assert [s.params.get("bits") for s in found[1:3]] == [4, 8]
    assert dict(found[3].params) == {
        "batch_size": 1,
        "accumulation_steps": 1,
        "micro_batch": 1,
        "effective_batch": 1,
    }
    unknown = rank(RunFacts(**{**_fields(INFERENCE), "kv_positions": None}))
    assert [s.title for s in unknown if s.kind == "kv_cache"][0].startswith(
        "Cap the KV cache at 33% of its peak size"
    )


def test_fragmentation_and_other_processes():
    facts = RunFacts(
        **{
            **_fields(TRAINING),
            "capacity": 2000,
            "overhead": 900,
            "cached_free": 300,
            "fragmented": True,
            "other_processes": 500,
            "other_pids": (11, 12),
        }
    )
    by_kind = {s.kind: s for s in rank(facts)}
    allocator = by_kind["allocator"]
    assert (allocator.saves_bytes, allocator.fits, allocator.peak_after) == (300, None, 1960)
    assert allocator.params["env"] == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    others = by_kind["other_processes"]
    assert (others.saves_bytes, others.fits, others.params["pids"]) == (500, None, [11, 12])
    # overhead counts against every suggestion: the batch must leave room for it
    assert by_kind["batch_size"].params["batch_size"] == (2000 - 900 - 310) * 10 // 1050


def test_no_fragmentation_advice_when_the_cache_was_not_the_cause():
    facts = RunFacts(**{**_fields(TRAINING), "cached_free": 300, "fragmented": False})
    assert "allocator" not in {s.kind for s in rank(facts)}


def test_checkpointing_not_suggested_when_on_or_inference():
    on = RunFacts(**{**_fields(TRAINING), "checkpointing": True})
    assert "checkpointing" not in {s.kind for s in rank(on)}
    assert "checkpointing" not in {s.kind for s in rank(INFERENCE)}


def test_no_moments_no_suggestions():
    assert rank(RunFacts(moments=())) == []


def test_layer_groups_pick_the_largest_numbered_siblings():
    own = {
        "embed": 5,
        "blocks.0.ln": 10,
        "blocks.0.fc": 40,
        "blocks.0": 0,
        "blocks.1.ln": 12,
        "blocks.1.fc": 48,
        "blocks.1": 0,
        "heads.0": 3,
        "heads.1": 3,
    }
    inclusive = {
        name: own[name] + sum(v for n, v in own.items() if n.startswith(name + ".")) for name in own
    }
    assert layer_groups(own, inclusive) == ((50, 60), (10, 12))


def test_capacity_may_name_a_gpu():
    assert capacity_bytes("24GB") == 24 * 1000**3
    assert capacity_bytes(1 << 30) == 1 << 30
    assert capacity_bytes("rtx4090") == 24564 * 1024**2
    with pytest.raises(UsageError) as info:
        capacity_bytes("two dozen gigs")
    assert info.value.one_line() == (
        "not a size or a known GPU: 'two dozen gigs' (hint: write a size like 24GB or 80GiB, "
        "or a GPU name like rtx4090)"
    )


def test_the_library_modules_import_neither_pandas_nor_textual():
    code = (
        "import sys, profiler.report.reporter, profiler.advice, profiler.report.render_html, "
        "profiler.report.render_md; print(sorted(m for m in ('pandas', 'textual') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_uneven_micro_batches_add_up_to_the_batch():
    facts = replace(TRAINING, batch=256)
    title, params = batch_wording(facts, 400, 54)
    # 256 over 5 micro-batches: one of 52 and four of 51, never 5 x 52 = 260
    assert params == {
        "batch_size": 54,
        "accumulation_steps": 5,
        "micro_batch": 52,
        "effective_batch": 256,
    }
    assert "over 5 micro-batches of 51-52 (weight each micro-batch's loss by its size)" in title
