"""estimate(): the seed's figures, modes, precisions, inputs, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from profiler.errors import ConfigError, UnknownNameError, UsageError
from profiler.predict.estimate import estimate
from profiler.predict.gpus import find_gpu
from profiler.predict.presets import load_preset
from profiler.records import Category
from profiler.units import GB, GiB

C = Category


def test_seed_training_figure_7b_fp16() -> None:
    est = estimate(params=7e9, precision="fp16", mode="train", optimizer="adamw")
    cats = est.categories
    assert cats[C.WEIGHTS] == 14 * GB
    assert cats[C.GRADIENTS] == 14 * GB
    assert cats[C.OPTIMIZER] == 56 * GB  # m, v in fp16 + fp32 master weights
    assert cats[C.WEIGHTS] + cats[C.GRADIENTS] + cats[C.OPTIMIZER] == 84 * GB


@pytest.mark.parametrize(("precision", "gb"), [("fp16", 14), ("int8", 7), ("int4", 3.5)])
def test_seed_inference_table(precision: str, gb: float) -> None:
    est = estimate(params=7e9, precision=precision)
    assert est.categories[C.WEIGHTS] == int(gb * GB)
    assert est.categories[C.GRADIENTS] == est.categories[C.OPTIMIZER] == 0


def test_fp32_training_is_16_bytes_per_parameter() -> None:
    est = estimate(params=1e9, precision="fp32", mode="train")
    cats = est.categories
    assert (cats[C.WEIGHTS], cats[C.GRADIENTS], cats[C.OPTIMIZER]) == (4 * GB, 4 * GB, 8 * GB)
    fp32_moments = estimate(params=1e9, precision="bf16", mode="train", optimizer_dtype="fp32")
    assert fp32_moments.categories[C.OPTIMIZER] == 12 * GB  # master + m + v in fp32


def test_optimizers() -> None:
    sgd = estimate(params=1e9, precision="fp32", mode="train", optimizer="sgd")
    assert sgd.categories[C.OPTIMIZER] == 4 * GB
    eight = estimate(params=1e9, precision="fp32", mode="train", optimizer="adamw-8bit")
    assert eight.categories[C.OPTIMIZER] == int(1e9 * 2 * (1 + 4 / 256))
    fact = estimate("gpt2", precision="fp32", mode="train", optimizer="adafactor")
    h, v, p, inner, layers = 768, 50257, 1024, 3072, 12
    # measured on the real GPT2LMHeadModel: rows + columns of each real matrix (the fused
    # c_attn is one 768 x 2304 matrix) and of each embedding table, vectors in full
    matrices = layers * ((h + 3 * h) + (h + h) + (h + inner) + (inner + h))
    small = layers * (2 * 2 * h + 3 * h + h + inner + h) + 2 * h
    assert fact.categories[C.OPTIMIZER] == (matrices + (v + h) + (p + h) + small) * 4


def test_preset_inference_with_kv_cache() -> None:
    est = estimate("llama-2-7b", precision="fp16", seq=8192)
    assert est.categories[C.WEIGHTS] == 2 * 6_738_415_616
    assert est.categories[C.KV_CACHE] == 4 * GiB
    assert est.parameters == 6_738_415_616
    names = [o.name for o in est.overheads]
    assert names == ["CUDA context", "allocator margin"]
    assert est.total == est.allocated + sum(o.bytes for o in est.overheads)


def test_kv_cache_scales_with_batch_and_dtype() -> None:
    one = estimate("llama-3-8b", seq=4096).categories[C.KV_CACHE]
    assert one == 4096 * 128 * 1024
    assert estimate("llama-3-8b", seq=4096, batch=3).categories[C.KV_CACHE] == 3 * one
    assert estimate("llama-3-8b", seq=4096, precision="fp32").categories[C.KV_CACHE] == 2 * one


def test_training_activations_checkpointing_and_eager() -> None:
    base = estimate("llama-2-7b", mode="train", precision="bf16", seq=2048)
    ckpt = estimate(
        "llama-2-7b", mode="train", precision="bf16", seq=2048, gradient_checkpointing=True
    )
    eager = estimate("llama-2-7b", mode="train", precision="bf16", seq=2048, attention="eager")
    act = base.categories[C.ACTIVATIONS]
    assert ckpt.categories[C.ACTIVATIONS] < act / 5
    # Eager keeps the fp32 softmax and its bf16 cast (batch x heads x seq x seq each) where
    # SDPA keeps only the log-sum-exp (batch x heads x seq, fp32), in each of the 32 layers.
    scores = 32 * 2048 * 2048 * (4 + 2)
    lse = 32 * 2048 * 4
    assert eager.categories[C.ACTIVATIONS] - act == 32 * (scores - lse)


def test_modes_lora_and_qlora() -> None:
    lora = estimate("llama-2-7b", mode="lora", precision="bf16", seq=512)
    trainable = lora.trainable_parameters
    assert trainable == 32 * 16 * ((4096 + 4096) * 4 + (4096 + 11008) * 3)
    assert lora.categories[C.GRADIENTS] == trainable * 4
    assert lora.categories[C.OPTIMIZER] == trainable * 8
    assert lora.categories[C.WEIGHTS] == 2 * 6_738_415_616 + trainable * 4
    qlora = estimate("llama-2-7b", mode="qlora", seq=512)
    assert qlora.precision == "nf4"
    assert qlora.categories[C.WEIGHTS] < lora.categories[C.WEIGHTS] / 3


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"mode": "qlora", "precision": "fp32"}, UsageError, "4-bit"),
        ({"mode": "train", "precision": "int4"}, UsageError, "cannot update"),
        ({"batch": 0}, UsageError, "positive"),
        ({"batch": -2}, UsageError, "positive"),
        ({"seq": 0}, UsageError, "positive"),
        ({"mode": "pretrain"}, UnknownNameError, "mode"),
        ({"optimizer": "adam9"}, UnknownNameError, "optimizer"),
        ({"precision": "fp12"}, UnknownNameError, "precision"),
    ],
)
def test_bad_input(kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment) as info:
        estimate("llama-2-7b", **kwargs)
    assert info.value.exit_code == 2


def test_unknown_preset_suggests() -> None:
    with pytest.raises(UnknownNameError) as info:
        estimate("mistral-8b")
    assert "mistral-7b" in info.value.suggestions


def test_config_dict_and_path(tmp_path) -> None:
    facts = load_preset("llama-3-8b")
    from_dict = estimate(facts, seq=1024)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(facts))
    from_path = estimate(str(path), seq=1024)
    from_dir = estimate(tmp_path, seq=1024)
    assert from_dict.bytes == from_path.bytes == from_dir.bytes
    assert from_dict.categories[C.KV_CACHE] == 1024 * 128 * 1024
    with pytest.raises(ConfigError):
        estimate({"hidden_size": 64})


def test_module_on_meta_device() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    est = estimate(model, precision="fp16", seq=100)
    assert est.parameters == sum(p.numel() for p in model.parameters()) == 202_048
    assert est.categories[C.WEIGHTS] == 2 * 202_048
    assert est.categories[C.KV_CACHE] == 2 * 2 * 2 * 16 * 100 * 2
    plain = estimate(torch.nn.Linear(10, 5), precision="fp32")
    assert plain.categories[C.WEIGHTS] == 55 * 4
    assert any("dry run" in note for note in plain.notes)


def test_fits_and_json() -> None:
    est = estimate("llama-2-7b", seq=2048)
    assert est.fits("rtx4090")
    assert not estimate("llama-2-70b", seq=2048).fits("rtx4090")
    data = est.to_dict([find_gpu("rtx4090"), find_gpu("l4")])
    assert data["total_bytes"] == est.total
    assert data["categories"]["kv_cache"] == 2048 * 512 * 1024
    assert set(data["overheads"]) == {"CUDA context", "allocator margin"}
    assert data["gpus"][0] == {
        "name": "RTX 4090",
        "memory_bytes": 24564 * 1024**2,
        "required_bytes": est.required_on(find_gpu("rtx4090")),
        "fits": True,
    }
    json.dumps(data)


def test_breakdown_frame() -> None:
    frame = estimate("gpt2", seq=128).breakdown()
    assert frame.index.name == "category"
    assert list(frame.index) == [str(c) for c in Category]
    assert frame.loc["weights", "predicted"] == 124_439_808 * 2


def test_predict_imports_neither_pandas_nor_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys, profiler.predict, profiler.dryrun;"
        "from profiler.predict import estimate; estimate('llama-2-7b');"
        "print('pandas' in sys.modules, 'textual' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("preset", sorted(__import__("profiler.predict").predict.preset_names()))
def test_every_preset_in_every_mode(preset: str) -> None:
    facts = load_preset(preset)
    params = facts["parameters"]
    for mode, precision in (
        ("inference", "fp16"),
        ("inference", "q4_k_m"),
        ("inference", "awq"),
        ("train", "bf16"),
        ("lora", "bf16"),
        ("qlora", "nf4-dq"),
    ):
        est = estimate(preset, mode=mode, precision=precision, seq=512, batch=2)
        cats = est.categories
        assert est.parameters == params
        assert est.total == sum(cats.values()) + sum(o.bytes for o in est.overheads)
        if precision in ("fp16", "bf16"):
            assert cats[C.WEIGHTS] >= 2 * params
        elif params > 1e9:
            assert cats[C.WEIGHTS] < params  # under a byte per parameter
        else:
            assert cats[C.WEIGHTS] < 2 * params  # GPT-2: the fp16 embeddings dominate
        if mode == "train":
            assert cats[C.GRADIENTS] == 2 * params
            assert cats[C.OPTIMIZER] == 8 * params  # bf16 m, v + fp32 master weights
        if mode == "inference":
            assert cats[C.GRADIENTS] == cats[C.OPTIMIZER] == 0
            assert cats[C.KV_CACHE] > 0
