"""What the issues require, written once for the tests that check it."""

from __future__ import annotations

#: The GPUs `gpumem estimate` must cover (issue 3, part 4).
REQUIRED_GPUS = (
    "RTX 3090",
    "RTX 4090",
    "RTX 5090",
    "A10",
    "L4",
    "L40S",
    "A100 40GB",
    "A100 80GB",
    "H100 80GB",
    "H200 141GB",
    "B200",
    "MI300X",
)
