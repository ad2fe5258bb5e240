"""The engine's recipes run as documented (recipes/README.md), on CPU."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_measure_generation_kv_cache_matches_the_formula(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("transformers")
    recipe = runpy.run_path(str(RECIPES / "measure_generation.py"))
    assert recipe["main"](new_tokens=8, batch=2, prompt=4) == 0  # measured == formula
    assert "KV cache: measured 88.00 KiB, formula 88.00 KiB" in capsys.readouterr().out


def test_measure_training_prints_the_table_modules_timeline_and_comparison() -> None:
    pytest.importorskip("transformers")  # the GPT-2 whose weights are 14.26 MiB
    root = RECIPES.parent
    result = subprocess.run(
        [sys.executable, str(RECIPES / "measure_training.py"), "--steps", "2"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        cwd=root,
        timeout=300,
    )
    out = result.stdout
    for heading in (
        "category          current",
        "modules saving the most activations:",
        "one step, sample by sample (bytes):",
        "predicted vs measured:",
    ):
        assert heading in out
    assert "weights         14.26 MiB    14.26 MiB    14.26 MiB    14.26 MiB    +0.0%" in out
