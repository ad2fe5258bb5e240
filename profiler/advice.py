"""Fix suggestions sized from what was measured: each says how many bytes it saves and whether
the run then fits.

The model of the run is a handful of *moments* (the bytes per category at each sample, at each
step's peak, at the overall peak and at the failure), each split into a part that does not depend
on the batch size (weights, buffers, gradients, optimizer state, temporaries outside forward and
backward, other) and a part that grows with it (activations, KV cache, and the temporaries of
forward and backward). The peak after a change is the highest moment after applying the change
to every moment; a change saves ``peak_now - peak_after`` bytes and fits when
``peak_after + overhead <= capacity``.

Steady state: a stateful optimizer creates its state in the first step, so every moment is
charged at least the full optimizer state (the larger of the measured one and the prediction
from the optimizer's class), and the optimizer step is charged every gradient. That makes the
advice the same whether it is computed at an OOM or ahead of time on a run that fits, as long as
the moment that sets the peak was measured before the failure: true for the common OOM in the
second step (the first step fit; the optimizer state tipped it over). An OOM in the middle of the
very first forward pass has seen only part of the activations, so its batch size is an upper
bound there, and the report says which step and phase it failed in.

Everything here is a pure function of :class:`RunFacts`; :func:`suggest` builds them from a
tracker. No pandas, no device access.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from profiler.errors import UsageError
from profiler.records import CATEGORIES, Category, Phase
from profiler.units import format_bytes, parse_bytes

__all__ = [
    "KINDS",
    "Moment",
    "RunFacts",
    "Suggestion",
    "facts_from_tracker",
    "largest_batch",
    "peak_after",
    "rank",
    "suggest",
]

#: Every suggestion kind, in the order used to break ties of equal savings.
KINDS: tuple[str, ...] = (
    "batch_size",
    "checkpointing",
    "precision",
    "optimizer",
    "offload",
    "lora",
    "quantization",
    "kv_cache",
    "allocator",
    "other_processes",
)

_I = {c: i for i, c in enumerate(CATEGORIES)}
_N = len(CATEGORIES)
_SCALING_PHASES = frozenset({str(Phase.FORWARD), str(Phase.BACKWARD)})
_ADAM_LIKE = frozenset({"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "FusedAdam", "LAMB", "Lamb"})
_LORA_TRAINABLE_FRACTION = 0.01
_INT4_BYTES_PER_PARAM = 0.55  # 4-bit values plus block scales (NF4 with double quantisation)
_INT8_BYTES_PER_PARAM = 1.0
#: What autocast leaves of fp32 activations: half, plus what stays fp32 (residual stream, norms,
#: loss). Measured 0.52 to 0.56 for MLP and GPT-2 blocks on CPU bf16; 0.6 keeps ``fits`` honest.
_AUTOCAST_ACTIVATION_FACTOR = 0.6
#: Models at least this large are worth fine-tuning with LoRA even without a transformers config.
_LORA_MIN_PARAMS = 100_000_000


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One change that shrinks the peak: what to do, bytes saved, and whether the run then fits.

    ``fits`` is ``None`` when no capacity is known. ``params`` holds the change's settings (for
    ``batch_size``: ``batch_size``, ``accumulation_steps``, ``effective_batch``).
    """

    kind: str
    title: str
    saves_bytes: int
    fits: bool | None
    params: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""
    peak_after: int | None = None


@dataclass(frozen=True, slots=True)
class Moment:
    """Bytes per category (``CATEGORIES`` order) at one moment, and the phase it was in."""

    phase: str
    bytes: tuple[int, ...]

    def fixed_and_scaling(self) -> tuple[list[int], list[int]]:
        """The bytes split into what does not grow with the batch and what does."""
        fixed = list(self.bytes)
        scaling = [0] * _N
        for category in (Category.ACTIVATIONS, Category.KV_CACHE):
            i = _I[category]
            scaling[i], fixed[i] = fixed[i], 0
        t = _I[Category.TEMPORARIES]
        if self.phase in _SCALING_PHASES:
            scaling[t], fixed[t] = fixed[t], 0
        return fixed, scaling


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What advice needs to know about a run, all measured or derived from the measurement.

    Args:
        moments: the bytes per category at the moments that may be the peak.
        capacity: the device's size in bytes (``None``: unknown, ``fits`` will be ``None``).
        overhead: bytes on the device outside the tracked tensors (CUDA context, the
            allocator's cache, other processes); 0 on a simulated device.
        batch: the batch size the moments were measured at.
        training: whether a backward pass ran.
        optimizer_class: the optimizer's class name.
        optimizer_bytes: the steady-state optimizer state (measured or predicted).
        gradient_bytes: the gradients once all are accumulated.
        weight_bytes, param_count, trainable_param_count: the model's parameters.
        autocast_dtype: the autocast dtype seen, if any.
        checkpointing: whether activation checkpointing is on (``None``: unknown).
        layer_activations: activation bytes saved per repeated layer (for checkpointing).
        layer_inputs: the bytes of each such layer's input, where known (same order).
        seq: the sequence length seen, if any.
        kv_positions: the positions a live KV cache held, if one was seen (for its advice).
        cached_free: allocator cache that no tensor used at the failure (part of ``overhead``).
        fragmented: whether fragmentation caused the failure (free cache >= the request).
        other_processes: bytes other processes hold on the device (part of ``overhead``).
        other_pids: their process ids.
        pretrained: a model worth fine-tuning with adapters (a transformers model, or one of at
            least 100M parameters): LoRA and QLoRA are suggested only then.
    """

    moments: tuple[Moment, ...]
    capacity: int | None = None
    overhead: int = 0
    batch: int | None = None
    training: bool = False
    optimizer_class: str | None = None
    optimizer_bytes: int = 0
    gradient_bytes: int = 0
    weight_bytes: int = 0
    param_count: int | None = None
    trainable_param_count: int | None = None
    autocast_dtype: str | None = None
    checkpointing: bool | None = None
    layer_activations: tuple[int, ...] = ()
    layer_inputs: tuple[int, ...] = ()
    seq: int | None = None
    kv_positions: int | None = None
    cached_free: int = 0
    fragmented: bool = False
    other_processes: int = 0
    other_pids: tuple[int, ...] = ()
    pretrained: bool = False


# -- the projection ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change:
    """Multiplicative factors on the fixed and the scaling bytes of each category."""

    fixed: tuple[float, ...] = (1.0,) * _N
    scaling: tuple[float, ...] = (1.0,) * _N
    extra: int = 0
    overhead_saved: int = 0


def _factors(**by_name: float) -> tuple[float, ...]:
    values = [1.0] * _N
    for name, factor in by_name.items():
        values[_I[Category(name)]] = factor
    return tuple(values)


_NO_CHANGE = _Change()


def _steady(facts: RunFacts) -> list[tuple[list[int], list[int]]]:
    """Each moment split in fixed and scaling bytes, charged the full optimizer state."""
    o = _I[Category.OPTIMIZER]
    result = []
    for moment in facts.moments:
        fixed, scaling = moment.fixed_and_scaling()
        if fixed[o] < facts.optimizer_bytes:
            fixed[o] = facts.optimizer_bytes
        result.append((fixed, scaling))
    if facts.training and facts.moments:
        # The optimizer step: every gradient and the whole state, whether or not it was seen.
        w, b = _I[Category.WEIGHTS], _I[Category.BUFFERS]
        g = _I[Category.GRADIENTS]
        fixed = [0] * _N
        fixed[w] = max(m.bytes[w] for m in facts.moments)
        fixed[b] = max(m.bytes[b] for m in facts.moments)
        fixed[g] = facts.gradient_bytes
        fixed[o] = facts.optimizer_bytes
        result.append((fixed, [0] * _N))
    return result


def peak_after(facts: RunFacts, change: _Change = _NO_CHANGE) -> int:
    """The tracked peak (without ``overhead``) after ``change``, over every moment."""
    best = 0
    for fixed, scaling in _steady(facts):
        total = float(change.extra)
        for i in range(_N):
            total += fixed[i] * change.fixed[i] + scaling[i] * change.scaling[i]
        best = max(best, math.ceil(round(total, 6)))
    return best


def largest_batch(facts: RunFacts, capacity: int, *, limit: int = 1 << 24) -> int:
    """The largest batch whose projected peak fits ``capacity`` (0 if not even one sample fits).

    Exact integer arithmetic: batch ``b`` fits when, at every moment,
    ``fixed + scaling * b / batch <= capacity - overhead``.
    """
    batch = facts.batch
    if not batch:
        return 0
    available = capacity - facts.overhead
    best = limit
    for fixed, scaling in _steady(facts):
        room = available - sum(fixed)
        if room < 0:
            return 0
        grows = sum(scaling)
        if grows > 0:
            best = min(best, room * batch // grows)
    return max(best, 0)


# -- the suggestions --------------------------------------------------------------------------


def _fits(facts: RunFacts, capacity: int | None, after: int, change: _Change) -> bool | None:
    if capacity is None:
        return None
    return after + facts.overhead - change.overhead_saved <= capacity


def _make(
    facts: RunFacts,
    capacity: int | None,
    now: int,
    kind: str,
    title: str,
    change: _Change,
    params: Mapping[str, Any],
    detail: str,
) -> Suggestion:
    after = peak_after(facts, change)
    saves = now - after + change.overhead_saved
    return Suggestion(
        kind=kind,
        title=title,
        saves_bytes=int(saves),
        fits=_fits(facts, capacity, after, change),
        params=dict(params),
        detail=detail,
        peak_after=int(after + facts.overhead - change.overhead_saved),
    )


def _batch_suggestion(facts: RunFacts, capacity: int | None, now: int) -> Suggestion | None:
    batch = facts.batch
    if not batch or not any(sum(m.fixed_and_scaling()[1]) for m in facts.moments):
        return None
    if capacity is None:
        new = max(batch // 2, 1)
        if new == batch:
            return None
    else:
        new = largest_batch(facts, capacity)
        if new == batch or new >= 1 << 24:
            return None
    new_for_peak = max(new, 1)
    ratio = new_for_peak / batch
    change = _Change(scaling=(ratio,) * _N)
    steps = max(math.ceil(batch / new_for_peak), 1)
    micro = math.ceil(batch / steps)
    params: dict[str, Any] = {
        "batch_size": new,
        "accumulation_steps": steps,
        "micro_batch": micro,
        "effective_batch": micro * steps,
    }
    if new < 1:
        title = "Even a batch of 1 does not fit: the fixed memory alone exceeds the device"
        params = {"batch_size": 0, "accumulation_steps": 0, "micro_batch": 0, "effective_batch": 0}
        suggestion = _make(facts, capacity, now, "batch_size", title, change, params, "")
        return replace(suggestion, fits=False)
    grows = max(sum(m.fixed_and_scaling()[1]) for m in facts.moments)
    per_sample = grows // batch
    if new < batch:
        title = f"Reduce the batch size from {batch} to {new}"
        if capacity is not None:
            title += " (the largest that fits)"
        if steps > 1 and facts.training:
            title += (
                f"; to keep the effective batch of {batch}, accumulate gradients over {steps} "
                f"micro-batches of {micro}"
            )
    if new >= batch:
        title = f"The batch size can grow from {batch} to {new}"
    if new >= batch or not facts.training:
        params = {
            "batch_size": new,
            "accumulation_steps": 1,
            "micro_batch": new,
            "effective_batch": new,
        }
    fits = None if capacity is None else True  # largest_batch sized it exactly
    detail = (
        f"Activations and batch-sized temporaries take {format_bytes(per_sample)} per sample "
        f"at the peak; weights, gradients and optimizer state do not shrink with the batch."
    )
    suggestion = _make(facts, capacity, now, "batch_size", title, change, params, detail)
    return replace(suggestion, fits=fits)


def _checkpointing_suggestion(facts: RunFacts, capacity: int | None, now: int) -> Suggestion | None:
    if not facts.training or facts.checkpointing:
        return None
    layers = facts.layer_activations
    a = _I[Category.ACTIVATIONS]
    total_acts = max((m.bytes[a] for m in facts.moments), default=0)
    if len(layers) < 2 or total_acts <= 0:
        return None
    inputs = facts.layer_inputs if len(facts.layer_inputs) == len(layers) else ()
    # Without measured inputs, assume each layer keeps a quarter of what it saved.
    kept = sum(inputs) if inputs else sum(layers) // 4
    after_acts = total_acts - sum(layers) + kept + max(layers)
    if after_acts >= total_acts:
        return None
    ratio = max(after_acts, 0) / total_acts
    change = _Change(scaling=_factors(activations=ratio))
    title = f"Turn on activation checkpointing in the {len(layers)} repeated layers"
    detail = (
        f"Keeps each layer's input and recomputes one layer at a time in backward: activations "
        f"{format_bytes(total_acts)} -> about {format_bytes(after_acts)}. "
        "model.gradient_checkpointing_enable() (transformers) or torch.utils.checkpoint; costs "
        "about one extra forward pass."
    )
    params = {"layers": len(layers), "activations_after": int(after_acts)}
    return _make(facts, capacity, now, "checkpointing", title, change, params, detail)


def _bytes_per_param(facts: RunFacts) -> float | None:
    if not facts.param_count or facts.weight_bytes <= 0:
        return None
    return facts.weight_bytes / facts.param_count


def _precision_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    bpp = _bytes_per_param(facts)
    if facts.autocast_dtype is not None or bpp is None or bpp < 3.5:
        return []
    if facts.training:
        change = _Change(
            scaling=_factors(
                activations=_AUTOCAST_ACTIVATION_FACTOR,
                temporaries=_AUTOCAST_ACTIVATION_FACTOR,
                kv_cache=0.5,
            ),
            extra=facts.weight_bytes // 2,
        )
        title = "Run forward and loss under torch.autocast(dtype=torch.bfloat16)"
        detail = (
            "Roughly halves the fp32 activations (0.6 assumed: the residual stream and the loss stay "
            "fp32); autocast keeps a 16-bit copy of the weights it uses "
            f"(+{format_bytes(facts.weight_bytes // 2)}). Use float16 with a GradScaler on GPUs "
            "without bf16."
        )
        params = {"dtype": "bfloat16", "how": "autocast"}
    else:
        change = _Change(
            fixed=_factors(weights=0.5, buffers=0.5),
            scaling=_factors(activations=0.5, temporaries=0.5, kv_cache=0.5),
        )
        title = "Load the model in bfloat16 (model.to(torch.bfloat16))"
        detail = "Halves weights, activations and KV cache of an fp32 model for inference."
        params = {"dtype": "bfloat16", "how": "cast"}
    return [_make(facts, capacity, now, "precision", title, change, params, detail)]


def _optimizer_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    state = facts.optimizer_bytes
    if not facts.training or state <= 0:
        return []
    result = []
    trainable = facts.trainable_param_count or facts.param_count
    if facts.optimizer_class in _ADAM_LIKE and trainable:
        new_state = 2 * trainable  # two 8-bit states per parameter
        if new_state < state:
            change = _Change(fixed=_factors(optimizer=new_state / state))
            title = "Use an 8-bit or paged Adam (bitsandbytes.optim.AdamW8bit / PagedAdamW8bit)"
            detail = (
                f"Optimizer state {format_bytes(state)} -> {format_bytes(new_state)} "
                "(2 bytes per parameter instead of "
                f"{state / trainable:.0f}); the paged variant also spills to CPU under pressure."
            )
            params = {"optimizer": "bitsandbytes.optim.AdamW8bit", "state_bytes": new_state}
            result.append(_make(facts, capacity, now, "optimizer", title, change, params, detail))
    change = _Change(fixed=_factors(optimizer=0.0))
    title = "Offload the optimizer state to the CPU"
    detail = (
        f"Moves {format_bytes(state)} of optimizer state to host memory (DeepSpeed ZeRO-Offload, "
        "FSDP CPU offload or torchao's CPUOffloadOptimizer); steps get slower."
    )
    params = {"target": "cpu", "moved_bytes": state}
    result.append(_make(facts, capacity, now, "offload", title, change, params, detail))
    return result


def _lora_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    if not facts.training or not facts.pretrained:
        return []
    if facts.gradient_bytes + facts.optimizer_bytes <= 0:
        return []
    keep = _LORA_TRAINABLE_FRACTION
    result = []
    change = _Change(fixed=_factors(gradients=keep, optimizer=keep))
    title = "Fine-tune with LoRA adapters instead of every weight (peft)"
    detail = (
        "Freezes the base weights: gradients and optimizer state shrink to the adapters' (about "
        f"{keep:.0%} of the parameters at rank 16)."
    )
    result.append(
        _make(facts, capacity, now, "lora", title, change, {"method": "lora", "rank": 16}, detail)
    )
    bpp = _bytes_per_param(facts)
    if bpp is not None and bpp > _INT4_BYTES_PER_PARAM:
        change = _Change(
            fixed=_factors(gradients=keep, optimizer=keep, weights=_INT4_BYTES_PER_PARAM / bpp)
        )
        title = "Fine-tune with QLoRA: 4-bit base weights plus LoRA adapters"
        detail = "As LoRA, and the frozen base weights are stored in 4-bit NF4 (bitsandbytes)."
        params = {"method": "qlora", "rank": 16, "bits": 4}
        result.append(_make(facts, capacity, now, "lora", title, change, params, detail))
    return result


def _quantization_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    bpp = _bytes_per_param(facts)
    if facts.training or bpp is None:
        return []
    result = []
    for bits, per_param in ((8, _INT8_BYTES_PER_PARAM), (4, _INT4_BYTES_PER_PARAM)):
        if per_param >= bpp:
            continue
        change = _Change(fixed=_factors(weights=per_param / bpp))
        title = f"Quantize the weights to INT{bits} for inference"
        detail = (
            f"Weights {format_bytes(facts.weight_bytes)} -> "
            f"{format_bytes(int(facts.weight_bytes * per_param / bpp))} "
            f"(bitsandbytes, torchao, GPTQ or AWQ); small quality loss."
        )
        params = {"bits": bits}
        result.append(_make(facts, capacity, now, "quantization", title, change, params, detail))
    return result


def _kv_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    k = _I[Category.KV_CACHE]
    kv = max((m.bytes[k] for m in facts.moments), default=0)
    if kv <= 0:
        return []
    result = []
    if capacity is None:
        fraction = 0.5
    else:
        fraction = _largest_fraction(
            facts, capacity, lambda f: _Change(scaling=_factors(kv_cache=f))
        )
    if fraction < 1.0:
        change = _Change(scaling=_factors(kv_cache=fraction))
        params: dict[str, Any] = {"fraction": round(fraction, 4), "kv_bytes": int(kv * fraction)}
        if facts.kv_positions:
            params["max_positions"] = int(facts.kv_positions * fraction)
        limit = (
            f"{params['max_positions']} positions"
            if "max_positions" in params
            else f"{fraction:.0%} of its peak size"
        )
        title = f"Cap the KV cache at {limit}: a shorter context, a sliding window or a paged cache"
        detail = (
            f"The KV cache holds {format_bytes(kv)} at the peak and grows with every token; a "
            "sliding-window (or paged, allocated on demand) cache bounds it."
        )
        result.append(_make(facts, capacity, now, "kv_cache", title, change, params, detail))
    change = _Change(scaling=_factors(kv_cache=0.5))
    title = "Quantize the KV cache to 8 bits (transformers QuantizedCache)"
    detail = f"Halves a 16-bit KV cache ({format_bytes(kv)} at the peak)."
    result.append(_make(facts, capacity, now, "kv_cache", title, change, {"bits": 8}, detail))
    return result


def _largest_fraction(
    facts: RunFacts, capacity: int, change_for: Callable[[float], _Change]
) -> float:
    """The largest factor in [0, 1] (to 1/1000) whose change fits, by bisection."""
    if peak_after(facts, change_for(1.0)) + facts.overhead <= capacity:
        return 1.0
    lo, hi = 0.0, 1.0
    if peak_after(facts, change_for(0.0)) + facts.overhead > capacity:
        return 0.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if peak_after(facts, change_for(mid)) + facts.overhead <= capacity:
            lo = mid
        else:
            hi = mid
    return math.floor(lo * 1000) / 1000


def _device_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    result = []
    params: dict[str, Any]
    if facts.fragmented and facts.cached_free > 0:
        change = _Change(overhead_saved=facts.cached_free)
        title = "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
        detail = (
            f"The allocator held {format_bytes(facts.cached_free)} free but in pieces too small "
            "for the request: expandable segments grow one segment instead of fragmenting."
        )
        params = {"env": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"}
        result.append(_make(facts, capacity, now, "allocator", title, change, params, detail))
    if facts.other_processes > 0:
        change = _Change(overhead_saved=facts.other_processes)
        pids = ", ".join(str(p) for p in facts.other_pids) or "unknown"
        title = f"Free the GPU: other processes hold {format_bytes(facts.other_processes)}"
        detail = f"Processes {pids} hold memory on this GPU (see nvidia-smi)."
        params = {"pids": list(facts.other_pids), "bytes": facts.other_processes}
        result.append(_make(facts, capacity, now, "other_processes", title, change, params, detail))
    return result


def rank(facts: RunFacts, capacity: int | None = None) -> list[Suggestion]:
    """Every applicable suggestion for ``facts``, most bytes saved first.

    Args:
        facts: the measured run.
        capacity: the device size to fit (default: ``facts.capacity``).
    """
    if capacity is None:
        capacity = facts.capacity
    if not facts.moments:
        return []
    now = peak_after(facts)
    found: list[Suggestion] = []
    batch = _batch_suggestion(facts, capacity, now)
    if batch is not None:
        found.append(batch)
    checkpointing = _checkpointing_suggestion(facts, capacity, now)
    if checkpointing is not None:
        found.append(checkpointing)
    for make in (
        _precision_suggestions,
        _optimizer_suggestions,
        _lora_suggestions,
        _quantization_suggestions,
        _kv_suggestions,
        _device_suggestions,
    ):
        found.extend(make(facts, capacity, now))
    found = [s for s in found if s.saves_bytes > 0 or s.kind == "batch_size"]
    order = {kind: i for i, kind in enumerate(KINDS)}
    found.sort(key=lambda s: (-s.saves_bytes, order.get(s.kind, len(order)), s.title))
    return found


# -- from a tracker ---------------------------------------------------------------------------


def _layer_groups(
    own: Mapping[str, int], inclusive: Mapping[str, int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per layer of the largest group of numbered siblings (``h.0``, ``h.1``, ...): the
    activation bytes it saved, and an estimate of its input's bytes.

    The input is estimated as what the first of the layer's submodules to run saved (a norm or a
    linear layer saves its input); ``own`` and ``inclusive`` are in the order modules first ran.
    """
    groups: dict[str, dict[int, str]] = {}
    for name in inclusive:
        parent, _, last = name.rpartition(".")
        if last.isdigit():
            groups.setdefault(parent, {})[int(last)] = name
    best: list[str] = []
    best_bytes = 0
    for members in groups.values():
        names = [members[i] for i in sorted(members)]
        total = sum(inclusive[n] for n in names)
        if len(names) >= 2 and total > best_bytes:
            best, best_bytes = names, total
    layers = tuple(int(inclusive[n]) for n in best)
    inputs = []
    for layer in best:
        prefix = layer + "."
        first = next((v for n, v in own.items() if n.startswith(prefix) and v > 0), None)
        inputs.append(int(first) if first is not None else 0)
    if not all(inputs):
        return layers, ()
    return layers, tuple(inputs)


def _module_activations(tracker: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Own and inclusive activation bytes per module FQN, in the order modules first ran.

    A module's own bytes are what it saved itself (its highest step); inclusive adds every
    descendant's (by FQN prefix).
    """
    own: dict[str, int] = {}
    stats = getattr(tracker, "_module_stats", None)
    if isinstance(stats, dict):
        for name, s in stats.items():
            try:
                own[str(name)] = int(max(s[1], s[2]))
            except (IndexError, TypeError):
                continue
    else:
        try:
            frame = tracker.modules()
        except Exception:  # noqa: BLE001 - checkpointing advice is optional
            return {}, {}
        own = {str(name): int(value) for name, value in frame["activations"].items()}
    inclusive = {}
    for name in own:
        prefix = name + "."
        inclusive[name] = own[name] + sum(v for n, v in own.items() if n.startswith(prefix))
    return own, inclusive


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _device_facts(
    tracker: Any, capacity_given: bool
) -> tuple[int, int, bool, int, tuple[int, ...]]:
    """overhead, cached_free, fragmented, other processes' bytes and pids, from the device."""
    failure = tracker.failure
    device = getattr(tracker, "device", None)
    if getattr(device, "type", "cpu") != "cuda" or (failure is not None and failure.simulated):
        return 0, 0, False, 0, ()
    samples = list(getattr(tracker, "samples", []) or [])
    last = samples[-1] if samples else None
    allocator = getattr(last, "allocator", None)
    nvml = getattr(last, "nvml", None)
    cached_free = 0
    if allocator is not None:
        cached_free = max(int(allocator.reserved) - int(allocator.allocated), 0)
    others, pids = 0, tuple[int, ...]()
    try:
        from profiler.backends import nvml as nvml_backend

        source = nvml_backend.default_source()
        index = source.nvml_index(getattr(device, "index", None))
        own = getattr(tracker, "pid", None)
        rows = [
            p
            for p in source.processes()
            if p.pid != own and (index is None or p.device_index == index)
        ]
        others = sum(p.gpu_memory or 0 for p in rows)
        pids = tuple(p.pid for p in rows)
    except Exception:  # noqa: BLE001 - NVML is optional
        pass
    requested = failure.requested if failure is not None else None
    fragmented = requested is not None and 0 < requested <= cached_free
    if failure is not None and failure.capacity and failure.free is not None:
        overhead = max(failure.capacity - failure.free - failure.total, 0)
    elif nvml is not None and nvml.process_used is not None and allocator is not None:
        overhead = max(int(nvml.process_used) - int(allocator.allocated), 0)
        if not capacity_given:
            overhead += others
    else:
        overhead = 0
    if capacity_given and failure is not None:
        overhead = max(overhead - others, 0)
        others = 0
    return overhead, cached_free, fragmented, others, pids


def _kv_positions(tracker: Any) -> int | None:
    """The most positions any live KV cache of the tracker holds (``None``: none alive)."""
    try:
        lengths = [int(c.get_seq_length()) for c in tracker.kv_caches()]
    except Exception:  # noqa: BLE001 - a cache without get_seq_length, or no tracker support
        return None
    return max(lengths) if lengths else None


def _pretrained(tracker: Any) -> bool:
    """Whether the tracked model looks like one to fine-tune (a config, or 100M+ parameters)."""
    try:
        model = tracker.model
    except Exception:  # noqa: BLE001
        model = None
    if model is not None and getattr(model, "config", None) is not None:
        return True
    return (getattr(tracker, "param_count", None) or 0) >= _LORA_MIN_PARAMS


def facts_from_tracker(tracker: Any, capacity: int | None = None) -> RunFacts:
    """The :class:`RunFacts` of a tracked run (during it, after it, or at its OOM)."""
    ledger = tracker.ledger
    moments: list[Moment] = []
    for sample in getattr(tracker, "samples", []) or []:
        moments.append(Moment(str(sample.phase), tuple(int(v) for v in sample.bytes)))
    a, t = _I[Category.ACTIVATIONS], _I[Category.TEMPORARIES]

    def peak_phase(values: Sequence[int]) -> str:
        return str(Phase.BACKWARD) if values[a] > 0 else str(Phase.OPTIMIZER)

    for record in getattr(tracker, "steps", []) or []:
        values = tuple(int(v) for v in record.peak_bytes)
        if len(values) == _N:
            moments.append(Moment(peak_phase(values), values))
    at_peak = tuple(int(v) for v in getattr(ledger, "at_peak", ()) or ())
    if len(at_peak) == _N:
        moments.append(Moment(peak_phase(at_peak), at_peak))
    failure = tracker.failure
    if failure is not None and failure.requested:
        # The allocation that failed, charged as a temporary on top of the bytes at the failure.
        at_failure = [int(v) for v in failure.sample.bytes]
        at_failure[t] += failure.requested
        moments.append(Moment(str(failure.phase), tuple(at_failure)))

    training = any(str(m.phase) == str(Phase.BACKWARD) for m in moments[: len(moments)])
    category_peak = list(getattr(ledger, "category_peak", [0] * _N))
    predicted = getattr(tracker, "predicted", {}) or {}
    optimizer_class = getattr(tracker, "optimizer_class", None)
    optimizer_bytes = int(category_peak[_I[Category.OPTIMIZER]])
    if training and optimizer_class:
        optimizer_bytes = max(optimizer_bytes, int(predicted.get(Category.OPTIMIZER) or 0))
    gradient_bytes = int(category_peak[_I[Category.GRADIENTS]])
    if training:
        gradient_bytes = max(gradient_bytes, int(predicted.get(Category.GRADIENTS) or 0))
    weight_bytes = max(
        int(category_peak[_I[Category.WEIGHTS]]), int(predicted.get(Category.WEIGHTS) or 0)
    )
    layers, inputs = _layer_groups(*_module_activations(tracker))
    if capacity is None:
        capacity = getattr(tracker, "capacity", None)
        if capacity is None and failure is not None and failure.capacity:
            capacity = failure.capacity
        capacity_given = False
    else:
        capacity_given = True
    overhead, cached_free, fragmented, others, pids = _device_facts(tracker, capacity_given)
    return RunFacts(
        moments=tuple(moments),
        capacity=capacity,
        overhead=overhead,
        batch=getattr(tracker, "observed_batch", None),
        training=training,
        optimizer_class=optimizer_class,
        optimizer_bytes=optimizer_bytes,
        gradient_bytes=gradient_bytes,
        weight_bytes=weight_bytes,
        param_count=getattr(tracker, "param_count", None),
        trainable_param_count=getattr(tracker, "trainable_param_count", None),
        autocast_dtype=_dtype_name(getattr(tracker, "autocast_dtype", None)),
        checkpointing=getattr(tracker, "checkpointing", None),
        layer_activations=layers,
        layer_inputs=inputs,
        seq=getattr(tracker, "observed_seq", None),
        kv_positions=_kv_positions(tracker),
        cached_free=cached_free,
        fragmented=fragmented,
        other_processes=others,
        other_pids=pids,
        pretrained=_pretrained(tracker),
    )


def _capacity_bytes(capacity: str | int) -> int:
    """A size ("24GB", bytes) or a GPU from the catalogue ("rtx4090") as bytes.

    Raises:
        UsageError: neither a size nor a known GPU.
    """
    try:
        return parse_bytes(capacity)
    except UsageError:
        if not isinstance(capacity, str):
            raise
    try:
        from profiler.predict.gpus import find_gpu

        return find_gpu(capacity).memory_bytes
    except (ImportError, UsageError):
        raise UsageError(
            f"not a size or a known GPU: {capacity!r}",
            hint="write a size like 24GB or 80GiB, or a GPU name like rtx4090",
        ) from None


def suggest(tracker: Any, capacity: str | int | None = None) -> list[Suggestion]:
    """Ranked changes that make ``tracker``'s run fit in ``capacity`` (default: its device's).

    ``capacity`` is a size ("24GB", or bytes) or a GPU from the catalogue ("rtx4090", "a100").
    The same list whether called at an OOM or ahead of time on a run that fits (see the module
    docstring for when that holds).

    Raises:
        UsageError: ``capacity`` is neither a size nor a known GPU.
    """
    size = None if capacity is None else _capacity_bytes(capacity)
    return rank(facts_from_tracker(tracker, size), size)
