"""The GPU catalog: usable memory per card, and a forgiving name lookup.

Convention: ``memory_bytes`` is the total the driver reports for one device, the figure that
``nvidia-smi`` prints in MiB (and ``torch.cuda.mem_get_info()[1]`` returns in bytes), **not** the
marketing figure. An RTX 4090 sold as "24 GB" reports 24564 MiB; an A10 with ECC on reports
23028 MiB; an H100 80GB HBM3 reports 81559 MiB. ``marketing_gb`` keeps the number on the box.
The MI300X figure is what ``rocm-smi`` reports as VRAM total.

``context_bytes`` is a typical CUDA context (driver state, kernels and cuBLAS/cuDNN workspaces
loaded by a PyTorch process) on that generation: memory NVML counts against the process that
the caching allocator never sees. It is an estimate and shows as its own line in estimates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from profiler.errors import UnknownNameError

__all__ = ["GPUS", "GpuSpec", "find_gpu"]

_MIB = 1024**2


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU model: its name, the memory the driver reports, and lookup aliases."""

    name: str
    memory_bytes: int
    marketing_gb: int
    vendor: str = "NVIDIA"
    architecture: str = ""
    context_bytes: int = 512 * _MIB
    aliases: tuple[str, ...] = ()


def _mib(n: int) -> int:
    return n * _MIB


#: Every GPU the estimator knows, smallest memory first within a vendor.
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("T4", _mib(15360), 16, architecture="Turing", context_bytes=320 * _MIB),
    GpuSpec("RTX 3060", _mib(12288), 12, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("RTX 4080", _mib(16376), 16, architecture="Ada", context_bytes=448 * _MIB),
    GpuSpec("V100 16GB", _mib(16160), 16, architecture="Volta", context_bytes=320 * _MIB),
    GpuSpec("V100 32GB", _mib(32510), 32, architecture="Volta", context_bytes=320 * _MIB),
    GpuSpec("RTX 3090", _mib(24576), 24, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("RTX 4090", _mib(24564), 24, architecture="Ada", context_bytes=448 * _MIB),
    GpuSpec("RTX 5090", _mib(32607), 32, architecture="Blackwell", context_bytes=512 * _MIB),
    GpuSpec("A10", _mib(23028), 24, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("A10G", _mib(23028), 24, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("L4", _mib(23034), 24, architecture="Ada", context_bytes=448 * _MIB),
    GpuSpec("RTX A6000", _mib(49140), 48, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("RTX 6000 Ada", _mib(49140), 48, architecture="Ada", context_bytes=448 * _MIB),
    GpuSpec("A40", _mib(46068), 48, architecture="Ampere", context_bytes=384 * _MIB),
    GpuSpec("L40S", _mib(46068), 48, architecture="Ada", context_bytes=448 * _MIB),
    GpuSpec("A100 40GB", _mib(40960), 40, architecture="Ampere", context_bytes=448 * _MIB),
    GpuSpec("A100 80GB", _mib(81920), 80, architecture="Ampere", context_bytes=448 * _MIB),
    GpuSpec("H100 80GB", _mib(81559), 80, architecture="Hopper", aliases=("h100", "h100sxm")),
    GpuSpec("H100 NVL", _mib(95830), 94, architecture="Hopper", aliases=("h100nvl94gb",)),
    GpuSpec("H200 141GB", _mib(143771), 141, architecture="Hopper", aliases=("h200",)),
    GpuSpec("B200", _mib(183359), 180, architecture="Blackwell", context_bytes=640 * _MIB),
    GpuSpec(
        "MI300X",
        205_822_885_888,
        192,
        vendor="AMD",
        architecture="CDNA3",
        context_bytes=512 * _MIB,
    ),
)

_NOISE = ("nvidia", "geforce", "amd", "instinct", "tesla")


def _key(name: str) -> str:
    """Lower-case, vendor words and punctuation dropped: ``"NVIDIA RTX-4090"`` → ``"rtx4090"``."""
    text = name.lower()
    for word in _NOISE:
        text = text.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", text)


def _index() -> dict[str, GpuSpec]:
    table: dict[str, GpuSpec] = {}
    for gpu in GPUS:
        keys = {_key(gpu.name), *(_key(a) for a in gpu.aliases)}
        full = _key(gpu.name)
        if full.startswith("rtx"):
            keys.add(full[3:])  # "4090"
        if full.endswith("gb"):
            keys.add(full.removesuffix("gb"))  # "a10040"
        for key in keys:
            table.setdefault(key, gpu)
    return table


_INDEX = _index()


def find_gpu(name: str) -> GpuSpec:
    """The catalog entry for ``name``, forgiving of case, spaces, dashes and vendor words.

    ``"rtx4090"``, ``"RTX 4090"``, ``"NVIDIA GeForce RTX 4090"``, ``"h100"`` and ``"a100-40gb"``
    all resolve. A name that is the prefix of exactly one entry resolves to it.

    Raises:
        UnknownNameError: no entry matches, or a prefix matches several (``"a100"``).
    """
    key = _key(name)
    if key in _INDEX:
        return _INDEX[key]
    if key:
        hits = {gpu.name: gpu for k, gpu in _INDEX.items() if k.startswith(key)}
        if len(hits) == 1:
            return next(iter(hits.values()))
        if hits:
            raise UnknownNameError("GPU", name, sorted(hits))
    raise UnknownNameError("GPU", name, [gpu.name for gpu in GPUS])
