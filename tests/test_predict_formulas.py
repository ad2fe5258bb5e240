"""Formulas: the seed's figures, KV cache per token, parameter counts, quantisation layouts."""

from __future__ import annotations

import pytest

from profiler.errors import ConfigError, UnknownNameError
from profiler.predict.formats import find_format, matrix_bytes, use_more_bits
from profiler.predict.formulas import (
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    lora_parameter_count,
    parameter_count,
    weight_bytes,
)
from profiler.predict.modelshape import shape_from_config
from profiler.predict.presets import find_preset, load_preset, preset_names
from profiler.units import GiB, KiB

REQUIRED = [
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "qwen2.5-72b",
    "gemma-2-9b",
    "phi-3-mini",
    "gpt2",
]


def shape(name: str):
    return shape_from_config(load_preset(name), name=name)


def test_required_presets_ship() -> None:
    assert set(REQUIRED) <= set(preset_names())
    assert len(preset_names()) >= 12


@pytest.mark.parametrize("name", REQUIRED + ["llama-3.1-8b", "gpt2-xl"])
def test_parameter_count_matches_the_real_model(name: str) -> None:
    # The declared figures are the models' published parameter counts.
    assert parameter_count(shape(name)) == load_preset(name)["parameters"]


def test_known_parameter_counts() -> None:
    assert parameter_count(shape("llama-2-7b")) == 6_738_415_616
    assert parameter_count(shape("llama-3-8b")) == 8_030_261_248
    assert parameter_count(shape("gpt2")) == 124_439_808
    assert parameter_count(shape("mixtral-8x7b")) == 46_702_792_704


def test_kv_cache_llama2_7b_is_512_kib_per_token() -> None:
    s = shape("llama-2-7b")
    assert kv_cache_bytes_per_token(s, 2) == 512 * KiB
    assert kv_cache_bytes(s, tokens=8192, batch=1, dtype_bytes=2) == 4 * GiB


def test_kv_cache_llama3_8b_honours_gqa() -> None:
    s = shape("llama-3-8b")
    # 2 x 32 layers x 8 KV heads x 128 x 2 bytes; a calculator using 32 heads says 512 KiB.
    assert kv_cache_bytes_per_token(s, 2) == 128 * KiB
    assert kv_cache_bytes(s, tokens=8192, batch=4, dtype_bytes=2) == 4 * GiB


def test_kv_cache_llama2_70b_gqa_and_mqa() -> None:
    assert kv_cache_bytes_per_token(shape("llama-2-70b"), 2) == 2 * 80 * 8 * 128 * 2
    mqa = shape_from_config(
        {
            "hidden_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 8,
            "num_key_value_heads": 1,
            "vocab_size": 10,
        }
    )
    assert kv_cache_bytes(mqa, tokens=100, batch=2, dtype_bytes=2) == 2 * 3 * 1 * 32 * 100 * 2 * 2


def test_kv_cache_sliding_window_caps_mistral() -> None:
    s = shape("mistral-7b")
    per_token = 128 * KiB
    assert kv_cache_bytes(s, tokens=4096, dtype_bytes=2) == 4096 * per_token
    assert kv_cache_bytes(s, tokens=32768, dtype_bytes=2) == 4096 * per_token


def test_kv_cache_gemma2_alternates_sliding_and_global_layers() -> None:
    s = shape("gemma-2-9b")
    assert s.layer_windows[:2] == (4096, None)
    per_layer_token = 2 * 8 * 256 * 2
    expected = 21 * 8192 * per_layer_token + 21 * 4096 * per_layer_token
    assert kv_cache_bytes(s, tokens=8192, dtype_bytes=2) == expected


def test_qwen_declares_no_sliding_window() -> None:
    assert set(shape("qwen2.5-7b").layer_windows) == {None}


def test_dense_and_seed_formats() -> None:
    s = shape("llama-2-7b")
    n = 6_738_415_616
    assert weight_bytes(s, find_format("fp16")) == 2 * n
    assert weight_bytes(s, find_format("fp32")) == 4 * n
    assert weight_bytes(s, find_format("int8")) == n
    assert weight_bytes(s, find_format("int4")) == n // 2


def test_gptq_matrix_layout() -> None:
    fmt = find_format("gptq")
    # 4096 x 4096, group 128: qweight n/2, qzeros 32 x 4096/2, scales 32 x 4096 x 2, g_idx 4096 x 4
    assert matrix_bytes(fmt, 4096, 4096) == 8_388_608 + 65_536 + 262_144 + 16_384
    awq = find_format("awq")
    assert matrix_bytes(awq, 4096, 4096) == 8_388_608 + 65_536 + 262_144


def test_gptq_keeps_embeddings_and_head_in_fp16() -> None:
    s = shape("llama-2-7b")
    embed_and_head = 2 * 32000 * 4096 * 2
    small = (32 * 2 * 4096 + 4096) * 2
    matrices = 32 * sum(
        matrix_bytes(find_format("gptq"), i, o)
        for i, o in [(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)]
    )
    assert weight_bytes(s, find_format("gptq")) == embed_and_head + small + matrices


def test_nf4_block_layout() -> None:
    n = 4096 * 4096
    plain = matrix_bytes(find_format("nf4"), 4096, 4096)
    assert plain == n // 2 + 64 + (n // 64) * 4  # 4 bits + fp32 absmax per 64 + NF4 code
    dq = matrix_bytes(find_format("nf4-dq"), 4096, 4096)
    blocks = n // 64
    assert dq == n // 2 + 64 + blocks + (blocks // 256) * 4 + 1024 + 4
    assert (plain - n // 2) * 8 / n == pytest.approx(0.5, abs=0.001)
    assert (dq - n // 2) * 8 / n == pytest.approx(0.127, abs=0.002)


def test_gguf_bits_per_weight_over_llama2_7b() -> None:
    s = shape("llama-2-7b")
    n = parameter_count(s)
    bpw = {f: weight_bytes(s, find_format(f)) * 8 / n for f in ("q8_0", "q5_k_m", "q4_k_m")}
    assert bpw["q8_0"] == pytest.approx(8.5, abs=0.01)
    assert bpw["q5_k_m"] == pytest.approx(5.68, abs=0.02)
    assert bpw["q4_k_m"] == pytest.approx(4.84, abs=0.02)
    # llama.cpp's published file is 4,081,004,224 bytes with metadata and vocabulary.
    assert abs(weight_bytes(s, find_format("q4_k_m")) - 4_081_004_224) < 2_000_000


def test_use_more_bits_picks_llama_cpp_layers() -> None:
    picked = [i for i in range(32) if use_more_bits(i, 32)]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_lora_parameter_count() -> None:
    s = shape("llama-2-7b")
    qv = 32 * 16 * ((4096 + 4096) * 2)
    assert lora_parameter_count(s, 16, "qv") == qv
    all_linear = 32 * 16 * ((4096 + 4096) * 4 + (4096 + 11008) * 3)
    assert lora_parameter_count(s, 16) == all_linear


def test_find_format_aliases_and_errors() -> None:
    assert find_format("GPTQ-4bit").name == "gptq"
    assert find_format("Q4_K_M").name == "q4_k_m"
    assert find_format("bnb-nf4").name == "nf4"
    with pytest.raises(UnknownNameError) as info:
        find_format("int3")
    assert info.value.exit_code == 2
    assert "int4" in info.value.suggestions


def test_preset_lookup_and_suggestions() -> None:
    assert find_preset("Llama-2-7B") == "llama-2-7b"
    assert find_preset("meta-llama/Meta-Llama-3-8B") == "llama-3-8b"
    with pytest.raises(UnknownNameError) as info:
        find_preset("llama-2-8b")
    assert "llama-2-7b" in info.value.suggestions


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10}, "hidden_size"),
        (
            {"hidden_size": 64, "num_hidden_layers": 0, "num_attention_heads": 4, "vocab_size": 10},
            "positive",
        ),
        (
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "vocab_size": 10,
            },
            "multiple",
        ),
        (
            {
                "hidden_size": 64,
                "num_hidden_layers": "two",
                "num_attention_heads": 4,
                "vocab_size": 10,
            },
            "whole number",
        ),
    ],
)
def test_bad_configs_raise_config_error(config: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        shape_from_config(config)


def test_config_file_errors(tmp_path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        shape_from_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        shape_from_config(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        shape_from_config(tmp_path)


def test_gguf_mixtral_matches_published_files() -> None:
    # TheBloke/Mixtral-8x7B-v0.1-GGUF: Q4_K_M 26.44 GB, Q5_K_M 32.23 GB, Q8_0 49.62 GB (with
    # metadata). llama.cpp's _M mixes leave the expert tensors (ffn_*_exps) at the base type.
    s = shape("mixtral-8x7b")
    for fmt, published in (("q4_k_m", 26.44e9), ("q5_k_m", 32.23e9), ("q8_0", 49.62e9)):
        assert abs(weight_bytes(s, find_format(fmt)) - published) / published < 0.01


def test_gptq_and_awq_llama2_7b_match_published_files() -> None:
    # TheBloke/Llama-2-7B-GPTQ (4-bit, group 128, act-order) 3.90 GB; Llama-2-7B-AWQ 3.89 GB.
    s = shape("llama-2-7b")
    assert abs(weight_bytes(s, find_format("gptq")) - 3.90e9) / 3.90e9 < 0.01
    assert abs(weight_bytes(s, find_format("awq")) - 3.89e9) / 3.89e9 < 0.01
