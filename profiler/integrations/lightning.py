"""gpumem for Lightning: one callback, metrics in every ``trainer.loggers`` logger.

::

    from profiler.integrations.lightning import GpumemCallback

    trainer = lightning.Trainer(callbacks=[GpumemCallback()])   # or GpumemCallback(mode="fast")
    trainer.fit(model, loader)

Tracking starts in ``on_train_start`` (the strategy has wrapped the model and built the
optimizers by then) on the ``LightningModule`` itself, seen through DDP and Lightning's own
wrapper, and on the real optimizer (``trainer.optimizers[0]``, not its ``LightningOptimizer``).
On the batches where Lightning updates its logs (``log_every_n_steps``) and once at the end, the
callback logs :func:`profiler.views.metrics` to every logger in the ``DeviceStatsMonitor`` key
style: ``GpumemCallback.on_train_batch_end/peak``, ``.../weights``, ``.../predicted_weights``...
(the logger's own group separator in place of ``/``).

Under DDP every rank tracks itself and its session carries its rank; rank 0 alone logs, with
each rank's figures gathered to it under ``.../rank<r>/<name>`` (one small collective per logged
batch, on a batch every rank reaches). If training raises, ``on_exception`` closes the tracker:
an out-of-memory error writes the post-mortem, no hook stays behind, the tracker is inactive.
Validation and test loops run outside ``fit`` (``trainer.validate``) are not tracked.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from profiler import views
from profiler.errors import require
from profiler.tracker import MemoryTracker

require("lightning.pytorch", by=__name__, package="lightning")  # or one line saying what to install
import lightning.pytorch as pl  # noqa: E402

__all__ = ["GpumemCallback"]


class GpumemCallback(pl.Callback):  # type: ignore[misc]
    """Tracks a ``lightning.Trainer`` fit: the ``LightningModule`` and its real optimizer.

    Args:
        options: any :func:`~profiler.track_memory` option (``mode``, ``capacity``, ``name``...).

    Attributes:
        mem: the :class:`~profiler.tracker.MemoryTracker` of this process (``None`` before
            training starts); after training its results stay readable.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.mem: MemoryTracker | None = None
        self._open = False
        self._warned = False

    # ------------------------------------------------------------------ Lightning events

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Start tracking the module the strategy wrapped and the optimizer it built."""
        if self._open:
            return
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        # trainer.model: DDP (whose bucket copy the predictions need) around Lightning's wrapper
        # around pl_module; the tracker unwraps both (profiler.integrations.unwrap)
        model = trainer.model if trainer.model is not None else pl_module
        self.mem = MemoryTracker(model, optimizers[0] if optimizers else None, **self.options)
        self.mem.__enter__()
        self._open = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the figures on the batches where Lightning updates its logs."""
        connector = getattr(trainer, "_logger_connector", None)
        if self._open and getattr(connector, "should_update_logs", True):
            self._log(trainer, "on_train_batch_end")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Stop tracking and log the final figures (predictions made at exit included)."""
        if self._open:
            self.close(None)
            self._log(trainer, "on_train_end")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Close the tracker: an out-of-memory ``exception`` writes the post-mortem."""
        self.close(exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """A last guard: the tracker never outlives the Trainer's run."""
        self.close(None)

    def close(self, exc: BaseException | None) -> None:
        """Stop tracking; with an out-of-memory ``exc``, the post-mortem is written."""
        if not self._open or self.mem is None:
            return
        self._open = False
        self.mem.__exit__(type(exc) if exc is not None else None, exc, None)

    # ------------------------------------------------------------------ logging

    def _log(self, trainer: Any, hook: str) -> None:
        mem = self.mem
        if mem is None:
            return
        try:
            if self._open:
                mem.update_predictions()
            figures = views.metrics(mem, leaks=len(mem.leaks()), prefix="")
        except Exception as error:  # noqa: BLE001 - gpumem's fault must not stop training
            if not self._warned:
                self._warned = True
                warnings.warn(f"gpumem: no figures logged ({error!r})", stacklevel=2)
            figures = {}  # still gathered: every rank stays in step
        per_rank = _gathered(figures, trainer)
        if not trainer.is_global_zero:
            return  # rank 0 logs every rank's figures
        step = _logging_step(trainer)
        group = f"{type(self).__qualname__}.{hook}"
        for logger in trainer.loggers:
            sep = getattr(logger, "group_separator", "/")
            if per_rank is None:
                keyed = {f"{group}{sep}{name}": value for name, value in figures.items()}
            else:
                keyed = {
                    f"{group}{sep}rank{rank}{sep}{name}": value
                    for rank, values in enumerate(per_rank)
                    for name, value in values.items()
                }
            if keyed:
                logger.log_metrics(keyed, step=step)


def _gathered(figures: dict[str, int], trainer: Any) -> list[dict[str, int]] | None:
    """Every rank's figures, in rank order (on every rank); ``None`` outside a process group."""
    if trainer.world_size <= 1:
        return None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, figures)
    return [dict(values) for values in out]


def _logging_step(trainer: Any) -> int:
    """The step ``DeviceStatsMonitor`` and ``self.log`` log at (optimizer steps taken)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)
