"""Predictions: formulas per category, model presets, the GPU catalog and estimates.

* :func:`estimate` — bytes per category before a run (model, config, preset or a size).
* :func:`predict_tracked` — what the tracker fills its ``predicted`` column with.
* :func:`compare` — predicted vs measured per category, with the likely cause of each gap.
* :data:`GPUS` / :func:`find_gpu` — the GPU catalog; :func:`preset_names` — the model presets.

Nothing here imports pandas at module level; DataFrames are built only when asked for.
"""

from __future__ import annotations

from profiler.predict.compare import compare
from profiler.predict.estimate import Estimate, Overhead, estimate
from profiler.predict.formats import FORMATS, WeightFormat, find_format
from profiler.predict.formulas import kv_cache_bytes, kv_cache_bytes_per_token, parameter_count
from profiler.predict.gpus import GPUS, GpuSpec, find_gpu
from profiler.predict.modelshape import ModelShape, shape_from_config
from profiler.predict.presets import find_preset, load_preset, preset_names
from profiler.predict.tracked import predict_tracked

__all__ = [
    "FORMATS",
    "GPUS",
    "Estimate",
    "GpuSpec",
    "ModelShape",
    "Overhead",
    "WeightFormat",
    "compare",
    "estimate",
    "find_format",
    "find_gpu",
    "find_preset",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "load_preset",
    "parameter_count",
    "predict_tracked",
    "preset_names",
    "shape_from_config",
]
