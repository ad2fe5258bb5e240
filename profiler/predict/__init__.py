"""Predictions: formulas per category, model presets, the GPU catalog, estimates and dry runs.

Nothing here imports pandas at module level; DataFrames are built only when asked for.
"""

from __future__ import annotations
