"""The kit's own logic, on the CPU: skip without CUDA, JSON shape, no textual, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.gpucheck import agreement, main, parse_pytest_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_kit_says_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-tests"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is None
    assert summary["skipped"] == "no CUDA device (torch.cuda.is_available() is False)"
    assert summary["env"]["cuda_available"] is False
    assert not torch.cuda.is_initialized()


_SMOKE = """
import sys
sys.modules["textual"] = None  # the GPU machine has no textual: any import of it fails
from profiler.gpucheck import main
sys.exit(main(["--device", "cpu", "--tiny", "--no-tests", "--workloads", "mlp_train",
               "--out", sys.argv[1]]))
"""


def test_cpu_smoke_run_without_textual(tmp_path: Path) -> None:
    out = tmp_path / "kit" / "summary.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _SMOKE, str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert json.loads(done.stdout) == summary
    assert summary["ok"] is True and summary["errors"] == {} and summary["checks"] == []
    assert summary["env"]["textual_imported"] is False
    assert list(summary["workloads"]) == ["mlp_train"]
    mlp = summary["workloads"]["mlp_train"]
    weights = 2 * (64 * 128 + 128 + 128 * 64 + 64) * 4
    for mode in ("exact", "fast"):
        row = mlp[mode]
        assert row["mode"] == "exact"  # off CUDA, fast mode measures in exact mode
        assert row["categories"]["weights"]["current"] == weights
        assert row["categories"]["gradients"]["peak"] == weights
        assert row["expected"] == {
            "weights": weights,
            "gradients": weights,
            "optimizer": 2 * weights,
        }
        assert row["expected_error"]["weights"] == 0.0
        assert (row["torch_max_allocated"], row["reference_peak"], row["error"]) == (
            None,
            None,
            None,
        )
        assert row["waterfall"]["device"] == "cpu"
        assert row["waterfall"]["categories"]["weights"] == weights
    assert set(mlp["overhead"]) == {
        "untracked_s_per_step",
        "fast_s_per_step",
        "exact_s_per_step",
        "fast_ratio",
        "exact_ratio",
    }
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temp left


def test_unknown_workload_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workloads", "mlp_train,resnet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "gpucheck: error: unknown workload 'resnet' (known: mlp_train, gpt2_train, gpt2_generate)\n"
    )


def test_bad_device_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "gpu0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpucheck: error: bad --device 'gpu0'") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("measured", "reference", "expected"),
    [(101, 100, 0.01), (99, 100, -0.01), (100, 100, 0.0), (None, 100, None), (5, 0, None)],
)
def test_agreement(measured: int | None, reference: int | None, expected: float | None) -> None:
    result = agreement(measured, reference)
    assert result == pytest.approx(expected) if expected is not None else result is None


def test_parse_pytest_output() -> None:
    text = (
        "....F.s\n"
        "FAILED tests/gpu/test_gpu_device_truth.py::test_real_oom_is_captured - assert 0 == 1\n"
        "==== 1 failed, 5 passed, 1 skipped, 2 deselected in 12.31s ====\n"
    )
    assert parse_pytest_output(text) == {
        "summary": "1 failed, 5 passed, 1 skipped, 2 deselected in 12.31s",
        "counts": {"failed": 1, "passed": 5, "skipped": 1, "deselected": 2},
        "failures": [
            "FAILED tests/gpu/test_gpu_device_truth.py::test_real_oom_is_captured - assert 0 == 1"
        ],
    }
    assert parse_pytest_output("") == {"summary": "", "counts": {}, "failures": []}


def test_agreement_checks_per_mode_and_figure() -> None:
    from profiler.gpucheck import Kit, _agreement_checks

    kit = Kit(torch.device("cpu"), tiny=True, budget=10)
    row = {
        "exact": {"error": 0.004, "peak": 1004, "reference_peak": 1000,
                  "current_error": -0.02, "current": 98, "reference_current": 100},
        "fast": None,
    }  # fmt: skip
    _agreement_checks(kit, "mlp_train", row)
    assert kit.checks == [
        {"name": "mlp_train:exact_peak_within_1pct", "ok": True, "error": 0.004,
         "engine": 1004, "torch": 1000},
        {"name": "mlp_train:exact_current_within_1pct", "ok": False, "error": -0.02,
         "engine": 98, "torch": 100},
    ]  # fmt: skip


def test_a_failing_section_is_recorded_and_the_budget_skips() -> None:
    from profiler.gpucheck import Kit

    kit = Kit(torch.device("cpu"), tiny=True, budget=3600)

    def broken() -> None:
        raise ValueError("no such thing")

    assert kit.section("segments", broken) is None
    assert kit.checks == [{"name": "segments", "ok": False, "error": "ValueError: no such thing"}]
    assert kit.errors["segments"].endswith("ValueError: no such thing")
    assert kit.section("fine", lambda: 7) == 7
    kit.budget = -1.0
    assert kit.section("late", lambda: 7) is None
    assert kit.errors["late"] == "skipped: the kit's -1 s budget is spent"
