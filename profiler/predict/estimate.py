"""``estimate()``: bytes per category before a run, for a model, a config, a preset or a size.

The result is an :class:`Estimate` in the same categories the tracker measures, plus named
overhead lines (CUDA context, allocator margin) that are never folded into a fudge factor.
Where transformers knows the config, every category is measured on the real class: the module
tree and the cache on the meta device (:mod:`~profiler.predict.measured`), activations and
temporaries by dry runs of the step on fake tensors (:mod:`~profiler.predict.stepmeasure`);
``measure_step=False`` takes those two from the formulas. Each category says its source.

Conventions (the seed's): a 16-bit training run keeps fp32 master weights in the optimizer
line, and the optimizer's moments are stored like the weights unless ``optimizer_dtype`` says
otherwise, so a 7e9-parameter model in fp16 with AdamW gives 14 GB weights, 14 GB gradients and
56 GB optimizer state (2 + 2 bytes of moments and 4 bytes of master weights per parameter).
Pass ``optimizer_dtype="fp32"`` for the 16-bytes-per-parameter recipe of DeepSpeed and Megatron.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from profiler.errors import UnknownNameError, UsageError
from profiler.predict.formats import WeightFormat, find_format
from profiler.predict.formulas import (
    adafactor_state_bytes,
    inference_activation_bytes,
    kv_cache_bytes,
    lora_parameter_count,
    lora_target_count,
    optimizer_state_bytes_per_param,
    training_activation_bytes,
    weight_bytes,
)
from profiler.predict.gpus import GPUS, GpuSpec, find_gpu
from profiler.predict.measured import ADAM8_QMAPS, MeasuredModel
from profiler.predict.modelshape import ModelShape
from profiler.predict.sources import APPROXIMATE, Source, resolve
from profiler.records import CATEGORIES, Category

if TYPE_CHECKING:
    import pandas

    from profiler.predict.stepmeasure import StepFit

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
    source: str = APPROXIMATE
    sources: tuple[str, ...] = ()
    ssm_state: int = 0
    max_positions: int | None = None
    kv_bytes_per_token: int | None = None
    #: Where the step was dry-run: the config and :func:`step_options` (a fit starts here).
    step_inputs: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def categories(self) -> dict[Category, int]:
        """Bytes per category, in the fixed category order."""
        return dict(zip(CATEGORIES, self.bytes, strict=True))

    @property
    def allocated(self) -> int:
        """Bytes PyTorch tensors take: the sum of the categories and the SSM state line."""
        return sum(self.bytes) + self.ssm_state

    @property
    def category_sources(self) -> dict[Category, str]:
        """Where each category's figure comes from (measured, approximate, not estimated)."""
        sources = self.sources or (self.source,) * len(CATEGORIES)
        return dict(zip(CATEGORIES, sources, strict=True))

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
            "source": self.source,
            "sources": {str(c): s for c, s in self.category_sources.items()},
            "ssm_state_bytes": self.ssm_state,
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "max_positions": self.max_positions,
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

    def _repr_html_(self) -> str:
        """The estimate as HTML for notebooks (:func:`profiler.notebook.estimate_html`)."""
        from profiler.notebook import estimate_html

        return estimate_html(self)


# ---------------------------------------------------------------------------------------------


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UsageError(f"{name} must be a whole number, got {value!r}")
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}")
    return int(value)


#: A live module's floating dtype, as the format that stores it.
_MODULE_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def _dense_bytes(dtype_name: str, what: str = "dtype") -> int:
    """Bytes per element of a dense dtype name (fp32, fp16, bf16 and their aliases)."""
    try:
        fmt = find_format(dtype_name)
    except UnknownNameError:
        fmt = None
    if fmt is None or fmt.kind != "dense":
        raise UnknownNameError(what, str(dtype_name), ["fp32", "fp16", "bf16"])
    return int(fmt.bytes_per_param)


def _default_precision(mode: str, source: Source) -> str:
    if mode == "qlora":
        return "nf4"
    if source.module is not None:  # a live module: stored as it is
        for p in source.module.parameters():
            if str(p.dtype) in _MODULE_DTYPES:
                return _MODULE_DTYPES[str(p.dtype)]
    return "fp16"


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
    measure_step: bool = True,
    step_fit: StepFit | None = None,
) -> Estimate:
    """Predict device memory per category before running anything.

    Args:
        model: an ``nn.Module`` (real or on the meta device), a Hugging Face style config (dict,
            path to ``config.json`` or its directory), a preset name, a Hugging Face model id
            (its config only), or a parameter count. Where transformers knows the config's
            ``model_type`` the figures are measured on the real class (``Estimate.source``).
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
        measure_step: measure activations and temporaries by a dry run of the real class at
            this batch and seq (the default where transformers knows the config: well under a
            second per layer group, see ``predict.stepmeasure``); ``False`` takes them from the
            formulas (labelled "approximate (formulas)"), as does a config the dry run cannot
            run (MoE routing, quantised weights), with a note saying why.
        step_fit: take activations and temporaries from this fit of dry runs instead
            (:func:`profiler.predict.stepmeasure.fit_step`; the ``--gpu`` searches use it).

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
    source = resolve(model, params)
    limit = source.max_positions
    seq = _positive("seq", seq if seq is not None else min(2048, limit or 2048))
    notes: list[str] = []
    if limit is not None and seq > limit:
        notes.append(f"seq {seq} is beyond the model's max_position_embeddings ({limit})")
    fmt = find_format(precision or _default_precision(mode, source))
    _check_combination(mode, fmt, precision)
    spec = (find_gpu(gpu) if isinstance(gpu, str) else gpu) if gpu is not None else None
    plan = _Plan(
        source=source,
        fmt=fmt,
        mode=mode,
        optimizer=optimizer,
        batch=batch,
        seq=seq,
        attention=attention,
        checkpointing=gradient_checkpointing,
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        measure_step=measure_step,
        step_fit=step_fit,
    )
    values = dict.fromkeys(CATEGORIES, 0)
    _weights(plan, values)
    trainable, stepped = _training_state(
        plan, values, notes, master_weights=master_weights, optimizer_dtype=optimizer_dtype
    )
    # the cache is held in inference; in training its per-token size is still reported
    ssm_state, per_token = _cache(plan, values if mode == "inference" else {}, kv_cache_dtype)
    ssm_state = ssm_state if mode == "inference" else 0
    step_source = _measured_step(plan, values, notes)
    if step_source is None:
        _activations(plan, values, notes, trainable, stepped)
    allocated = sum(values.values()) + ssm_state
    overheads = _overheads(allocated, margin, context_bytes, spec)
    return Estimate(
        model=source.name,
        mode=mode,
        precision=fmt.name,
        optimizer=optimizer if mode != "inference" else None,
        batch=batch,
        seq=seq,
        parameters=source.parameters,
        trainable_parameters=trainable,
        bytes=tuple(values[c] for c in CATEGORIES),
        overheads=overheads,
        notes=tuple(notes),
        margin_fraction=margin,
        source=source.label,
        sources=_category_sources(plan, step_source),
        ssm_state=ssm_state,
        max_positions=limit,
        kv_bytes_per_token=per_token,
        step_inputs=(
            {"config": source.config, "window": _window(plan), **step_options(plan)}
            if step_source is not None and plan.step_fit is None
            else None
        ),
    )


def _overheads(
    allocated: int, margin: float, context_bytes: int | None, spec: GpuSpec | None
) -> tuple[Overhead, ...]:
    """The CUDA context and allocator margin lines."""
    context = (
        context_bytes
        if context_bytes is not None
        else (spec.context_bytes if spec is not None else _DEFAULT_CONTEXT)
    )
    return (
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


@dataclass(frozen=True, slots=True)
class _Plan:
    """The resolved inputs of one estimate."""

    source: Source
    fmt: WeightFormat
    mode: str
    optimizer: str
    batch: int
    seq: int
    attention: str
    checkpointing: bool
    lora_rank: int
    lora_targets: str
    measure_step: bool = True
    step_fit: StepFit | None = None

    @property
    def compute(self) -> str:
        return self.fmt.name if self.fmt.kind == "dense" else "fp16"

    @property
    def act_bytes(self) -> int:
        return _dense_bytes(self.compute)

    @property
    def measured(self) -> MeasuredModel | None:
        return self.source.measured

    @property
    def adapters_present(self) -> bool:
        """A live module that already has frozen weights and trainable parameters (PEFT)."""
        m = self.measured
        return self.source.module is not None and m is not None and 0 < m.trainable < m.parameters


def _category_sources(plan: _Plan, step_source: str | None) -> tuple[str, ...]:
    measured = "measured" if plan.measured is not None else APPROXIMATE
    rows = []
    for category in CATEGORIES:
        if category in (Category.ACTIVATIONS, Category.TEMPORARIES) and step_source:
            rows.append(step_source)
        elif category in (Category.ACTIVATIONS, Category.TEMPORARIES):
            rows.append(APPROXIMATE if plan.source.shape is not None else "not estimated")
        elif category == Category.KV_CACHE and plan.mode != "inference":
            rows.append("none in training")
        elif category == Category.KV_CACHE and plan.measured is not None:
            rows.append(measured if plan.measured.kv_per_token is not None else APPROXIMATE)
        else:
            rows.append(measured)
    return tuple(rows)


def _weights(plan: _Plan, values: dict[Category, int]) -> None:
    shape, m = plan.source.shape, plan.measured
    if m is not None:
        values[Category.WEIGHTS] = m.weight_bytes(plan.fmt)
        values[Category.BUFFERS] = m.buffer_bytes(plan.act_bytes)
    elif shape is not None:
        values[Category.WEIGHTS] = weight_bytes(shape, plan.fmt)
        if not shape.learned_positions:
            # rotary inv_freq and original_inv_freq buffers: head_dim / 2 fp32 values each
            values[Category.BUFFERS] = shape.head_dim * 4
    else:
        values[Category.WEIGHTS] = int(round(plan.source.parameters * _flat_bytes(plan.fmt)))


def _training_state(
    plan: _Plan,
    values: dict[Category, int],
    notes: list[str],
    *,
    master_weights: bool | None,
    optimizer_dtype: str | None,
) -> tuple[int, int]:
    """Gradients and optimizer state; returns (trainable parameters, bytes the step updates)."""
    m, mode = plan.measured, plan.mode
    if mode == "train":
        trainable = plan.source.parameters
        if plan.source.module is not None and m is not None and m.trainable < m.parameters:
            trainable = m.trainable
            notes.append(f"{trainable:,} trainable parameters (requires_grad), the rest frozen")
        values[Category.GRADIENTS] = trainable * plan.act_bytes
        master = plan.fmt.name != "fp32" if master_weights is None else master_weights
        state = _dense_bytes(optimizer_dtype or plan.compute, "optimizer dtype")
        whole = trainable == plan.source.parameters
        values[Category.OPTIMIZER] = _optimizer_bytes(
            plan.optimizer, plan.source.shape, trainable, state, m if whole else None
        ) + (trainable * 4 if master else 0)
        return trainable, 4 if master else state
    if mode not in ("lora", "qlora"):
        return 0, 4
    state = _dense_bytes(optimizer_dtype, "optimizer dtype") if optimizer_dtype else 4
    if plan.adapters_present and m is not None:
        trainable, grad_bytes = m.trainable, m.trainable_bytes
        notes.append(f"the module's own {trainable:,} trainable (adapter) parameters")
    else:
        trainable = _lora_count(plan)
        values[Category.WEIGHTS] += trainable * 4  # adapters kept in fp32
        grad_bytes = trainable * 4
        notes.append(
            f"LoRA rank {plan.lora_rank} on {plan.lora_targets} "
            f"({trainable:,} fp32 adapter parameters)"
        )
    values[Category.GRADIENTS] = grad_bytes
    values[Category.OPTIMIZER] = _optimizer_bytes(plan.optimizer, None, trainable, state)
    return trainable, 4


def _lora_count(plan: _Plan) -> int:
    if plan.lora_targets not in ("all-linear", "attention", "qv"):
        raise UnknownNameError(
            "LoRA target set", plan.lora_targets, ["all-linear", "attention", "qv"]
        )
    if plan.measured is not None and plan.measured.matrices:
        return plan.measured.lora_parameters(plan.lora_rank, plan.lora_targets)
    if plan.source.shape is None:
        raise UsageError(
            f"{plan.mode} needs the model's shape to size the adapters",
            hint="pass a preset name or a config instead of a bare parameter count",
        )
    return lora_parameter_count(plan.source.shape, plan.lora_rank, plan.lora_targets)


def _cache(
    plan: _Plan, values: dict[Category, int], kv_dtype: str | None
) -> tuple[int, int | None]:
    """KV cache (and SSM state) after a prefill of ``seq`` tokens; returns (state, per token)."""
    kv_bytes = _dense_bytes(kv_dtype, "KV cache dtype") if kv_dtype else plan.act_bytes
    m, shape = plan.measured, plan.source.shape
    if m is not None and m.kv_per_token is not None:
        values[Category.KV_CACHE] = (
            (m.kv_per_token * plan.seq + m.kv_constant) * plan.batch * kv_bytes
        )
        return m.state_elements * plan.batch * plan.act_bytes, m.kv_per_token * kv_bytes
    if shape is not None:
        values[Category.KV_CACHE] = kv_cache_bytes(
            shape, tokens=plan.seq, batch=plan.batch, dtype_bytes=kv_bytes
        )
        return 0, kv_cache_bytes(shape, tokens=1, dtype_bytes=kv_bytes)
    return 0, None


def _measured_step(plan: _Plan, values: dict[Category, int], notes: list[str]) -> str | None:
    """Activations and temporaries from dry runs of the real class, where asked and possible."""
    if not plan.measure_step or plan.source.config is None:
        return None
    from profiler.errors import ConfigError, DryRunError
    from profiler.predict.stepmeasure import STEP_SOURCE, measure_step

    m = plan.measured
    if plan.fmt.kind != "dense":
        notes.append(
            f"step not measured ({plan.fmt.name} weights are not dry-run); activations from "
            "the formulas"
        )
        return None
    if plan.source.module is not None and m is not None and m.trainable < m.parameters:
        return _measured_module_step(plan, values, notes)
    if plan.step_fit is not None:
        values[Category.ACTIVATIONS], values[Category.TEMPORARIES] = plan.step_fit.at(
            plan.batch, plan.seq
        )
        return plan.step_fit.label
    try:
        activations, temporaries = measure_step(plan.source.config, **step_options(plan))
    except (DryRunError, ConfigError) as exc:
        notes.append(f"step not measured ({exc.message}); activations from the formulas")
        return None
    values[Category.ACTIVATIONS], values[Category.TEMPORARIES] = activations, temporaries
    if plan.mode == "train" and plan.fmt.name != "fp32":
        notes.append(
            f"the measured step updates {plan.fmt.name} weights in place (no fp32 master "
            f"copy): the optimizer's scratch in temporaries is {plan.fmt.name}"
        )
    if plan.attention == "flash":
        notes.append("flash attention dry-run with the class's default (sdpa where it has it)")
    return STEP_SOURCE


def _measured_module_step(plan: _Plan, values: dict[Category, int], notes: list[str]) -> str | None:
    """A live module with frozen parameters (adapters, a frozen base): its own step dry-run on
    a fake copy, in the module's own dtypes."""
    from profiler.errors import DryRunError
    from profiler.predict.stepmeasure import STEP_SOURCE, measure_module_step

    try:
        activations, temporaries = measure_module_step(
            plan.source.module,
            mode=plan.mode,
            optimizer=plan.optimizer,
            batch=plan.batch,
            seq=plan.seq,
            checkpointing=plan.checkpointing,
        )
    except DryRunError as exc:
        notes.append(f"step not measured ({exc.message}); activations from the formulas")
        return None
    values[Category.ACTIVATIONS], values[Category.TEMPORARIES] = activations, temporaries
    notes.append("the module's own step dry-run on a fake copy (its adapters and frozen weights)")
    return STEP_SOURCE


def _window(plan: _Plan) -> int | None:
    """The shortest sliding window of the model's layers, if any."""
    m = plan.measured
    return min(m.windows) if m is not None and m.windows else None


def step_options(plan: _Plan) -> dict[str, Any]:
    """The keywords of :func:`~profiler.predict.stepmeasure.measure_step` for this plan."""
    return {
        "mode": plan.mode,
        "optimizer": plan.optimizer,
        "batch": plan.batch,
        "seq": plan.seq,
        "precision": plan.fmt.name,
        "checkpointing": plan.checkpointing,
        "lora_rank": plan.lora_rank,
        "lora_targets": plan.lora_targets,
        "attention": plan.attention,
    }


def _activations(
    plan: _Plan, values: dict[Category, int], notes: list[str], trainable: int, stepped: int
) -> None:
    shape = plan.source.shape
    batch, seq, act = plan.batch, plan.seq, plan.act_bytes
    if shape is None:
        if plan.source.module is not None and getattr(plan.source.module, "config", None) is None:
            notes.append("no transformers config: activations need a dry run (profiler.dry_run)")
        elif plan.measured is not None:
            notes.append(
                "activations and temporaries not estimated: the formulas do not cover this "
                "architecture (measure a step with profiler.dry_run)"
            )
        else:
            notes.append("bare parameter count: activations and KV cache not estimated")
        return
    if plan.mode == "inference":
        values[Category.ACTIVATIONS] = inference_activation_bytes(
            shape, batch=batch, seq=seq, act_bytes=act, attention=plan.attention
        )
        if plan.fmt.kind not in ("dense", "flat"):
            biggest = max(m.in_features * m.out_features for m in _matrices(shape))
            values[Category.TEMPORARIES] = biggest * 2  # one matrix dequantised at a time
        return
    values[Category.ACTIVATIONS] = training_activation_bytes(
        shape,
        batch=batch,
        seq=seq,
        act_bytes=act,
        attention=plan.attention,
        checkpointing=plan.checkpointing,
    )
    if plan.mode in ("lora", "qlora"):
        per_layer = lora_target_count(shape, plan.lora_targets)
        values[Category.ACTIVATIONS] += (
            shape.num_layers * per_layer * batch * seq * plan.lora_rank * act
        )
    values[Category.TEMPORARIES] = _training_temporaries(
        shape,
        plan.fmt,
        plan.optimizer,
        trainable,
        stepped,
        batch,
        seq,
        values[Category.ACTIVATIONS],
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


def _optimizer_bytes(
    optimizer: str,
    shape: ModelShape | None,
    trainable: int,
    state: int,
    measured: MeasuredModel | None = None,
) -> int:
    if optimizer == "adafactor":
        if measured is not None:  # factored second moment of every real parameter shape
            return measured.adafactor_elements * state
        return adafactor_state_bytes(shape, trainable, state)
    if optimizer == "adamw-8bit" and measured is not None:
        # bitsandbytes' rule per real tensor: fp32 state below 4096 elements, else uint8
        # moments and one fp32 absmax per 256-element block each, plus the two shared maps
        return measured.adam8_bytes + ADAM8_QMAPS
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
