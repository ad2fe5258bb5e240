"""The OOM message parser, on torch's real CUDA out-of-memory messages (no GPU needed)."""

from __future__ import annotations

import pytest

from profiler.tracking.capture import parse_cuda_oom

KiB, MiB, GiB = 1024, 1024**2, 1024**3

# The wording of c10/cuda/CUDACachingAllocator.cpp (torch 2.1 and later); sizes come from its
# format_size: "N bytes" up to 1 KiB, then KiB, MiB, GiB with two decimals.
H100 = (
    "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.10 GiB "
    "of which 3.12 MiB is free. Including non-PyTorch memory, this process has 79.09 GiB memory "
    "in use. Of the allocated memory 77.91 GiB is allocated by PyTorch, and 691.08 MiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
    "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
T4 = (
    "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 1 has a total capacity of 14.75 GiB of "
    "which 512 bytes is free. Process 4242 has 14.74 GiB memory in use. Of the allocated memory "
    "13.20 GiB is allocated by PyTorch, and 1.41 GiB is reserved by PyTorch but unallocated."
)
SMALL = (
    "CUDA out of memory. Tried to allocate 768.00 KiB. GPU 0 has a total capacity of 23.64 GiB "
    "of which 0 bytes is free."
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (H100, (20 * MiB, int(79.10 * GiB), int(3.12 * MiB))),
        (T4, (int(2.50 * GiB), int(14.75 * GiB), 512)),
        (SMALL, (768 * KiB, int(23.64 * GiB), 0)),
    ],
)
def test_real_messages_in_bytes_kib_mib_and_gib(message: str, expected: tuple[int, int, int]):
    assert parse_cuda_oom(message) == expected


def test_what_a_message_does_not_say_is_none():
    assert parse_cuda_oom("CUDA error: out of memory") == (None, None, None)
    assert parse_cuda_oom("Tried to allocate 1.00 GiB.") == (GiB, None, None)
    assert parse_cuda_oom("") == (None, None, None)


def test_huge_or_odd_numbers_never_raise():
    assert parse_cuda_oom("Tried to allocate " + "9" * 400 + ".00 GiB.")[0] is None
    assert parse_cuda_oom("Tried to allocate 1e5 GiB. of which -3 MiB is free") == (
        None,
        None,
        None,
    )
