"""Reading a run into :class:`~profiler.advice.facts.RunFacts`, and :func:`suggest` on top.

Everything is read through :class:`~profiler.run.RunView`: the samples, the steps' peaks, the
peaks, the failure (and the sample taken at it), the per-module activations, the run's facts, and
on CUDA what NVML says about other processes on the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from profiler.advice.facts import INDEX, N_CATEGORIES, Moment, RunFacts, Suggestion
from profiler.advice.suggestions import rank
from profiler.advice.verify import Replay
from profiler.backends import nvml
from profiler.backends.base import ProcessInfo
from profiler.errors import UsageError
from profiler.records import Category, Phase
from profiler.run import RunView
from profiler.units import parse_bytes
from profiler.waterfall import recorded_readings

__all__ = ["capacity_bytes", "facts_from_run", "layer_groups", "other_processes", "suggest"]

#: Models at least this large are worth fine-tuning with LoRA even without a transformers config.
_LORA_MIN_PARAMS = 100_000_000
_ACTIVATIONS = INDEX[Category.ACTIVATIONS]
_TEMPORARIES = INDEX[Category.TEMPORARIES]


def layer_groups(
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


def _module_activations(run: RunView) -> tuple[dict[str, int], dict[str, int]]:
    """Own and inclusive activation bytes per module FQN, in the order modules first ran.

    A module's own bytes are what it saved itself (its highest step; modules whose activations
    the mode did not measure are left out); inclusive adds every descendant's (by FQN prefix).
    """
    own = {m.name: int(m.activations) for m in run.module_activity() if m.activations is not None}
    inclusive = {}
    for name in own:
        prefix = name + "."
        inclusive[name] = own[name] + sum(v for n, v in own.items() if n.startswith(prefix))
    return own, inclusive


def other_processes(run: RunView) -> list[ProcessInfo] | None:
    """The other processes NVML sees on the run's GPU (``None``: not a GPU, or no NVML)."""
    info = run.info
    if info.device_type != "cuda":
        return None
    try:
        source = nvml.default_source()
        index = source.nvml_index(info.device_index)
        return [
            p
            for p in source.processes()
            if p.pid != info.pid and (index is None or p.device_index == index)
        ]
    except Exception:  # noqa: BLE001 - NVML is optional
        return None


def _device_facts(
    run: RunView, capacity_given: bool
) -> tuple[int, int, bool, int, tuple[int, ...]]:
    """overhead, cached_free, fragmented, other processes' bytes and pids, from the device."""
    failure = run.failure
    if run.info.device_type != "cuda" or (failure is not None and failure.simulated):
        return 0, 0, False, 0, ()
    _, allocator, reading = recorded_readings(run)
    cached_free = 0
    if allocator is not None:
        cached_free = max(int(allocator.reserved) - int(allocator.allocated), 0)
    rows = other_processes(run) or []
    others, pids = sum(p.gpu_memory or 0 for p in rows), tuple(p.pid for p in rows)
    requested = failure.requested if failure is not None else None
    fragmented = requested is not None and 0 < requested <= cached_free
    if failure is not None and failure.capacity and failure.free is not None:
        overhead = max(failure.capacity - failure.free - failure.total, 0)
    elif reading is not None and reading.process_used is not None and allocator is not None:
        overhead = max(int(reading.process_used) - int(allocator.allocated), 0)
        if not capacity_given:
            overhead += others
    else:
        overhead = 0
    if capacity_given and failure is not None:
        overhead = max(overhead - others, 0)
        others = 0
    return overhead, cached_free, fragmented, others, pids


def _kv_positions(run: RunView) -> int | None:
    """The most positions any live KV cache of the run holds (``None``: none alive)."""
    try:
        lengths = [int(c.get_seq_length()) for c in run.kv_caches()]
    except Exception:  # noqa: BLE001 - a cache without get_seq_length
        return None
    return max(lengths) if lengths else None


def _pretrained(run: RunView) -> bool:
    """Whether the tracked model looks like one to fine-tune (a config, or 100M+ parameters)."""
    model = run.model
    if model is not None and getattr(model, "config", None) is not None:
        return True
    return (run.info.param_count or 0) >= _LORA_MIN_PARAMS


def _peak_phase(values: Sequence[int]) -> str:
    """The phase a step's peak was in: backward while activations are alive, else the step."""
    return str(Phase.BACKWARD) if values[_ACTIVATIONS] > 0 else str(Phase.OPTIMIZER)


def _moments(run: RunView) -> tuple[Moment, ...]:
    """Every sample, every step's peak, the overall peak, and the failure with its request."""
    moments = [Moment(str(s.phase), tuple(int(v) for v in s.bytes)) for s in run.samples]
    for record in run.steps:
        values = tuple(int(v) for v in record.peak_bytes)
        if len(values) == N_CATEGORIES:
            moments.append(Moment(_peak_phase(values), values))
    at_peak = tuple(int(v) for v in run.peaks.at_peak)
    if len(at_peak) == N_CATEGORIES:
        moments.append(Moment(_peak_phase(at_peak), at_peak))
    failure = run.failure
    if failure is not None and failure.requested:
        # The allocation that failed, charged as a temporary on top of the bytes at the failure.
        at_failure = [int(v) for v in failure.sample.bytes]
        at_failure[_TEMPORARIES] += failure.requested
        moments.append(Moment(str(failure.phase), tuple(at_failure)))
    return tuple(moments)


def _steady_bytes(run: RunView, training: bool) -> tuple[int, int, int]:
    """Optimizer state, gradients and weights at steady state: measured, or predicted if more."""
    peaks = run.peaks.by_category
    predicted = run.predicted

    def forecast(category: Category) -> int:
        return int(predicted.get(category) or 0)

    optimizer = int(peaks[INDEX[Category.OPTIMIZER]])
    if training and run.info.optimizer_class:
        optimizer = max(optimizer, forecast(Category.OPTIMIZER))
    gradients = int(peaks[INDEX[Category.GRADIENTS]])
    if training:
        gradients = max(gradients, forecast(Category.GRADIENTS))
    weights = max(int(peaks[INDEX[Category.WEIGHTS]]), forecast(Category.WEIGHTS))
    return optimizer, gradients, weights


def facts_from_run(run: RunView, capacity: int | None = None) -> RunFacts:
    """The :class:`RunFacts` of a tracked run (during it, after it, or at its OOM).

    Args:
        run: the run.
        capacity: the device size to fit (default: the run's capacity, else the failure's).
    """
    info = run.info
    failure = run.failure
    moments = _moments(run)
    training = any(m.phase == str(Phase.BACKWARD) for m in moments)
    optimizer_bytes, gradient_bytes, weight_bytes = _steady_bytes(run, training)
    layers, inputs = layer_groups(*_module_activations(run))
    capacity_given = capacity is not None
    if capacity is None:
        capacity = info.capacity
        if capacity is None and failure is not None and failure.capacity:
            capacity = failure.capacity
    overhead, cached_free, fragmented, others, pids = _device_facts(run, capacity_given)
    return RunFacts(
        moments=moments,
        capacity=capacity,
        overhead=overhead,
        batch=info.observed_batch,
        training=training,
        optimizer_class=info.optimizer_class,
        optimizer_bytes=optimizer_bytes,
        gradient_bytes=gradient_bytes,
        weight_bytes=weight_bytes,
        param_count=info.param_count,
        trainable_param_count=info.trainable_param_count,
        autocast_dtype=info.autocast_dtype,
        checkpointing=info.checkpointing,
        layer_activations=layers,
        layer_inputs=inputs,
        seq=info.observed_seq,
        kv_positions=_kv_positions(run),
        cached_free=cached_free,
        fragmented=fragmented,
        other_processes=others,
        other_pids=pids,
        pretrained=_pretrained(run),
    )


def capacity_bytes(capacity: str | int) -> int:
    """A size ("24GB", bytes) or a GPU from the catalogue ("rtx4090") as bytes.

    Raises:
        UsageError: neither a size nor a known GPU.
    """
    try:
        return parse_bytes(capacity)
    except UsageError:
        if not isinstance(capacity, str):
            raise
    # deferred: the predict package imports torch, which a size alone never needs
    from profiler.predict.gpus import find_gpu

    try:
        return find_gpu(capacity).memory_bytes
    except UsageError:
        raise UsageError(
            f"not a size or a known GPU: {capacity!r}",
            hint="write a size like 24GB or 80GiB, or a GPU name like rtx4090",
        ) from None


def suggest(
    run: RunView, capacity: str | int | None = None, replay: Replay | None = None
) -> list[Suggestion]:
    """Ranked changes that make ``run`` fit in ``capacity`` (default: its device's).

    ``capacity`` is a size ("24GB", or bytes) or a GPU from the catalogue ("rtx4090", "a100").
    The same list whether called at an OOM or ahead of time on a run that fits (see
    :mod:`profiler.advice` for when that holds).

    ``replay`` (handed in by the facade, see :mod:`profiler.advice.verify`) replays the step with
    each change applied; without it the suggestions are estimates.

    Raises:
        UsageError: ``capacity`` is neither a size nor a known GPU.
    """
    size = None if capacity is None else capacity_bytes(capacity)
    return rank(facts_from_run(run, size), size, replay)
