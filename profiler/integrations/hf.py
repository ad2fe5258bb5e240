"""gpumem for the Hugging Face ``Trainer``: one line, metrics in every ``report_to`` logger.

::

    from profiler.integrations.hf import GpumemCallback

    trainer = Trainer(model=model, args=args, train_dataset=data)
    GpumemCallback.attach(trainer)          # or GpumemCallback.attach(trainer, mode="fast")
    trainer.train()

``attach`` puts the callback first in the Trainer's callback list, so the ``gpumem/...`` keys it
adds in ``on_log`` reach TensorBoard, W&B, MLflow and every other ``report_to`` integration (they
run after it), and wraps ``trainer.train`` so that if training raises (an out-of-memory error)
the tracker still closes: the post-mortem is written and no hook stays behind.
``trainer.add_callback(GpumemCallback())`` also tracks, but its keys reach only the loggers that
run after it, and a run that raises leaves closing to the callback's ``close(exc)``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from profiler.errors import require
from profiler.integrations.unwrap import unwrap_model, unwrap_optimizer
from profiler.tracker import MemoryTracker

require("transformers", by=__name__, package="transformers")  # or one line saying what to install
from transformers import TrainerCallback  # noqa: E402

__all__ = ["GpumemCallback"]


class GpumemCallback(TrainerCallback):  # type: ignore[misc]
    """Tracks a ``Trainer`` run: the unwrapped model and the real optimizer, from the first step.

    Args:
        options: any :func:`~profiler.track_memory` option (``mode``, ``capacity``, ``name``...).

    Attributes:
        mem: the :class:`~profiler.tracker.MemoryTracker` (``None`` before training starts);
            after training its results stay readable.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.mem: MemoryTracker | None = None
        self._open = False

    @classmethod
    def attach(cls, trainer: Any, **options: Any) -> GpumemCallback:
        """Add a callback to ``trainer`` ahead of its loggers, closing it if training raises."""
        callback = cls(**options)
        trainer.callback_handler.callbacks.insert(0, callback)
        train = trainer.train

        @functools.wraps(train)
        def tracked_train(*args: Any, **kwargs: Any) -> Any:
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                callback.close(exc)
                raise

        trainer.train = tracked_train
        return callback

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start tracking the model and optimizer the Trainer hands its callbacks."""
        if self._open:
            return
        model = unwrap_model(kwargs.get("model"))
        optimizer = unwrap_optimizer(kwargs.get("optimizer"))
        options = dict(self.options)
        options.setdefault("name", _run_name(args))
        self.mem = MemoryTracker(model, optimizer, **options)
        self.mem.__enter__()
        self._open = True

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Add ``gpumem/<category>``, ``gpumem/peak``, ``gpumem/predicted_<category>``... to the
        Trainer's logs (the loggers after this callback write them)."""
        if logs is None or self.mem is None:
            return
        if self._open:
            self.mem.update_predictions()
        logs.update(self.mem.metrics())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Stop tracking (the results stay on :attr:`mem`)."""
        self.close(None)

    def close(self, exc: BaseException | None) -> None:
        """Stop tracking; with an out-of-memory ``exc``, the post-mortem is written."""
        if not self._open or self.mem is None:
            return
        self._open = False
        self.mem.__exit__(type(exc) if exc is not None else None, exc, None)


def _run_name(args: Any) -> str:
    name = getattr(args, "run_name", None)
    if isinstance(name, str) and name and "/" not in name:
        return name
    return sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py") or "trainer"
