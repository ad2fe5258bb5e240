"""The CUDA-only checks: every test marked ``gpu`` is skipped where CUDA is not available.

Run them on a CUDA machine with ``pytest tests/gpu -m gpu`` (or through the kit:
``python -m profiler.gpucheck``). ``torch.cuda.is_available()`` does not initialise CUDA in this
process, so the skip logic itself never starts a CUDA context.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch


def cuda_skip_reason() -> str | None:
    """Why the ``gpu`` tests cannot run here, or ``None`` where they can."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every ``gpu`` test skipped where there is no CUDA device."""
    reason = cuda_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_device() -> Iterator[torch.device]:
    """The current CUDA device, with the cache emptied before and after the test."""
    device = torch.device("cuda", torch.cuda.current_device())
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    yield device
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
