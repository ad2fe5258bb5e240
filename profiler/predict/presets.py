"""Model presets: small JSON files of config facts for popular open models, shipped in the package.

Each file in ``presets/`` holds the Hugging Face config fields the formulas read, plus ``name``,
``display``, ``hf_id`` and the model's real ``parameters`` count (which the formulas reproduce
exactly; the tests check it).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from profiler.errors import ConfigError, UnknownNameError

__all__ = ["find_preset", "load_preset", "preset_names"]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower().removesuffix("-hf"))


@cache
def _all() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    folder = resources.files("profiler.predict").joinpath("presets")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"preset file {entry.name} is unreadable: {exc}") from None
        table[str(data.get("name") or entry.name[:-5])] = data
    return table


def preset_names() -> list[str]:
    """The names of every shipped preset, sorted."""
    return sorted(_all())


def find_preset(name: str) -> str:
    """The canonical preset name for ``name`` (``"Llama-2-7B"``, ``"llama2-7b"``, an HF id).

    Raises:
        UnknownNameError: no preset matches; the closest names are suggested.
    """
    wanted = _key(name)
    for preset, data in _all().items():
        if wanted in (
            _key(preset),
            _key(str(data.get("hf_id", ""))),
            _key(str(data.get("display", ""))),
        ):
            return preset
        hf_tail = str(data.get("hf_id", "")).rsplit("/", 1)[-1]
        if wanted == _key(hf_tail):
            return preset
    raise UnknownNameError("preset", name, preset_names())


def load_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's config dict (see :func:`find_preset` for accepted names)."""
    return dict(_all()[find_preset(name)])
