"""Measurements on the real model class: transformers builds the model on the meta device.

For a config whose ``model_type`` transformers knows, the model is built with
``AutoModelForCausalLM.from_config`` under ``torch.device("meta")`` (no memory, no download),
weights tied as the class ties them, and every figure is read off that module:

* **parameters**: the unique parameters of the module tree (a tied head counted once);
* **weights per format**: each ``nn.Linear`` (and GPT-2 ``Conv1D``) weight inside the blocks is
  a quantisable matrix, 3-D expert tensors are that many matrices, embeddings and an untied
  ``lm_head`` are what formats keep in 16-bit (GGUF: a tied table is stored once, as llama.cpp
  stores ``token_embd`` when there is no ``output``), everything else (norms, biases, routers,
  convolutions, SSM parameters) stays as the format keeps small tensors;
* **KV cache and SSM state**: the model's own forward runs on meta tensors with its own cache
  class after prefills of two lengths; the elements of every storage the cache holds are counted
  (a ``DynamicSlidingWindowLayer`` keeps the whole prompt after a prefill: counted as held), split
  into key/value tensors (per token) and recurrent/convolution states (constant), and the linear
  fit is checked against a third prefill at another batch size. MoE expert modules are skipped
  in that forward (their routing needs values; they write nothing to the cache).

Results are cached per config, so a ``--gpu`` search builds the model once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import types
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from profiler.errors import ConfigError
from profiler.predict.formats import WeightFormat, embedding_bytes, matrix_bytes, small_bytes
from profiler.text import printable

__all__ = [
    "ADAM8_QMAPS",
    "MeasuredModel",
    "QuantMatrix",
    "knows",
    "measure_config",
    "measure_module",
    "scalable_layers",
]

#: Keys the presets add to a config (not transformers fields).
_PRESET_KEYS = ("name", "display", "hf_id", "parameters")
#: Sizes beyond any real model: refused before transformers builds anything.
_LIMITS = {"num_hidden_layers": 1024, "hidden_size": 1 << 17, "vocab_size": 1 << 23}
_LAYER = re.compile(r"\.(\d+)\.")
_STATE_ATTRS = ("conv_states", "recurrent_states", "ssm_states")


@dataclass(frozen=True, slots=True)
class QuantMatrix:
    """One quantisable weight: ``count`` matrices of ``in_features × out_features``."""

    name: str
    role: str
    in_features: int
    out_features: int
    count: int = 1
    layer: int = 0


@dataclass(frozen=True, slots=True)
class MeasuredModel:
    """What the real module tree and one cache probe say, in elements (dtype applied later)."""

    class_name: str
    parameters: int
    trainable: int
    trainable_bytes: int
    matrices: tuple[QuantMatrix, ...]
    embeddings: tuple[tuple[int, int], ...]
    head: tuple[int, int] | None
    tied: bool
    small: int
    buffer_elements: int
    buffer_bytes_fixed: int
    adafactor_elements: int
    layers: int
    adam8_bytes: int = 0
    kv_per_token: int | None = None
    kv_constant: int = 0
    state_elements: int = 0
    max_positions: int | None = None
    windows: tuple[int, ...] = ()

    def weight_bytes(self, fmt: WeightFormat) -> int:
        """Bytes of every parameter stored in ``fmt``, from the module tree."""
        if fmt.kind in ("dense", "flat"):
            return int(self.parameters * fmt.bytes_per_param)
        total = 0
        for m in self.matrices:
            one = matrix_bytes(
                fmt, m.in_features, m.out_features, role=m.role, layer=m.layer, layers=self.layers
            )
            total += one * m.count
        for rows, cols in self.embeddings:
            total += embedding_bytes(fmt, rows, cols)
        if fmt.kind == "gguf" and self.tied and fmt.mix and self.embeddings:
            # llama.cpp: with no output tensor, token_embd takes the output's type (Q6_K)
            rows, cols = self.embeddings[0]
            total += matrix_bytes(fmt, cols, rows, role="output") - embedding_bytes(fmt, rows, cols)
        if self.head is not None:
            rows, cols = self.head
            if fmt.kind == "gguf":
                total += matrix_bytes(fmt, cols, rows, role="output")
            else:
                total += rows * cols * fmt.keep_bytes
        return total + small_bytes(fmt, self.small)

    def buffer_bytes(self, compute_bytes: int) -> int:
        """Buffers: float ones in the compute dtype, rotary tables in fp32, the rest as built."""
        return self.buffer_elements * compute_bytes + self.buffer_bytes_fixed

    def lora_parameters(self, rank: int, targets: str) -> int:
        """Adapter parameters on the block linears ``targets`` names (peft's target sets)."""
        wanted = {
            "all-linear": None,
            "attention": ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "query_key_value"),
            "qv": ("q_proj", "v_proj", "c_attn", "query_key_value"),
        }[targets]
        return sum(
            rank * (m.in_features + m.out_features)
            for m in self.matrices
            if m.count == 1 and (wanted is None or m.name.rsplit(".", 1)[-1] in wanted)
        )


def knows(config: Mapping[str, Any]) -> bool:
    """Whether transformers is installed and has a causal-LM class for ``model_type``."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return False
    if importlib.util.find_spec("transformers") is None:
        return False
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        return False
    config_class = CONFIG_MAPPING[model_type]
    return config_class in AutoModelForCausalLM._model_mapping


def measure_config(config: Mapping[str, Any]) -> MeasuredModel:
    """Build the config's model on meta, read the module tree, and probe its cache (cached).

    Raises:
        ConfigError: a size out of range, or transformers could not build or run the config.
    """
    cleaned = {k: v for k, v in config.items() if k not in _PRESET_KEYS}
    _check_sizes(cleaned)
    try:
        key = json.dumps(cleaned, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise ConfigError("config holds values JSON cannot represent") from None
    return _measure_cached(key)


@lru_cache(maxsize=32)
def _measure_cached(key: str) -> MeasuredModel:
    cleaned = json.loads(key)
    scaled = _measure_scaled(cleaned)
    return scaled if scaled is not None else _measure_full(cleaned)


def _measure_full(cleaned: dict[str, Any]) -> MeasuredModel:
    """Build the whole model on meta and measure it."""
    cleaned = dict(cleaned)
    with _quiet():
        try:
            model = _build(cleaned)
        except (ConfigError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - transformers' own validation, any type
            raise _build_error(cleaned, exc) from None
        measured = measure_module(model)
        try:
            per_token, constant, state = _probe_cache(model)
        except Exception as exc:  # noqa: BLE001 - a forward the meta device cannot run
            raise _build_error(cleaned, exc, "run the forward of") from None
    cfg = model.config
    windows = sorted({int(w) for w in [getattr(cfg, "sliding_window", None) or 0] if w})
    return dataclasses.replace(
        measured,
        kv_per_token=per_token,
        kv_constant=constant,
        state_elements=state,
        max_positions=_max_positions(cfg),
        windows=tuple(windows),
    )


def _build_error(cfg: Mapping[str, Any], exc: Exception, verb: str = "build") -> ConfigError:
    text = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, limit=160)
    return ConfigError(
        f"transformers could not {verb} a {printable(str(cfg.get('model_type')), limit=40)!r} "
        f"model from this config: {text}",
        hint="check the config against the model's published config.json",
    )


def _check_sizes(cfg: Mapping[str, Any]) -> None:
    for scope in (cfg, cfg.get("text_config")):
        if not isinstance(scope, Mapping):
            continue
        for field, highest in _LIMITS.items():
            value = scope.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= highest:
                raise ConfigError(
                    f"config: {field} must be a whole number in 1..{highest}, got "
                    f"{printable(repr(value), limit=40)}"
                )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _build(cfg: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _max_positions(cfg: Any) -> int | None:
    for scope in (cfg, getattr(cfg, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(scope, name, None) if scope is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


# -- scaling by layer count -------------------------------------------------------------------

#: The config fields that hold the layer count (Llama names, GPT-2 names).
_LAYER_FIELDS = ("num_hidden_layers", "n_layer")
#: Fields that grow by the same amount with each repeated group of identical layers.
_LINEAR = (
    "parameters",
    "trainable",
    "trainable_bytes",
    "small",
    "buffer_elements",
    "buffer_bytes_fixed",
    "adafactor_elements",
    "adam8_bytes",
    "kv_per_token",
    "kv_constant",
    "state_elements",
)
_SAME = ("class_name", "embeddings", "head", "tied", "max_positions", "windows")
#: Below this many layers the whole model is built (it is fast enough).
SCALE_FROM_LAYERS = 9
#: Fields that place layers by index: a config holding one is built whole.
_BY_INDEX = (
    "first_k_dense_replace",
    "mlp_only_layers",
    "decoder_sparse_step",
    "moe_layer_freq",
    "max_window_layers",
    "sliding_window_pattern",
    "attn_layer_period",
    "attn_layer_offset",
    "expert_layer_period",
    "expert_layer_offset",
    "layers_block_type",
    "hybrid_override_pattern",
    "full_attention_interval",
    "no_rope_layers",
    "interleave_moe_layer_step",
    "moe_layer_start_index",
    "num_dense_layers",
)


def _period(types: Any, layers: int) -> int | None:
    """The smallest repeating period of a per-layer pattern (1 without one); None if none."""
    if types is None:
        return 1
    if not isinstance(types, list) or len(types) != layers:
        return None
    for period in range(1, layers // 4 + 1):
        if layers % period == 0 and all(types[i] == types[i % period] for i in range(layers)):
            return period
    return None


def _truncated(cfg: dict[str, Any], field: str, layers: int) -> dict[str, Any]:
    out = {**cfg, field: layers}
    if isinstance(cfg.get("layer_types"), list):
        out["layer_types"] = cfg["layer_types"][:layers]
    return out


def scalable_layers(cfg: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """``(field, layers, period)`` where the config repeats one group of ``period`` layers.

    None where layers are placed by index (DeepSeek's first dense layers, hybrids' periods),
    where a list per layer other than a periodic ``layer_types`` exists, or where the model is
    small enough to build whole.
    """
    field = next((f for f in _LAYER_FIELDS if isinstance(cfg.get(f), int)), None)
    if field is None or isinstance(cfg.get(field), bool) or cfg[field] < SCALE_FROM_LAYERS:
        return None
    layers = int(cfg[field])
    ignored = {"decoder_sparse_step"}
    if cfg.get("use_sliding_window") is False:  # Qwen2: max_window_layers only with windows
        ignored.add("max_window_layers")
    if any(cfg.get(k) not in (None, [], 0) for k in _BY_INDEX if k not in ignored):
        return None
    if cfg.get("decoder_sparse_step") not in (None, 1) or any(
        isinstance(v, list) and len(v) == layers for k, v in cfg.items() if k != "layer_types"
    ):
        return None
    period = _period(cfg.get("layer_types"), layers)
    if period is None or layers < 4 * period:
        return None
    return field, layers, period


def _measure_scaled(cfg: dict[str, Any]) -> MeasuredModel | None:
    """Measure 1, 2 and 3 groups of layers and extrapolate, where that is exact.

    Used where :func:`scalable_layers` finds one repeated group: every per-layer figure must
    grow by the same amount from one group to two and from two to three, and the second
    group's matrices must mirror the first's, or the whole model is built instead.
    """
    found = scalable_layers(cfg)
    if found is None:
        return None
    field, layers, period = found
    parts = [_measure_full(_truncated(cfg, field, n * period)) for n in (1, 2, 3)]
    return _extrapolate(parts, layers // period, period)


def _shifted(m: QuantMatrix, offset: int) -> QuantMatrix:
    layer = m.layer + offset
    name = _LAYER.sub(f".{layer}.", f".{m.name}.", count=1)[1:-1]
    return dataclasses.replace(m, name=name, layer=layer)


def _extrapolate(parts: list[MeasuredModel], groups: int, period: int) -> MeasuredModel | None:
    one, two, three = parts
    if any(getattr(one, f) != getattr(p, f) for f in _SAME for p in (two, three)):
        return None
    values: dict[str, Any] = {}
    for f in _LINEAR:
        a, b, c = getattr(one, f), getattr(two, f), getattr(three, f)
        if a is None or b is None or c is None or b - a != c - b:
            return None
        values[f] = a + (groups - 1) * (b - a)
    first = [m for m in one.matrices if _LAYER.search(f".{m.name}.")]
    outside = [m for m in one.matrices if not _LAYER.search(f".{m.name}.")]
    second = [m for m in two.matrices if m.layer >= period and _LAYER.search(f".{m.name}.")]
    if [_shifted(m, period) for m in first] != second:
        return None
    matrices = [_shifted(m, g * period) for g in range(groups) for m in first]
    return dataclasses.replace(
        one, **values, matrices=tuple(matrices + outside), layers=groups * period
    )


# -- the module tree ---------------------------------------------------------------------------


def _role(name: str, count: int) -> str:
    tail = name.rsplit(".", 1)[-1]
    if tail in ("v_proj", "v"):
        role = "attn_v"
    elif tail in ("down_proj", "fc2", "w2", "dense_4h_to_h") or (
        tail == "c_proj" and ".mlp." in f".{name}."
    ):
        role = "ffn_down"
    else:
        role = tail
    return f"{role}_exps" if count > 1 else role


def measure_module(model: Any) -> MeasuredModel:
    """Parameters, quantisable matrices and buffers of a module tree (real, meta or fake)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head_weight, tied = _head_of(base)
    seen: set[int] = set()
    matrices: list[QuantMatrix] = []
    embeddings: list[tuple[int, int]] = []
    head: tuple[int, int] | None = None
    counts = dict.fromkeys(
        ("parameters", "trainable", "trainable_bytes", "small", "ada", "8bit"), 0
    )
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            n = param.numel()
            counts["parameters"] += n
            counts["ada"] += _adafactor_elements(tuple(param.shape))
            counts["8bit"] += _adam8_bytes(n)
            if param.requires_grad:
                counts["trainable"] += n
                counts["trainable_bytes"] += n * param.element_size()
            kind = type(module).__name__
            if not tied and id(param) == id(head_weight):
                head = (int(param.shape[0]), int(param.shape[1]))
            elif isinstance(module, torch.nn.Embedding) and pname == "weight":
                embeddings.append((int(param.shape[0]), int(param.shape[1])))
            elif pname == "weight" and param.dim() == 2 and kind in ("Linear", "Conv1D"):
                rows, cols = int(param.shape[0]), int(param.shape[1])
                in_f, out_f = (cols, rows) if kind == "Linear" else (rows, cols)
                matrices.append(_matrix(module_name, in_f, out_f, 1))
            elif param.dim() == 3 and module_name.endswith("experts"):
                full = f"{module_name}.{pname}"
                count, rows, cols = (int(s) for s in param.shape)
                # transformers stores experts as [E, out, in]
                matrices.append(_matrix(full, cols, rows, count))
            else:
                counts["small"] += n
    buffer_elements, fixed = _buffer_bytes(model, seen)
    layer_ids = {m.layer for m in matrices if _LAYER.search(f".{m.name}.")}
    return MeasuredModel(
        class_name=type(model).__name__,
        parameters=counts["parameters"],
        trainable=counts["trainable"],
        trainable_bytes=counts["trainable_bytes"],
        matrices=tuple(matrices),
        embeddings=tuple(embeddings),
        head=head,
        tied=tied,
        small=counts["small"],
        buffer_elements=buffer_elements,
        buffer_bytes_fixed=fixed,
        adafactor_elements=counts["ada"],
        layers=max(len(layer_ids), 1),
        adam8_bytes=counts["8bit"],
    )


def _head_of(model: Any) -> tuple[Any, bool]:
    """The output embedding weight and whether it is the input embedding's (tied)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(head, "weight", None)
    return weight, weight is not None and weight is getattr(embed, "weight", None)


def _matrix(name: str, in_features: int, out_features: int, count: int) -> QuantMatrix:
    match = _LAYER.search(f".{name}.")
    return QuantMatrix(
        name=name,
        role=_role(name, count),
        in_features=in_features,
        out_features=out_features,
        count=count,
        layer=int(match.group(1)) if match else 0,
    )


def _adafactor_elements(shape: tuple[int, ...]) -> int:
    """Adafactor's factored second moment: row and column factors for 2-D and up."""
    if len(shape) < 2:
        return int(_prod(shape))
    return int(_prod(shape[:-1]) + _prod(shape[:-2]) * shape[-1])


#: bitsandbytes' 8-bit optimizers: tensors below ``min_8bit_size`` keep 32-bit state.
_MIN_8BIT_SIZE = 4096
#: The shared signed and unsigned quantisation maps: 256 fp32 values each.
ADAM8_QMAPS = 2 * 256 * 4


def _adam8_bytes(n: int) -> int:
    """8-bit AdamW state of one tensor (bitsandbytes, blockwise): uint8 moments, fp32 absmax."""
    if n < _MIN_8BIT_SIZE:
        return 2 * 4 * n
    return 2 * n + 2 * 4 * -(-n // 256)


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _buffer_bytes(model: Any, seen: set[int]) -> tuple[int, int]:
    """Float buffers (elements, stored like the weights) and fixed ones (bytes as built).

    Rotary ``inv_freq`` tables are computed in fp32 whatever the model's dtype; integer and
    boolean buffers keep their dtype.
    """
    elements = fixed = 0
    for name, buf in model.named_buffers():
        if id(buf) in seen:
            continue
        seen.add(id(buf))
        if buf.is_floating_point() and "inv_freq" not in name:
            elements += buf.numel()
        else:
            fixed += buf.numel() * buf.element_size()
    return elements, fixed


# -- the cache ---------------------------------------------------------------------------------


def _skip_experts(model: Any) -> None:
    """Make MoE expert modules return zeros: routing needs values, experts cache nothing."""
    import torch

    def zeros(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return torch.zeros_like(hidden_states)

    for name, module in model.named_modules():
        if name.endswith(".experts") or name == "experts":
            module.forward = types.MethodType(zeros, module)


def _cache_elements(cache: Any) -> tuple[int, int]:
    """Elements of the storages a cache holds: (key/value tensors, recurrent/conv states)."""
    import torch

    seen: set[int] = set()
    kv = state = 0

    def tensors(value: Any) -> Iterator[Any]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, Mapping):
            for v in value.values():
                yield from tensors(v)
        elif isinstance(value, list | tuple):
            for v in value:
                yield from tensors(v)

    holders = list(getattr(cache, "layers", None) or []) + [cache]
    for holder in holders:
        for attr, value in vars(holder).items():
            if attr == "layers":
                continue
            for t in tensors(value):
                storage = t.untyped_storage()
                if not t.is_floating_point() or storage._cdata in seen:
                    continue
                seen.add(storage._cdata)
                elements = storage.nbytes() // t.element_size()
                if attr in _STATE_ATTRS:
                    state += elements
                else:
                    kv += elements
    return kv, state


def _prefill(model: Any, batch: int, tokens: int) -> tuple[int, int]:
    import torch

    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        cache = getattr(out, "cache_params", None)
    return _cache_elements(cache) if cache is not None else (0, 0)


def _probe_cache(model: Any) -> tuple[int | None, int, int]:
    """KV elements per token and constant, and state elements, per batch row; fit checked."""
    _skip_experts(model)
    kv_a, state_a = _prefill(model, 1, 3)
    kv_b, state_b = _prefill(model, 1, 5)
    per_token, rem = divmod(kv_b - kv_a, 2)
    constant = kv_a - 3 * per_token
    kv_c, state_c = _prefill(model, 2, 9)
    if (
        rem
        or state_a != state_b
        or kv_c != 2 * (9 * per_token + constant)
        or state_c != 2 * state_a
    ):
        return None, 0, state_a  # not linear in (batch, tokens): measured per call instead
    return per_token, constant, state_a
