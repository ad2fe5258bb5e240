"""The pytest marker, run by pytest itself on a test file (pytester)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

#: 16 x 1024 float32 = 64 KiB per tensor.
TESTS = """
import pytest, torch

@pytest.mark.gpumem(max_peak="1 MiB")
def test_small():
    kept = [torch.ones(16, 1024) for _ in range(4)]   # 256 KiB
    assert len(kept) == 4

@pytest.mark.gpumem(max_peak="200 KiB")
def test_too_big():
    kept = [torch.ones(16, 1024) for _ in range(4)]   # 256 KiB
    assert len(kept) == 4

@pytest.mark.gpumem(max_category={"temporaries": "100 KiB"})
def test_one_category_over():
    kept = [torch.ones(16, 1024) for _ in range(2)]   # 128 KiB of temporaries
    assert len(kept) == 2

@pytest.mark.gpumem(max_peak="1 GB", max_category={"weights": "1x"})
def test_bad_limit():
    pass

def test_unmarked():
    torch.ones(1 << 20)
"""


def plugin_args() -> list[str]:
    """Load the plugin by name unless the installed package's entry point already does."""
    if any(ep.name == "gpumem" for ep in entry_points(group="pytest11")):
        return []
    return ["-p", "profiler.integrations.pytest_plugin"]


def test_limits_pass_fail_with_the_breakdown_and_reject_bad_input(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_memory=TESTS)
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=3)
    text = result.stdout.str()
    assert "gpumem: peak 256.00 KiB > max_peak 200.00 KiB" in text
    assert "temporaries peak 128.00 KiB > 100.00 KiB" in text
    assert "gpumem: test_too_big" in text  # the breakdown table follows
    assert "gpumem: " in text and "1x" in text  # the bad size is named, one line
    assert "Traceback" not in text


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(*plugin_args(), "--markers")
    assert "@pytest.mark.gpumem(max_peak=None" in result.stdout.str()
