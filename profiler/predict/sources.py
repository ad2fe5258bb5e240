"""Where an estimate's figures come from: a model, a config, a preset, a Hub id or a count.

:func:`resolve` turns what the user passed into a :class:`Source`: the parameter count, the
formulas' :class:`~profiler.predict.modelshape.ModelShape` where the formulas understand the
architecture, and a :class:`~profiler.predict.measured.MeasuredModel` where transformers knows
the ``model_type`` (the figures are then measured on the real class). A Hugging Face model id is
resolved through ``huggingface_hub`` to its ``config.json`` only (never weights), honouring
``HF_HUB_OFFLINE`` and the Hugging Face cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from profiler.errors import ConfigError, UnknownNameError, UsageError
from profiler.predict.measured import MeasuredModel, knows, measure_config, measure_module
from profiler.predict.modelshape import ModelShape, load_config, shape_from_config
from profiler.text import printable

__all__ = ["APPROXIMATE", "Source", "hub_config", "resolve"]

#: How an output labels figures that come from the formulas.
APPROXIMATE = "approximate (formulas)"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass(frozen=True, slots=True)
class Source:
    """The model an estimate describes, and how its figures are obtained."""

    name: str
    shape: ModelShape | None
    parameters: int
    module: Any = None
    measured: MeasuredModel | None = None
    label: str = APPROXIMATE
    config: dict[str, Any] | None = None

    @property
    def max_positions(self) -> int | None:
        """The model's longest context, from the real config class or the config."""
        if self.measured is not None and self.measured.max_positions:
            return self.measured.max_positions
        return self.shape.max_positions if self.shape is not None else None


def _measured_label(measured: MeasuredModel) -> str:
    import transformers

    return (
        f"measured on the real class ({measured.class_name}, transformers "
        f"{transformers.__version__}, meta device)"
    )


def from_config(config: Mapping[str, Any], name: str) -> Source:
    """A source for a config dict: measured where transformers knows it, else the formulas."""
    if knows(config):
        measured = measure_config(config)
        try:
            shape: ModelShape | None = shape_from_config(config, name=name)
        except ConfigError:
            shape = None  # beyond the formulas: activations are not estimated
        label = _measured_label(measured)
        return Source(name, shape, measured.parameters, None, measured, label, dict(config))
    from profiler.predict.formulas import parameter_count

    shape = shape_from_config(config, name=name)
    return Source(name, shape, parameter_count(shape))


def from_module(module: Any) -> Source:
    """A source for a live (or meta) module: every figure from the module tree."""
    from dataclasses import replace

    from profiler.predict.modelshape import shape_from_module

    measured = measure_module(module)
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = getattr(base, "config", None)
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else None
    label = f"measured on the module ({type(module).__name__})"
    config_dict = None
    if isinstance(data, dict) and knows(data):
        keep = ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype")
        config_dict = {k: v for k, v in data.items() if k not in keep}
        try:
            built = measure_config(config_dict)
        except ConfigError:
            built = None
        if built is not None:
            measured = replace(
                measured,
                kv_per_token=built.kv_per_token,
                kv_constant=built.kv_constant,
                state_elements=built.state_elements,
                max_positions=built.max_positions,
                windows=built.windows,
            )
            label += f"; KV cache measured on {built.class_name} (meta device)"
    shape = shape_from_module(module)
    name = type(module).__name__
    return Source(name, shape, measured.parameters, module, measured, label, config_dict)


def hub_config(repo_id: str) -> dict[str, Any]:
    """The ``config.json`` of a Hub model (from the cache if there, else downloaded; never weights).

    Not in the cache and not offline, one metadata request with a :data:`HUB_TIMEOUT` timeout
    and no retries comes first, so an unreachable Hub is one line in seconds.

    Raises:
        ConfigError: huggingface_hub missing, offline without a cached config, no such repo.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConfigError(
            f"{printable(repo_id, limit=80)!r} looks like a Hub id, but huggingface_hub is "
            "not installed",
            hint="pip install huggingface_hub, or pass a path to config.json",
        ) from None
    import logging

    from huggingface_hub import constants, try_to_load_from_cache

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.CRITICAL)  # its retry warnings would break the one-line error
    try:
        cached = try_to_load_from_cache(repo_id=repo_id, filename="config.json")
        if isinstance(cached, str):
            path = cached
        else:
            if not constants.is_offline_mode():
                _reachable(repo_id)  # one try: hf_hub_download retries for ~25 s unreachable
            path = hf_hub_download(repo_id, "config.json", etag_timeout=HUB_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - offline, not found, gated, network: one line
        reason = type(exc).__name__
        raise ConfigError(
            f"cannot get the config of {printable(repo_id, limit=80)!r} from the Hub ({reason})",
            hint="check the id and the network; offline (HF_HUB_OFFLINE=1) it must be in the "
            "Hugging Face cache",
        ) from None
    finally:
        hub_logger.setLevel(level)
    return load_config(path)


#: Seconds to wait for the Hub to answer (one try, no retries) before a one-line error.
HUB_TIMEOUT = 3.0


def _reachable(repo_id: str) -> None:
    """One metadata request for the config, with a short timeout and no retries (raises)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT)


def resolve(source: Any, params: int | float | None) -> Source:
    """The :class:`Source` for what ``estimate()`` was given."""
    from profiler.predict.presets import find_preset, load_preset

    if params is not None:
        if isinstance(params, bool) or not isinstance(params, int | float) or params <= 0:
            raise UsageError(f"params must be a positive number, got {params!r}")
        count = int(params)
        return Source(format_count(count), None, count)
    if source is None:
        raise UsageError("estimate needs a model, a config, a preset name or params=")
    if isinstance(source, int | float) and not isinstance(source, bool):
        return resolve(None, source)
    if isinstance(source, Mapping):
        config = dict(source)
        return from_config(config, str(config.get("_name_or_path") or config.get("model_type")))
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if os.path.exists(text) or text.endswith(".json"):
            return from_config(load_config(text), os.path.basename(text.rstrip("/")))
        try:
            preset = find_preset(text)
        except UnknownNameError:
            if _REPO_ID.match(text):
                return from_config(hub_config(text), text)
            raise
        return from_config(load_preset(preset), preset)
    if callable(getattr(source, "parameters", None)):
        return from_module(source)
    raise UsageError(f"cannot estimate {type(source).__name__!r}: pass a model, config or preset")


def format_count(count: int) -> str:
    """``7e9`` as ``"7B parameters"``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:g}{unit} parameters"
    return f"{count} parameters"
