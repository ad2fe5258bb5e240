"""``gpumem estimate``: tables, JSON, presets, GPU limits, and one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest
from spec import REQUIRED_GPUS

from profiler.cli import main
from profiler.cli.estimate import TABLE_GPUS
from profiler.predict.estimate import estimate
from profiler.predict.gpus import find_gpu
from profiler.predict.presets import load_preset
from profiler.records import Category


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table(capsys) -> None:
    code, out, err = run(capsys, "llama-2-7b", "--seq", "4096")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("llama-2-7b · inference · fp16 · batch 1 · context 4096")
    for name in ("weights", "kv_cache", "activations", "CUDA context", "allocator margin", "total"):
        assert any(line.startswith(name) for line in lines), name
    kv = next(line for line in lines if line.startswith("kv_cache"))
    assert kv.split()[1] == "2.15"  # 4096 x 512 KiB = 2 GiB = 2.15 GB
    for gpu in REQUIRED_GPUS:
        row = next(line for line in lines if line.startswith(gpu + " "))
        assert row.endswith("yes") or row.endswith("no")
    assert next(line for line in lines if line.startswith("RTX 3090 ")).endswith("yes")


def test_json_output(capsys) -> None:
    code, out, _ = run(capsys, "llama-3-8b", "--precision", "bf16", "--batch", "2", "--json")
    assert code == 0
    data = json.loads(out)
    expected = estimate("llama-3-8b", precision="bf16", batch=2)
    assert data["total_bytes"] == expected.total
    assert data["categories"] == {str(c): b for c, b in expected.categories.items()}
    assert data["categories"]["kv_cache"] == 2 * 2048 * 128 * 1024
    assert set(data["overheads"]) == {"CUDA context", "allocator margin"}
    names = [g["name"] for g in data["gpus"]]
    assert names == list(TABLE_GPUS) and set(REQUIRED_GPUS) <= set(names)
    for g in data["gpus"]:
        spec = find_gpu(g["name"])
        assert g["memory_bytes"] == spec.memory_bytes
        assert g["fits"] == expected.fits(spec)


def test_seed_training_from_a_parameter_count(capsys) -> None:
    code, out, _ = run(capsys, "7B", "--mode", "train", "--precision", "fp16", "--json")
    assert code == 0
    cats = json.loads(out)["categories"]
    assert (cats["weights"], cats["gradients"], cats["optimizer"]) == (14e9, 14e9, 56e9)


def test_list(capsys) -> None:
    code, out, _ = run(capsys, "--list")
    assert code == 0
    for name in ("llama-2-7b", "llama-2-70b", "mixtral-8x7b", "qwen2.5-72b", "gemma-2-9b", "gpt2"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    code, out, _ = run(capsys, "--list", "--json")
    presets = {p["name"]: p for p in json.loads(out)["presets"]}
    assert presets["llama-3-8b"]["kv_bytes_per_token_fp16"] == 128 * 1024
    assert presets["llama-2-7b"]["parameters"] == 6_738_415_616


def test_gpu_limits(capsys) -> None:
    code, out, _ = run(capsys, "llama-3-8b", "--gpu", "RTX 4090", "--seq", "1024", "--json")
    assert code == 0
    limits = json.loads(out)["limits"]
    assert limits["gpu"] == "RTX 4090"
    best = limits["max_batch"]
    assert estimate("llama-3-8b", batch=best, seq=1024).fits("rtx4090")
    assert not estimate("llama-3-8b", batch=best + 1, seq=1024).fits("rtx4090")
    longest = limits["max_seq"]
    assert longest == 8192  # fits up to the model's own limit
    code, out, _ = run(capsys, "llama-2-13b", "--gpu", "rtx3090", "--seq", "1024")
    assert "largest batch at context 1024: none fits" in out


def _one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpumem estimate: error: ")
    return err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("lama-2-7b",), "did you mean llama-2-7b"),
        (("llama-2-7b", "--batch", "0"), "batch must be positive"),
        (("llama-2-7b", "--batch", "-4"), "batch must be positive"),
        (("llama-2-7b", "--batch", "two"), "whole number"),
        (("llama-2-7b", "--seq", "0"), "seq must be positive"),
        (("llama-2-7b", "--mode", "qlora", "--precision", "fp32"), "4-bit"),
        (("llama-2-7b", "--precision", "int3"), "unknown precision"),
        (("llama-2-7b", "--gpu", "rtx9090"), "unknown GPU"),
        (("llama-2-7b", "--optimizer", "adam2"), "unknown optimizer"),
        ((), "needs a MODEL"),
        (("llama-2-7b", "--mode", "train", "--optimizer-dtype", "fp13"), "optimizer dtype"),
        (("llama-2-7b", "--lora-rank", "0", "--mode", "lora"), "lora rank must be positive"),
        (("llama-2-7b", "--attention", "paged"), "attention implementation"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv: tuple[str, ...], fragment: str) -> None:
    assert fragment in _one_line_error(capsys, *argv)


def test_malformed_and_incomplete_configs(capsys, tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"hidden_size": 4096,')
    assert "not valid JSON" in _one_line_error(capsys, str(broken))
    partial = tmp_path / "partial.json"
    partial.write_text('{"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 100}')
    assert "lacks num_hidden_layers" in _one_line_error(capsys, str(partial))
    negative = tmp_path / "negative.json"
    negative.write_text(
        '{"hidden_size": -1, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 9}'
    )
    assert "must be positive" in _one_line_error(capsys, str(negative))


def test_table_says_where_each_figure_comes_from(capsys, tmp_path) -> None:
    code, out, _ = run(capsys, "llama-3-8b", "--seq", "1024")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == ""
    assert lines[2].startswith("source: measured on the real class (LlamaForCausalLM")
    assert next(line for line in lines if line.startswith("weights")).endswith("measured")
    assert next(line for line in lines if line.startswith("activations")).endswith(
        "measured (dry run of the real class on fake tensors)"
    )
    code, out, _ = run(capsys, "llama-3-8b", "--seq", "1024", "--formulas")
    assert next(line for line in out.splitlines() if line.startswith("activations")).endswith(
        "approximate (formulas)"
    )
    # a model_type transformers does not know: the formulas, and every line says so
    facts = {k: v for k, v in load_preset("llama-3-8b").items() if k != "model_type"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**facts, "model_type": "my_private_llama"}))
    code, out, _ = run(capsys, str(path), "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "approximate (formulas)"
    assert set(data["sources"].values()) == {"approximate (formulas)"}
    assert data["parameters"] == facts["parameters"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"model_type": "llama", "num_hidden_layers": 5000}, "num_hidden_layers"),
        (
            {
                "model_type": "mistral",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 3,
                "num_hidden_layers": 2,
                "vocab_size": 100,
            },
            "transformers could not",
        ),
        ({"model_type": "my_moe", "hidden_size": 64, "moe_intermediate_size": 8}, "expert"),
    ],
)
def test_configs_the_real_class_or_the_formulas_refuse_are_one_line(
    capsys, tmp_path, config: dict, fragment: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    # the default dry-run step and the --gpu search keep the one-line error
    for extra in ((), ("--mode", "train", "--gpu", "h100")):
        code, out, err = run(capsys, str(path), *extra)
        assert code == 2 and out == ""
        assert err.startswith("gpumem estimate: error: ") and fragment in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_the_step_is_dry_run_by_default_and_formulas_on_request(capsys, tmp_path) -> None:
    config = {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    argv = (str(path), "--mode", "train", "-p", "bf16", "-b", "2", "-s", "16", "--json")
    code, out, _ = run(capsys, *argv)
    data = json.loads(out)
    assert code == 0
    expected = estimate(config, mode="train", precision="bf16", batch=2, seq=16)
    assert data["categories"] == {str(c): b for c, b in expected.categories.items()}
    assert data["sources"]["activations"].startswith("measured (dry run")
    code, out, _ = run(capsys, *argv, "--measure-step")  # the default, kept as a flag
    assert json.loads(out)["categories"] == data["categories"]
    code, out, _ = run(capsys, *argv, "--formulas")
    formulas = json.loads(out)
    assert formulas["sources"]["activations"] == "approximate (formulas)"
    shown = estimate(config, mode="train", precision="bf16", batch=2, seq=16, measure_step=False)
    assert formulas["categories"]["activations"] == shown.categories[Category.ACTIVATIONS]
    assert "exclude each other" in _one_line_error(capsys, *argv, "--formulas", "--measure-step")
