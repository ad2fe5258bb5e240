"""``estimate()``: bytes per category before a run, for a model, a config, a preset or a size.

The result is an :class:`Estimate` in the same categories the tracker measures, plus named
overhead lines (CUDA context, allocator margin) that are never folded into a fudge factor.

Conventions (the seed's): a 16-bit training run keeps fp32 master weights in the optimizer
line, and the optimizer's moments are stored like the weights unless ``optimizer_dtype`` says
otherwise, so a 7e9-parameter model in fp16 with AdamW gives 14 GB weights, 14 GB gradients and
56 GB optimizer state (2 + 2 bytes of moments and 4 bytes of master weights per parameter).
Pass ``optimizer_dtype="fp32"`` for the 16-bytes-per-parameter recipe of DeepSpeed and Megatron.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from profiler.errors import UnknownNameError, UsageError
from profiler.predict.formats import WeightFormat, find_format
from profiler.predict.formulas import (
    adafactor_state_bytes,
    checkpoint_recompute_bytes,
    inference_activation_bytes,
    kv_cache_bytes,
    lora_parameter_count,
    lora_target_count,
    optimizer_state_bytes_per_param,
    parameter_count,
    training_activation_bytes,
    weight_bytes,
)
from profiler.predict.gpus import GPUS, GpuSpec, find_gpu
from profiler.predict.modelshape import ModelShape, shape_from_config, shape_from_module
from profiler.records import CATEGORIES, Category

if TYPE_CHECKING:
    import pandas

__all__ = ["MODES", "OPTIMIZERS", "Estimate", "Overhead", "estimate"]

MODES = ("inference", "train", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw-8bit", "sgd", "adafactor")
ATTENTIONS = ("sdpa", "flash", "eager")
_DEFAULT_CONTEXT = 512 * 1024**2
_MARGIN = 0.05
_QLORA_FORMATS = ("nf4", "nf4-dq", "int4", "gptq", "gptq-g32", "awq")


@dataclass(frozen=True, slots=True)
class Overhead:
    """A named line outside the tracked categories (CUDA context, allocator margin)."""

    name: str
    bytes: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class Estimate:
    """Predicted device memory for one configuration, per category, with overheads and total."""

    model: str
    mode: str
    precision: str
    optimizer: str | None
    batch: int
    seq: int
    parameters: int
    trainable_parameters: int
    bytes: tuple[int, ...]
    overheads: tuple[Overhead, ...]
    notes: tuple[str, ...] = ()
    margin_fraction: float = _MARGIN

    @property
    def categories(self) -> dict[Category, int]:
        """Bytes per category, in the fixed category order."""
        return dict(zip(CATEGORIES, self.bytes, strict=True))

    @property
    def allocated(self) -> int:
        """Bytes PyTorch tensors take: the sum of the categories."""
        return sum(self.bytes)

    @property
    def total(self) -> int:
        """Everything the process needs on the device: categories plus overhead lines."""
        return self.allocated + sum(o.bytes for o in self.overheads)

    def required_on(self, gpu: GpuSpec) -> int:
        """The total with that GPU's own CUDA context size instead of the default one."""
        context = sum(o.bytes for o in self.overheads if o.name == "CUDA context")
        return self.total - context + gpu.context_bytes

    def fits(self, gpu: GpuSpec | str) -> bool:
        """Whether the total fits in the GPU's memory."""
        spec = find_gpu(gpu) if isinstance(gpu, str) else gpu
        return self.required_on(spec) <= spec.memory_bytes

    def to_dict(self, gpus: tuple[GpuSpec, ...] | list[GpuSpec] | None = None) -> dict[str, Any]:
        """A JSON-ready dict: ``total_bytes``, ``categories``, ``overheads``, ``gpus`` and inputs."""
        chosen = GPUS if gpus is None else gpus
        return {
            "model": self.model,
            "mode": self.mode,
            "precision": self.precision,
            "optimizer": self.optimizer,
            "batch": self.batch,
            "seq": self.seq,
            "parameters": self.parameters,
            "trainable_parameters": self.trainable_parameters,
            "total_bytes": self.total,
            "allocated_bytes": self.allocated,
            "categories": {str(c): b for c, b in self.categories.items()},
            "overheads": {o.name: o.bytes for o in self.overheads},
            "notes": list(self.notes),
            "gpus": [
                {
                    "name": g.name,
                    "memory_bytes": g.memory_bytes,
                    "required_bytes": self.required_on(g),
                    "fits": self.fits(g),
                }
                for g in chosen
            ],
        }

    def breakdown(self) -> pandas.DataFrame:
        """A DataFrame indexed by ``category`` with one int column ``predicted``."""
        import pandas as pd

        frame = pd.DataFrame(
            {"predicted": list(self.bytes)},
            index=pd.Index([str(c) for c in CATEGORIES], name="category"),
        )
        return frame


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    shape: ModelShape | None
    parameters: int
    module: Any = None


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UsageError(f"{name} must be a whole number, got {value!r}")
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}")
    return int(value)


def _resolve(source: Any, params: int | float | None) -> _Source:
    from profiler.predict.presets import find_preset, load_preset

    if params is not None:
        if isinstance(params, bool) or not isinstance(params, int | float) or params <= 0:
            raise UsageError(f"params must be a positive number, got {params!r}")
        count = int(params)
        return _Source(_format_count(count), None, count)
    if source is None:
        raise UsageError("estimate needs a model, a config, a preset name or params=")
    if isinstance(source, int | float) and not isinstance(source, bool):
        return _resolve(None, source)
    if isinstance(source, Mapping):
        shape = shape_from_config(source)
        return _Source(shape.name, shape, parameter_count(shape))
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if os.path.exists(text) or text.endswith(".json"):
            shape = shape_from_config(text, name=os.path.basename(text.rstrip("/")))
            return _Source(shape.name, shape, parameter_count(shape))
        preset = find_preset(text)
        shape = shape_from_config(load_preset(preset), name=preset)
        return _Source(preset, shape, parameter_count(shape))
    parameters = getattr(source, "parameters", None)
    if callable(parameters):
        module_shape = shape_from_module(source)
        seen: set[int] = set()
        count = 0
        for p in source.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                count += p.numel()
        name = type(source).__name__
        return _Source(name, module_shape, count, source)
    raise UsageError(f"cannot estimate {type(source).__name__!r}: pass a model, config or preset")


def _format_count(count: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:g}{unit} parameters"
    return f"{count} parameters"


def _dense_bytes(dtype_name: str, what: str = "dtype") -> int:
    """Bytes per element of a dense dtype name (fp32, fp16, bf16 and their aliases)."""
    try:
        fmt = find_format(dtype_name)
    except UnknownNameError:
        fmt = None
    if fmt is None or fmt.kind != "dense":
        raise UnknownNameError(what, str(dtype_name), ["fp32", "fp16", "bf16"])
    return int(fmt.bytes_per_param)


def _default_precision(mode: str) -> str:
    return "nf4" if mode == "qlora" else "fp16"


def estimate(
    model: Any = None,
    *,
    params: int | float | None = None,
    precision: str | None = None,
    mode: str = "inference",
    optimizer: str = "adamw",
    master_weights: bool | None = None,
    optimizer_dtype: str | None = None,
    batch: int = 1,
    seq: int | None = None,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    kv_cache_dtype: str | None = None,
    lora_rank: int = 16,
    lora_targets: str = "all-linear",
    gpu: str | GpuSpec | None = None,
    context_bytes: int | None = None,
    margin: float = _MARGIN,
) -> Estimate:
    """Predict device memory per category before running anything.

    Args:
        model: an ``nn.Module`` (real or on the meta device), a Hugging Face style config (dict,
            path to ``config.json`` or its directory), a preset name, or a parameter count.
        params: a bare parameter count (the seed's "7B" arithmetic); no activations then.
        precision: weight format: fp32, fp16, bf16, int8, int4, gptq, gptq-g32, awq, nf4,
            nf4-dq, llm-int8, q8_0, q5_k_m, q4_k_m (default fp16; nf4 for qlora).
        mode: inference, train (full fine-tune), lora, qlora.
        optimizer: adamw, adamw-8bit, sgd (with momentum), adafactor.
        master_weights: keep fp32 master weights (default: on for 16-bit full training).
        optimizer_dtype: dtype of optimizer moments (default: like the weights).
        batch, seq: batch size and sequence (training) or context (inference) length.
        gradient_checkpointing: keep only each block's input and recompute in backward.
        attention: sdpa / flash (no scores kept) or eager (keeps batch × heads × seq × seq).
        kv_cache_dtype: KV cache dtype for inference (default: the compute dtype).
        lora_rank, lora_targets: adapter rank and targets (all-linear, attention, qv).
        gpu: a GPU whose CUDA context size to use for the context line.
        context_bytes: override the CUDA context line.
        margin: allocator margin as a fraction of the allocated bytes.

    Raises:
        UsageError: unknown names, non-positive sizes, impossible combinations.
        ConfigError: a malformed or incomplete config.
    """
    if mode not in MODES:
        raise UnknownNameError("mode", str(mode), list(MODES))
    if optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", str(optimizer), list(OPTIMIZERS))
    if attention not in ATTENTIONS:
        raise UnknownNameError("attention implementation", str(attention), list(ATTENTIONS))
    batch = _positive("batch", batch)
    lora_rank = _positive("lora rank", lora_rank)
    if not (isinstance(margin, int | float) and 0 <= margin < 1):
        raise UsageError(f"margin must be a fraction in [0, 1), got {margin!r}")
    source = _resolve(model, params)
    shape = source.shape
    if seq is None:
        seq = (
            2048 if shape is None or shape.max_positions is None else min(2048, shape.max_positions)
        )
    seq = _positive("seq", seq)
    fmt = find_format(precision or _default_precision(mode))
    _check_combination(mode, fmt, precision)
    spec = (find_gpu(gpu) if isinstance(gpu, str) else gpu) if gpu is not None else None

    notes: list[str] = []
    training = mode != "inference"
    compute = fmt.name if fmt.kind == "dense" else "fp16"
    act_bytes = _dense_bytes(compute)
    total_params = source.parameters
    values = dict.fromkeys(CATEGORIES, 0)

    # weights
    if shape is not None:
        values[Category.WEIGHTS] = weight_bytes(shape, fmt)
    else:
        values[Category.WEIGHTS] = int(round(total_params * _flat_bytes(fmt)))
    if shape is not None and not shape.learned_positions:
        # rotary inv_freq and original_inv_freq buffers: head_dim / 2 fp32 values each
        values[Category.BUFFERS] = shape.head_dim * 4

    # gradients and optimizer
    trainable = 0
    stepped = 4  # bytes per element of the tensors the optimizer updates (its scratch)
    if mode == "train":
        trainable = total_params
        values[Category.GRADIENTS] = trainable * act_bytes
        master = fmt.name != "fp32" if master_weights is None else master_weights
        state = (
            _dense_bytes(optimizer_dtype, "optimizer dtype")
            if optimizer_dtype
            else _dense_bytes(compute)
        )
        values[Category.OPTIMIZER] = _optimizer_bytes(optimizer, shape, trainable, state) + (
            trainable * 4 if master else 0
        )
        stepped = 4 if master else state
    elif mode in ("lora", "qlora"):
        if shape is None:
            raise UsageError(
                f"{mode} needs the model's shape to size the adapters",
                hint="pass a preset name or a config instead of a bare parameter count",
            )
        trainable = lora_parameter_count(shape, lora_rank, lora_targets)
        values[Category.WEIGHTS] += trainable * 4  # adapters kept in fp32
        values[Category.GRADIENTS] = trainable * 4
        state = _dense_bytes(optimizer_dtype, "optimizer dtype") if optimizer_dtype else 4
        values[Category.OPTIMIZER] = _optimizer_bytes(optimizer, None, trainable, state)
        notes.append(
            f"LoRA rank {lora_rank} on {lora_targets} ({trainable:,} fp32 adapter parameters)"
        )

    # activations, KV cache, temporaries
    if shape is None:
        if source.module is not None:
            notes.append("no transformers config: activations need a dry run (profiler.dry_run)")
        else:
            notes.append("bare parameter count: activations and KV cache not estimated")
    elif training:
        values[Category.ACTIVATIONS] = training_activation_bytes(
            shape,
            batch=batch,
            seq=seq,
            act_bytes=act_bytes,
            attention=attention,
            checkpointing=gradient_checkpointing,
        )
        if mode in ("lora", "qlora"):
            per_layer = lora_target_count(shape, lora_targets)
            values[Category.ACTIVATIONS] += (
                shape.num_layers * per_layer * batch * seq * lora_rank * act_bytes
            )
        values[Category.TEMPORARIES] = _training_temporaries(
            shape, fmt, optimizer, trainable, stepped, batch, seq, values[Category.ACTIVATIONS]
        )
        if gradient_checkpointing:
            values[Category.TEMPORARIES] += checkpoint_recompute_bytes(
                shape, batch=batch, seq=seq, act_bytes=act_bytes, attention=attention
            )
    else:
        kv_bytes = _dense_bytes(kv_cache_dtype, "KV cache dtype") if kv_cache_dtype else act_bytes
        values[Category.KV_CACHE] = kv_cache_bytes(
            shape, tokens=seq, batch=batch, dtype_bytes=kv_bytes
        )
        values[Category.ACTIVATIONS] = inference_activation_bytes(
            shape, batch=batch, seq=seq, act_bytes=act_bytes, attention=attention
        )
        if fmt.kind not in ("dense", "flat"):
            biggest = max(m.in_features * m.out_features for m in _matrices(shape))
            values[Category.TEMPORARIES] = biggest * 2  # one matrix dequantised at a time
    allocated = sum(values.values())
    context = (
        context_bytes
        if context_bytes is not None
        else (spec.context_bytes if spec is not None else _DEFAULT_CONTEXT)
    )
    overheads = (
        Overhead(
            "CUDA context",
            int(context),
            "driver state, kernels and library handles outside PyTorch's allocator",
        ),
        Overhead(
            "allocator margin",
            int(math.ceil(allocated * margin)),
            f"cached and fragmented blocks the caching allocator reserves ({margin:.0%})",
        ),
    )
    return Estimate(
        model=source.name,
        mode=mode,
        precision=fmt.name,
        optimizer=optimizer if training else None,
        batch=batch,
        seq=seq,
        parameters=total_params,
        trainable_parameters=trainable,
        bytes=tuple(values[c] for c in CATEGORIES),
        overheads=overheads,
        notes=tuple(notes),
        margin_fraction=margin,
    )


def _matrices(shape: ModelShape) -> Any:
    from profiler.predict.formulas import linear_matrices

    return linear_matrices(shape)


def _flat_bytes(fmt: WeightFormat) -> float:
    """Bytes per parameter when only a parameter count is known."""
    if fmt.kind in ("dense", "flat"):
        return fmt.bytes_per_param
    if fmt.kind == "gguf":
        return fmt.base_block[1] / fmt.base_block[0]
    if fmt.kind in ("gptq", "awq"):
        return 0.5 + (0.5 + 2) / fmt.group_size
    if fmt.kind == "nf4":
        return 0.5 + (1 / 64 + 4 / (64 * 256) if fmt.double_quant else 4 / 64)
    return 1.0


def _optimizer_bytes(optimizer: str, shape: ModelShape | None, trainable: int, state: int) -> int:
    if optimizer == "adafactor":
        return adafactor_state_bytes(shape, trainable, state)
    return int(round(trainable * optimizer_state_bytes_per_param(optimizer, state)))


def _training_temporaries(
    shape: ModelShape,
    fmt: WeightFormat,
    optimizer: str,
    trainable: int,
    state_bytes: int,
    batch: int,
    seq: int,
    activations: int,
) -> int:
    """The transient that adds to a training step's peak.

    At the start of backward the logits (with their fp32 copy for 16-bit runs) and the fp32
    logits gradient (batch × seq × vocab × 4) sit on top of every saved activation. The foreach AdamW step allocates one state-sized scratch tensor per
    parameter (``_foreach_sqrt`` of the second moment) when the activations are already freed,
    so it raises the peak only by what it exceeds them by. QLoRA dequantises one matrix at a time.
    """
    extra = 4 if activations and _act_bytes(fmt) != 4 else 0
    logits_grad = batch * seq * shape.vocab_size * (_act_bytes(fmt) + extra + 4)
    scratch = trainable * state_bytes if optimizer == "adamw" else 0
    dequant = 0
    if fmt.kind not in ("dense", "flat"):
        dequant = max(m.in_features * m.out_features for m in _matrices(shape)) * 2
    return max(logits_grad, scratch - activations, dequant)


def _act_bytes(fmt: WeightFormat) -> int:
    return _dense_bytes(fmt.name) if fmt.kind == "dense" else 2


def _check_combination(mode: str, fmt: WeightFormat, asked: str | None) -> None:
    if mode == "qlora" and fmt.name not in _QLORA_FORMATS:
        raise UsageError(
            f"qlora needs 4-bit base weights, not {fmt.name}",
            hint=f"use --precision nf4 (or one of {', '.join(_QLORA_FORMATS)}), or --mode lora",
        )
    if mode in ("train", "lora") and fmt.kind != "dense":
        hint = "use --mode qlora for 4-bit weights" if fmt.bits <= 4 else "use fp16 or bf16"
        raise UsageError(f"{mode} cannot update {fmt.name} weights", hint=hint)
