"""The recipes in recipes/oom run on CPU: the run dies, and fits after its top suggestion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "oom"


@pytest.fixture(autouse=True)
def recipes_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GPUMEM_HOME", str(tmp_path / "home"))
    monkeypatch.syspath_prepend(str(RECIPES))
    yield
    for name in ("die_on_small_gpu", "fit_with_top_suggestion"):
        sys.modules.pop(name, None)


@pytest.mark.filterwarnings("ignore:gpumem. out of memory; report written to")
def test_dies_then_fits_with_the_top_suggestion(capsys, tmp_path: Path):
    import die_on_small_gpu
    import fit_with_top_suggestion

    assert die_on_small_gpu.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("out of memory, as expected: Simulated device out of memory.")
    assert "failed in backward of step 1" in out
    assert "  1. [checkpointing] Turn on activation checkpointing in the 6 repeated layers" in out
    reports = list((tmp_path / "home" / "sessions").glob("*/oom_report.json"))
    assert len(reports) == 1

    assert fit_with_top_suggestion.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("2. applying: Turn on activation checkpointing")
    assert lines[2].startswith("3. it fits: measured peak ")
    assert lines[2].endswith("of 28MiB (3 steps, batch 1024 x 1)")
