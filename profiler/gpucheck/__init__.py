"""The GPU check kit: run gpumem against a real CUDA device and print a JSON summary.

Run it on a CUDA machine (needs only torch, nvidia-ml-py, psutil and pandas; transformers for the
transformer workloads; no textual, no network), from the repository root::

    PYTHONPATH=. python -m profiler.gpucheck --out gpucheck.json

It finishes in about two minutes on an H100 (a 4-minute budget skips what is left) and prints:

- per workload (MLP training, GPT-2 training, GPT-2 generation with a KV cache), in exact and
  fast mode: the engine's peak and categories vs ``torch.cuda.max_memory_allocated`` vs NVML;
- the device waterfall (NVML → outside PyTorch → reserved → cached free → allocated →
  categories);
- the fast-mode (and exact-mode) overhead ratio per workload (tracked / untracked step time);
- the segment map against the allocator's reserved bytes, memory-history recording, NVML's view
  and the cost of one NVML reading;
- a deliberately forced real out-of-memory error and whether gpumem captured it;
- the result of ``pytest tests/gpu -m gpu`` (run in a subprocess; ``--no-tests`` skips it).

Exit code 0 when every check passes (or there is no CUDA device: the summary says "skipped"),
1 when a check fails. ``--device cpu --tiny`` runs the same code paths on the CPU in seconds (a
smoke test of the kit itself; the CUDA-only checks are skipped).
"""

from __future__ import annotations

from profiler.gpucheck.kit import Kit, agreement
from profiler.gpucheck.run import _agreement_checks, main, parse_pytest_output, run_kit
from profiler.gpucheck.workloads import TOLERANCE, Workload, workloads

__all__ = [
    "TOLERANCE",
    "Kit",
    "Workload",
    "_agreement_checks",
    "agreement",
    "main",
    "parse_pytest_output",
    "run_kit",
    "workloads",
]
