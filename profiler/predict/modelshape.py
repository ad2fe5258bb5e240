"""A model's shape facts, read from a Hugging Face style config (dict, config.json or object).

Everything the formulas need, in one frozen record: widths, depths, attention heads (with
grouped-query attention), MLP kind, norms, biases, experts, per-layer attention windows.
Both the Llama family names (``hidden_size``, ``num_hidden_layers``) and the GPT-2 names
(``n_embd``, ``n_layer``) are understood.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.errors import ConfigError, StreamError
from profiler.session import files
from profiler.text import printable

__all__ = ["ModelShape", "load_config", "shape_from_config", "shape_from_module"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "vocab_size": ("vocab_size",),
}

_GATED_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
}


#: Architectures whose classes tie the head to the embeddings when the config says nothing.
_TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2", "gemma3_text", "falcon"}
#: Architectures with a plain (ungated) MLP although they use Llama-style names.
_PLAIN_MLP_TYPES = {"falcon", "gpt_neox", "opt", "bloom", "phi", "starcoder2"}
#: Config keys that mean an architecture the formulas do not model, and what it is.
_BEYOND_FORMULAS = (
    ("moe_intermediate_size", "a MoE with its own expert width"),
    ("shared_expert_intermediate_size", "a MoE with shared experts"),
    ("n_shared_experts", "a MoE with shared experts"),
    ("kv_lora_rank", "multi-head latent attention (MLA)"),
    ("q_lora_rank", "multi-head latent attention (MLA)"),
    ("state_size", "a state-space model (SSM)"),
    ("mamba_d_state", "an attention/SSM hybrid"),
    ("ssm_cfg", "a state-space model (SSM)"),
    ("attn_layer_period", "an attention/SSM hybrid"),
    ("layers_block_type", "an attention/SSM hybrid"),
    ("hybrid_override_pattern", "an attention/SSM hybrid"),
)
_FORMULA_HINT = (
    "install transformers (pip install transformers) so that gpumem measures it on the real "
    "model class"
)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The shape facts of a decoder-only transformer that memory formulas depend on."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int | None
    tie_word_embeddings: bool
    gated_mlp: bool
    attention_bias: bool
    o_bias: bool
    mlp_bias: bool
    layer_norm_bias: bool
    norms_per_layer: int
    learned_positions: bool
    num_experts: int
    experts_per_token: int
    layer_windows: tuple[int | None, ...]
    dtype: str | None = None
    declared_parameters: int | None = None
    activation: str = "silu"
    resid_dropout: float = 0.0
    embed_dropout: float = 0.0
    attention_dropout: float = 0.0

    @property
    def q_dim(self) -> int:
        """Width of the query projection (heads × head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the key (or value) projection (KV heads × head_dim)."""
        return self.num_kv_heads * self.head_dim


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A config as a plain dict, from a dict, a ``config.json`` path or a directory holding one.

    Raises:
        ConfigError: the file is missing, unreadable, not JSON, or not a JSON object.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    with contextlib.suppress(OSError, ValueError):
        if path.is_dir():
            path = path / "config.json"
    try:  # a regular file only, bounded, numbers read defensively (NaN, 1e999: unknown)
        data = files.load_json(path, what="config", follow_symlinks=True)
    except StreamError as exc:
        raise ConfigError(exc.message) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {printable(path, limit=200)!r} is not a JSON object")
    return data


def _get(cfg: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return None


def _positive_int(cfg: Mapping[str, Any], field: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"config {where}: {field} must be a whole number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"config {where}: {field} must be positive, got {value!r}")
    return int(value)


def _required(cfg: Mapping[str, Any], field: str, where: str) -> int:
    names = _ALIASES[field]
    value = _get(cfg, names)
    if value is None:
        raise ConfigError(
            f"config {where} lacks {names[0]}",
            hint=f"a decoder config needs {', '.join(a[0] for a in _ALIASES.values())}",
        )
    return _positive_int(cfg, names[0], value, where)


def _layer_windows(cfg: Mapping[str, Any], layers: int, where: str) -> tuple[int | None, ...]:
    """Per-layer sliding window (None = full attention), as the config declares it."""
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False or window in (None, 0):
        window = None
    if window is not None:
        window = _positive_int(cfg, "sliding_window", window, where)
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        if len(types) != layers:
            raise ConfigError(
                f"config {where}: layer_types has {len(types)} entries for {layers} layers"
            )
        if window is None and any("sliding" in str(t) for t in types):
            raise ConfigError(f"config {where}: sliding layers declared without sliding_window")
        return tuple(window if "sliding" in str(t) else None for t in types)
    if window is None:
        return (None,) * layers
    pattern = cfg.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        # Gemma 3 style: every pattern-th layer is global, the others slide.
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(layers))
    if cfg.get("model_type") == "qwen2" and cfg.get("max_window_layers") is not None:
        start = int(cfg["max_window_layers"])
        return tuple(window if i >= start else None for i in range(layers))
    return (window,) * layers


def shape_from_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, name: str | None = None
) -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face style config.

    Raises:
        ConfigError: a required field is missing, not a positive whole number, or inconsistent
            (heads not divisible by KV heads, for instance).
    """
    raw = load_config(source)
    where = repr(name or raw.get("_name_or_path") or raw.get("model_type") or "config")
    cfg = raw
    if _get(cfg, _ALIASES["hidden_size"]) is None and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "")}
    model_type = str(cfg.get("model_type") or "")
    _check_within_formulas(cfg, model_type, where)
    hidden = _required(cfg, "hidden_size", where)
    layers = _required(cfg, "num_layers", where)
    heads = _required(cfg, "num_heads", where)
    vocab = _required(cfg, "vocab_size", where)
    kv_value = _get(cfg, ("num_key_value_heads", "n_head_kv", "num_kv_heads"))
    if kv_value is None and cfg.get("multi_query"):
        kv_value = 1
    kv_heads = (
        heads if kv_value is None else _positive_int(cfg, "num_key_value_heads", kv_value, where)
    )
    if heads % kv_heads:
        raise ConfigError(
            f"config {where}: num_attention_heads ({heads}) is not a multiple of "
            f"num_key_value_heads ({kv_heads})"
        )
    head_dim_value = cfg.get("head_dim")
    if head_dim_value is None:
        if hidden % heads:
            raise ConfigError(
                f"config {where}: hidden_size ({hidden}) is not a multiple of the heads ({heads})"
            )
        head_dim = hidden // heads
    else:
        head_dim = _positive_int(cfg, "head_dim", head_dim_value, where)
    is_gpt2 = model_type == "gpt2" or ("n_embd" in cfg and "hidden_size" not in cfg)
    inner = _get(cfg, ("intermediate_size", "n_inner", "ffn_dim"))
    intermediate = (
        4 * hidden if inner is None else _positive_int(cfg, "intermediate_size", inner, where)
    )
    positions = _get(cfg, ("max_position_embeddings", "n_positions", "n_ctx"))
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
    gated = bool(
        cfg.get(
            "gated_mlp",
            model_type in _GATED_TYPES or not (is_gpt2 or model_type in _PLAIN_MLP_TYPES),
        )
    )
    if "hidden_act" in cfg and is_gpt2:
        gated = False
    norms = 4 if model_type in ("gemma2", "gemma3_text") else 2
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    return ModelShape(
        name=name or str(raw.get("_name_or_path") or model_type or "model"),
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_positions=None
        if positions is None
        else _positive_int(cfg, "n_positions", positions, where),
        tie_word_embeddings=bool(
            cfg.get("tie_word_embeddings", is_gpt2 or model_type in _TIED_BY_DEFAULT)
        ),
        gated_mlp=gated,
        attention_bias=bool(cfg.get("attention_bias", is_gpt2 or model_type == "qwen2")),
        o_bias=bool(cfg.get("o_bias", is_gpt2)),
        mlp_bias=bool(cfg.get("mlp_bias", is_gpt2)),
        layer_norm_bias=is_gpt2 or bool(cfg.get("layer_norm_bias", False)),
        norms_per_layer=int(cfg.get("norms_per_layer", norms)),
        learned_positions=is_gpt2,
        num_experts=int(experts),
        experts_per_token=int(cfg.get("num_experts_per_tok") or (2 if experts else 0)),
        layer_windows=_layer_windows(cfg, layers, where),
        dtype=None if dtype is None else str(dtype),
        declared_parameters=raw.get("parameters")
        if isinstance(raw.get("parameters"), int)
        else None,
        activation=str(_get(cfg, ("hidden_act", "activation_function")) or "silu"),
        resid_dropout=_rate(cfg, ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob")),
        embed_dropout=_rate(cfg, ("embd_pdrop", "embedding_dropout")),
        attention_dropout=_rate(cfg, ("attn_pdrop", "attention_dropout")),
    )


def _check_within_formulas(cfg: Mapping[str, Any], model_type: str, where: str) -> None:
    """Refuse, with a hint, a config whose architecture the formulas would silently get wrong."""
    for key, what in _BEYOND_FORMULAS:
        if cfg.get(key) not in (None, 0, False, [], ""):
            raise ConfigError(
                f"config {where} describes {what} ({key}); the formulas cannot size it",
                hint=_FORMULA_HINT,
            )
    if "mamba" in model_type or model_type in ("rwkv", "jamba", "zamba", "falcon_h1"):
        raise ConfigError(
            f"config {where} is a {printable(model_type, limit=40)!r} model (state-space or "
            "hybrid layers); the formulas cannot size it",
            hint=_FORMULA_HINT,
        )


def _rate(cfg: Mapping[str, Any], names: tuple[str, ...]) -> float:
    value = _get(cfg, names)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def shape_from_module(model: Any) -> ModelShape | None:
    """The shape of a transformers model from its ``.config``, or None if it has none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else getattr(config, "__dict__", None)
    if not isinstance(data, dict):
        return None
    try:
        return shape_from_config(data)
    except ConfigError:
        return None
