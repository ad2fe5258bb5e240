"""``mem.compare()`` kept honest: predictions measured by a replay, checked against a reference.

**Predicted** is measured where it can be: the recorded step of this run replayed on fake tensors
over the real model with no change applied (:class:`~profiler.replay.Replayer`, the same replay
that verifies suggestions), each category's peak in that replay. The replay runs once per
:meth:`HonestCompare.table` call at most, never in the hot path, and is kept until the run
changes (its step, peaks or recorded input). Where it cannot run (inside the block or another
tracker's, no model, no recorded forward, a step fake tensors cannot run, a run that was itself a
dry run) the formulas' figures (:mod:`profiler.predict.tracked`) stand in, labelled ``"formulas"``, and the frame's
``attrs["replay_problem"]`` says why.

**Reference** is reached by another route than the measurement: the live tensors' *local* sizes
(``numel × element_size``, a DTensor's local shard, each distinct tensor once, rounded as the
run rounds) where the ledger charges storages' sizes:

* weights: the model's parameters (none under autocast: its weight cache is weights too);
* buffers: the model's buffers;
* gradients: the parameters' live ``.grad``, else (freed by ``zero_grad``) one per trainable
  parameter after a backward, else 0;
* optimizer: every tensor in the optimizers' state;
* kv_cache: the tensors of the live caches (none when no cache is alive now);
* activations, temporaries, other: none (no independent route).

A measurement and a prediction that share a wrong input (a storage larger than its tensor)
agree with each other, not with the reference: ``check`` says so and ``gap_pct`` is NaN.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from profiler import views
from profiler.predict.compare import compare
from profiler.predict.tracked import round_bytes
from profiler.records import CATEGORIES
from profiler.shards import local_tensor

if TYPE_CHECKING:
    import pandas

    from profiler.run import RunView

__all__ = ["HonestCompare", "reference_bytes"]


def _region(t: torch.Tensor) -> tuple[Any, ...]:
    """What makes two tensors the same bytes: storage, offset, shape, strides, dtype."""
    local = local_tensor(t)
    try:
        key: object = local.untyped_storage()._cdata
    except Exception:  # noqa: BLE001 - a subclass without a plain storage: the tensor itself
        key = id(local)
    return (key, local.storage_offset(), tuple(local.shape), local.stride(), local.dtype)


def _local_bytes(
    tensors: Iterable[torch.Tensor], rounding: int, padded: dict[int, int] | None = None
) -> int:
    """Each distinct tensor's local ``numel × element_size`` (``padded[id(t)]`` elements where
    FSDP pads its shard), rounded, summed."""
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        region = _region(t)
        if region in seen:
            continue
        seen.add(region)
        local = local_tensor(t)
        numel = padded.get(id(t), local.numel()) if padded else local.numel()
        total += round_bytes(numel * local.element_size(), rounding)
    return total


def _fsdp_padded(model: torch.nn.Module) -> dict[int, int]:
    """FSDP2's own record of each sharded parameter's padded shard (``torch.chunk`` of dim 0:
    every rank holds the first chunk's size), in elements: ``{id(param): numel}``."""
    out: dict[int, int] = {}
    for module in model.modules():
        get_state = getattr(module, "_get_fsdp_state", None)
        if get_state is None:
            continue
        try:
            group = get_state()._fsdp_param_group
            for fsdp_param in group.fsdp_params if group is not None else ():
                size = fsdp_param.padded_sharded_param_size
                out[id(fsdp_param.sharded_param)] = int(torch.Size(size).numel())
        except Exception:  # noqa: BLE001 - FSDP's private layout moved: the local size stands
            continue
    return out


def reference_bytes(
    model: torch.nn.Module | None,
    optimizers: Iterable[torch.optim.Optimizer],
    caches: Iterable[Any],
    *,
    rounding: int,
    training: bool,
    autocast: Any = None,
) -> dict[str, int | None]:
    """Each category's bytes from the live tensors' local sizes (see the module doc)."""
    from profiler.kvcache import cache_tensors

    out: dict[str, int | None] = {str(c): None for c in CATEGORIES}
    if model is None:
        return out
    params = list(model.parameters())
    padded = _fsdp_padded(model)
    out["weights"] = None if autocast is not None else _local_bytes(params, rounding, padded)
    out["buffers"] = _local_bytes(model.buffers(), rounding)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        out["gradients"] = _local_bytes(grads, rounding)
    else:
        trainable = [p for p in params if p.requires_grad]
        out["gradients"] = _local_bytes(trainable, rounding) if training else 0
    out["optimizer"] = _local_bytes(
        (v for opt in optimizers for s in opt.state.values() for v in s.values()), rounding
    )
    caches = list(caches)
    if caches:
        out["kv_cache"] = _local_bytes((t for c in caches for t in cache_tensors(c)), rounding)
    return out


def _is_fake(model: torch.nn.Module) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(p, FakeTensor) or p.is_meta for p in model.parameters())


class HonestCompare:
    """The replay behind a tracker's ``compare()``, kept until the run changes."""

    def __init__(self) -> None:
        self._key: Any = None
        self._peaks: dict[str, int] | None = None
        self._problem: str | None = None
        self._seconds: float | None = None

    def _why_not(self, run: RunView, replayer: Any, active: bool) -> str | None:
        if active:
            return "the block is still running (the step is replayed once it has exited)"
        if replayer is None:
            return "no model to replay (track_memory(model, ...) was given none, or it is gone)"
        if _is_fake(run.model):
            return "this run is itself on fake tensors (a dry run): a replay would be itself"
        return replayer.problem  # type: ignore[no-any-return]

    def _replay(self, run: RunView, replayer: Any, active: bool) -> bool:
        """Replay unless the run is unchanged since the last one; whether this call replayed."""
        peaks = run.peaks
        info = run.info
        inputs = None if replayer is None else repr((replayer.args, replayer.kwargs))
        key = (active, info.step, info.training, peaks.total, peaks.by_category, inputs)
        if key == self._key:
            return False
        self._key, self._peaks, self._seconds = key, None, None
        self._problem = self._why_not(run, replayer, active)
        if self._problem is not None:
            return False
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):  # the program's random stream stays its own
                tracker = replayer.replay().tracker
            by_category = tracker.peaks.by_category
            self._peaks = {str(c): int(by_category[i]) for i, c in enumerate(CATEGORIES)}
        except Exception as error:  # noqa: BLE001 - the comparison falls back, labelled
            text = str(error).splitlines()[0] if str(error) else ""
            self._problem = f"the replay failed ({type(error).__name__}: {text})"
        self._seconds = time.perf_counter() - start
        return True

    def table(
        self,
        run: RunView,
        replayer: Callable[[], Any],
        optimizers: list[torch.optim.Optimizer],
        active: bool,
    ) -> pandas.DataFrame:
        """``compare()``'s frame for ``run`` (see :func:`~profiler.predict.compare.compare`).

        ``attrs``: ``replay_problem`` (why the formulas stand in, ``None`` when replayed),
        ``replay_seconds`` (what the replay cost when it ran), ``replay_cached`` (whether this
        call reused it) and ``reference_problem`` (why there is no reference, if it failed).
        """
        made, problem = None, None
        try:
            made = replayer() if not active else None
        except Exception as error:  # noqa: BLE001 - the comparison falls back, labelled
            problem = f"the replay could not be set up ({type(error).__name__}: {error})"
        replayed_now = self._replay(run, made, active) if problem is None else False
        if problem is not None:
            self._key, self._peaks, self._problem, self._seconds = None, None, problem, None
        info = run.info
        try:
            reference = reference_bytes(
                run.model,
                optimizers,
                run.kv_caches(),
                rounding=int(info.rounding),
                training=bool(info.training),
                autocast=info.autocast_dtype,
            )
            reference_problem = None
        except Exception as error:  # noqa: BLE001 - no reference rather than no comparison
            reference, reference_problem = None, f"{type(error).__name__}: {error}"
        frame = compare(
            views.breakdown(run),
            context=views.compare_context(run),
            replayed=self._peaks,
            reference=reference,
        )
        frame.attrs["replay_problem"] = self._problem
        frame.attrs["reference_problem"] = reference_problem
        frame.attrs["replay_seconds"] = self._seconds
        frame.attrs["replay_cached"] = not replayed_now and self._peaks is not None
        return frame
