"""The GPU catalog: driver-reported memory and a forgiving lookup."""

from __future__ import annotations

import pytest
from spec import REQUIRED_GPUS

from profiler.errors import UnknownNameError
from profiler.predict.gpus import GPUS, find_gpu
from profiler.units import MiB


def test_catalog_has_the_required_gpus() -> None:
    names = {g.name for g in GPUS}
    assert set(REQUIRED_GPUS) <= names


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("rtx4090", "RTX 4090"),
        ("RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("4090", "RTX 4090"),
        ("h100", "H100 80GB"),
        ("a100-40gb", "A100 40GB"),
        ("A100_80GB", "A100 80GB"),
        ("h200", "H200 141GB"),
        ("mi300x", "MI300X"),
        ("l40s", "L40S"),
        ("L4", "L4"),
        ("a10", "A10"),
    ],
)
def test_find_gpu_spellings(spelling: str, name: str) -> None:
    assert find_gpu(spelling).name == name


def test_memory_is_what_the_driver_reports() -> None:
    assert find_gpu("rtx4090").memory_bytes == 24564 * MiB
    assert find_gpu("a10").memory_bytes == 23028 * MiB
    assert find_gpu("h100").memory_bytes == 81559 * MiB
    assert find_gpu("a100-80gb").memory_bytes == 81920 * MiB


def test_unknown_and_ambiguous_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        find_gpu("rtx9090")
    assert info.value.exit_code == 2
    assert "RTX 4090" in info.value.suggestions or "RTX 5090" in info.value.suggestions
    with pytest.raises(UnknownNameError) as ambiguous:
        find_gpu("a100")
    assert set(ambiguous.value.suggestions) == {"A100 40GB", "A100 80GB"}
