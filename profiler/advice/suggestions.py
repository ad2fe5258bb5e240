"""The suggestions: each change that shrinks the peak, sized by the projection, and their ranking.

Each maker reads :class:`~profiler.advice.facts.RunFacts` and returns the changes that apply, with
the bytes they save and whether the run then fits; :func:`rank` orders them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from profiler.advice.facts import INDEX, N_CATEGORIES, RunFacts, Suggestion
from profiler.advice.projection import Change, factors, largest_batch, largest_fraction, peak_after
from profiler.advice.verify import Replay, unverified, verify
from profiler.records import Category
from profiler.units import format_bytes

__all__ = ["KINDS", "rank"]

#: Every suggestion kind, in the order used to break ties of equal savings.
KINDS: tuple[str, ...] = (
    "already_fits",
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

_ADAM_LIKE = frozenset({"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "FusedAdam", "LAMB", "Lamb"})
_LORA_TRAINABLE_FRACTION = 0.01
_INT4_BYTES_PER_PARAM = 0.55  # 4-bit values plus block scales (NF4 with double quantisation)
_INT8_BYTES_PER_PARAM = 1.0
#: What autocast leaves of fp32 activations: half, plus what stays fp32 (residual stream, norms,
#: loss). Measured 0.52 to 0.56 for MLP and GPT-2 blocks on CPU bf16; 0.6 keeps ``fits`` honest.
_AUTOCAST_ACTIVATION_FACTOR = 0.6


def _fits(facts: RunFacts, capacity: int | None, after: int, change: Change) -> bool | None:
    if capacity is None:
        return None
    return after + facts.overhead - change.overhead_saved <= capacity


def _make(
    facts: RunFacts,
    capacity: int | None,
    now: int,
    kind: str,
    title: str,
    change: Change,
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
    change = Change(scaling=(ratio,) * N_CATEGORIES)
    params: dict[str, Any]
    if new < 1:
        title = "Even a batch of 1 does not fit: the fixed memory alone exceeds the device"
        params = {"batch_size": 0, "accumulation_steps": 0, "micro_batch": 0, "effective_batch": 0}
        suggestion = _make(facts, capacity, now, "batch_size", title, change, params, "")
        return replace(suggestion, fits=False)
    grows = max(sum(m.fixed_and_scaling()[1]) for m in facts.moments)
    per_sample = grows // batch
    title, params = batch_wording(facts, capacity, new)
    fits = None if capacity is None else True  # largest_batch sized it (verified by a replay)
    detail = (
        f"Activations and batch-sized temporaries take {format_bytes(per_sample)} per sample "
        f"at the peak; weights, gradients and optimizer state do not shrink with the batch."
    )
    suggestion = _make(facts, capacity, now, "batch_size", title, change, params, detail)
    return replace(suggestion, fits=fits)


def batch_wording(facts: RunFacts, capacity: int | None, new: int) -> tuple[str, dict[str, Any]]:
    """The title and params of a batch-size suggestion from ``facts.batch`` to ``new``."""
    batch = facts.batch or new
    steps = max(math.ceil(batch / max(new, 1)), 1)
    micro = math.ceil(batch / steps)
    if new < batch:
        title = f"Reduce the batch size from {batch} to {new}"
        if capacity is not None:
            title += " (the largest that fits)"
        if steps > 1 and facts.training:
            # the micro-batches add up to the batch: sizes micro and micro - 1 where it divides
            # unevenly (each loss then weighted by its micro-batch's share)
            sizes = f"{micro}" if micro * steps == batch else f"{micro - 1}-{micro}"
            title += (
                f"; to keep the effective batch of {batch}, accumulate gradients over {steps} "
                f"micro-batches of {sizes}"
            )
            if micro * steps != batch:
                title += " (weight each micro-batch's loss by its size)"
            params = {
                "batch_size": new,
                "accumulation_steps": steps,
                "micro_batch": micro,
                "effective_batch": batch,
            }
            return title, params
    else:
        title = f"The batch size can grow from {batch} to {new}"
    return title, {
        "batch_size": new,
        "accumulation_steps": 1,
        "micro_batch": new,
        "effective_batch": new,
    }


def _checkpointing_suggestion(facts: RunFacts, capacity: int | None, now: int) -> Suggestion | None:
    if not facts.training or facts.checkpointing:
        return None
    layers = facts.layer_activations
    a = INDEX[Category.ACTIVATIONS]
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
    change = Change(scaling=factors(activations=ratio))
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
        change = Change(
            scaling=factors(
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
        change = Change(
            fixed=factors(weights=0.5, buffers=0.5),
            scaling=factors(activations=0.5, temporaries=0.5, kv_cache=0.5),
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
    if facts.optimizer_class in _ADAM_LIKE and trainable:  # an 8-bit class is not in the set
        new_state = 2 * trainable  # two 8-bit states per parameter
        if new_state < state:
            change = Change(fixed=factors(optimizer=new_state / state))
            title = "Use an 8-bit or paged Adam (bitsandbytes.optim.AdamW8bit / PagedAdamW8bit)"
            detail = (
                f"Optimizer state {format_bytes(state)} -> {format_bytes(new_state)} "
                "(2 bytes per parameter instead of "
                f"{state / trainable:.0f}); the paged variant also spills to CPU under pressure."
            )
            params = {"optimizer": "bitsandbytes.optim.AdamW8bit", "state_bytes": new_state}
            result.append(_make(facts, capacity, now, "optimizer", title, change, params, detail))
    change = Change(fixed=factors(optimizer=0.0))
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
    frozen = (
        facts.trainable_param_count is not None
        and facts.param_count is not None
        and facts.trainable_param_count < facts.param_count
    )
    if frozen:  # adapters (or a frozen base) already: LoRA is in use, or as good as
        return []
    if facts.gradient_bytes + facts.optimizer_bytes <= 0:
        return []
    keep = _LORA_TRAINABLE_FRACTION
    result = []
    change = Change(fixed=factors(gradients=keep, optimizer=keep))
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
        change = Change(
            fixed=factors(gradients=keep, optimizer=keep, weights=_INT4_BYTES_PER_PARAM / bpp)
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
        change = Change(fixed=factors(weights=per_param / bpp))
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
    k = INDEX[Category.KV_CACHE]
    kv = max((m.bytes[k] for m in facts.moments), default=0)
    if kv <= 0:
        return []
    result = []
    if capacity is None:
        fraction = 0.5
    else:
        fraction = largest_fraction(facts, capacity, lambda f: Change(scaling=factors(kv_cache=f)))
    if fraction < 1.0:
        change = Change(scaling=factors(kv_cache=fraction))
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
    change = Change(scaling=factors(kv_cache=0.5))
    title = "Quantize the KV cache to 8 bits (transformers QuantizedCache)"
    detail = f"Halves a 16-bit KV cache ({format_bytes(kv)} at the peak)."
    result.append(_make(facts, capacity, now, "kv_cache", title, change, {"bits": 8}, detail))
    return result


def _device_suggestions(facts: RunFacts, capacity: int | None, now: int) -> list[Suggestion]:
    result = []
    params: dict[str, Any]
    if facts.fragmented and facts.cached_free > 0:
        change = Change(overhead_saved=facts.cached_free)
        title = "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
        detail = (
            f"The allocator held {format_bytes(facts.cached_free)} free but in pieces too small "
            "for the request: expandable segments grow one segment instead of fragmenting."
        )
        params = {"env": "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"}
        result.append(_make(facts, capacity, now, "allocator", title, change, params, detail))
    if facts.other_processes > 0:
        change = Change(overhead_saved=facts.other_processes)
        pids = ", ".join(str(p) for p in facts.other_pids) or "unknown"
        title = f"Free the GPU: other processes hold {format_bytes(facts.other_processes)}"
        detail = f"Processes {pids} hold memory on this GPU (see nvidia-smi)."
        params = {"pids": list(facts.other_pids), "bytes": facts.other_processes}
        result.append(_make(facts, capacity, now, "other_processes", title, change, params, detail))
    return result


def rank(
    facts: RunFacts, capacity: int | None = None, replay: Replay | None = None
) -> list[Suggestion]:
    """Every applicable suggestion for ``facts``, most bytes saved first.

    With a capacity the run already fits in, the first entry says so (``already_fits``, from the
    measured peak). With ``replay`` (see :mod:`profiler.advice.verify`) every suggestion's peak is
    replayed (``verified``) and the batch size is searched on replays; without it they are
    estimates and none says it fits.

    Args:
        facts: the measured run.
        capacity: the device size to fit (default: ``facts.capacity``).
        replay: replays the step with a change applied; ``None``: estimates only.
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
    if replay is None:
        found = [unverified(s, "no replay of the step was available") for s in found]
    else:
        found = verify(
            found, facts, capacity, now, replay, lambda new: batch_wording(facts, capacity, new)
        )
    order = {kind: i for i, kind in enumerate(KINDS)}
    found.sort(key=lambda s: (-s.saves_bytes, order.get(s.kind, len(order)), s.title))
    fitting = _already_fits(facts, capacity, now, replay)
    if fitting is not None:
        found.insert(0, fitting)
    return found


def _already_fits(
    facts: RunFacts, capacity: int | None, now: int, replay: Replay | None
) -> Suggestion | None:
    """The "already fits" entry, when the peak (and the replay of the whole step) fit."""
    if capacity is None:
        return None
    replayed = None
    if replay is not None:
        try:  # an OOM in the first forward saw part of the step: the replay sees all of it
            replayed = int(replay({}))
        except Exception:  # noqa: BLE001 - the measured peak alone then
            replayed = None
    peak = max(now, replayed or 0) + facts.overhead
    if peak > capacity:
        return None
    title = (
        f"The run already fits: its peak {format_bytes(peak)} is within {format_bytes(capacity)}"
    )
    return Suggestion(
        kind="already_fits",
        title=title,
        saves_bytes=0,
        fits=True,
        params={"peak_bytes": peak, "capacity": capacity},
        detail="Measured on this run (and replayed where a replay was possible).",
        peak_after=peak,
        verified=True,
        replayed_peak=replayed,
    )
