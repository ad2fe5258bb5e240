"""Replaying a tracked run's step on fake tensors, with a change applied: the peak it would have.

The facade records the shapes of the root model's latest forward call (:class:`InputRecorder`:
a forward pre-hook on the root module; shapes, dtypes and plain values only, never a tensor).
:class:`Replayer` then measures, through :func:`~profiler.dryrun.dry_run`, a step of a fake copy of
the model (parameters and buffers re-created as fake tensors: no memory) with a fresh optimizer
of the run's class: the root forward with the inputs resized on their batch dimension, the loss
the model returned (``output.loss``) or the sum of its output, backward and the optimizer step,
twice (the second step holds the optimizer state). The output is held as the user's loop was
seen to hold it: through backward to the optimizer's step, and into the next forward
(``out = model(x)`` keeps it until that forward returns); not seen yet (an OOM in the first
step), it is held throughout, the safe side. A change is a mapping:

* ``{"batch": n}``: the inputs' batch dimension resized to ``n``;
* ``{"autocast": "bfloat16"}``: forward and loss under ``torch.autocast``;
* ``{"checkpointing": True}``: ``gradient_checkpointing_enable()`` on a transformers model, else
  ``torch.utils.checkpoint`` around each of the largest group of repeated blocks;
* ``{"optimizer": "adamw8bit"}``: an 8-bit Adam laid out as bitsandbytes' (two uint8 states and
  a float32 scale per 256 values, 32-bit state for tensors under 4096 values);
* ``{"lora": 16}``: peft LoRA adapters of that rank on every linear layer, the base frozen.

Integer and boolean inputs are made with ``torch.ones`` (values do not matter to memory, except
an attention mask: ones mask nothing, the common training case). Anything that cannot be
replayed raises :class:`~profiler.errors.DryRunError` with the reason.

This module knows both sides (it runs the engine through the dry run), like the facade.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from profiler.dryrun import DryRun, dry_run
from profiler.errors import DryRunError

__all__ = [
    "Adam8bitLayout",
    "InputRecorder",
    "Replayer",
    "TensorSpec",
    "dispatch_mode_active",
    "fake_copy",
]

_PLAIN = (bool, int, float, str, type(None), torch.dtype)
#: bitsandbytes' 8-bit optimizers keep tensors smaller than this in 32-bit state.
_MIN_8BIT_SIZE = 4096
_BLOCK = 256


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor argument's shape, dtype and whether it required gradients."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


def _spec(value: Any, seen: dict[int, TensorSpec]) -> Any:
    """``value`` with every tensor replaced by its :class:`TensorSpec` (one spec per tensor, so
    a tensor passed twice, ``input_ids=ids, labels=ids``, is replayed as one); raises on other
    objects."""
    if isinstance(value, torch.Tensor):
        spec = seen.get(id(value))
        if spec is None:
            spec = seen[id(value)] = TensorSpec(
                tuple(value.shape), value.dtype, value.requires_grad
            )
        return spec
    if isinstance(value, _PLAIN):
        return value
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(_spec(v, seen) for v in value)
    if kind is dict:
        return {k: _spec(v, seen) for k, v in value.items()}
    raise DryRunError(f"the model's input holds a {type(value).__name__}, which is not replayed")


class InputRecorder:
    """Keeps the spec of the root model's latest forward call (a forward pre-hook)."""

    def __init__(self) -> None:
        self.args: Any = None
        self.kwargs: Any = None
        self.problem: str | None = "the model's forward was not called"
        #: whether autograd was recording at that call (a training forward, before any backward)
        self.grad_enabled = False
        #: per tensor of the root's output (depth first), whether the user's loop still held
        #: it at the optimizer's step (through backward: ``out = model(x)``) and when the next
        #: forward began (``out`` is let go only once that forward returns); ``None`` until seen
        self.held_to_step: tuple[bool, ...] | None = None
        self.held_to_next: tuple[bool, ...] | None = None
        self._outputs: list[weakref.ref[torch.Tensor]] | None = None
        self._stepped = False
        self._handles: list[Any] = []

    @classmethod
    def watching(cls, model: torch.nn.Module | None, optimizers: Any = ()) -> InputRecorder:
        """A recorder attached to ``model`` and its ``optimizers`` (none without a model)."""
        recorder = cls()
        if model is not None:
            recorder.attach(model, optimizers)
        return recorder

    def attach(self, model: torch.nn.Module, optimizers: Any = ()) -> None:
        """Start recording ``model``'s calls (call :meth:`detach` to stop)."""
        self._handles = [
            model.register_forward_pre_hook(self._record, with_kwargs=True),
            model.register_forward_hook(self._returned),
        ] + [optimizer.register_step_pre_hook(self._stepping) for optimizer in optimizers]

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _returned(self, _module: Any, _args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():  # step aside while dynamo traces (no graph break)
            return
        try:
            self._outputs = [weakref.ref(t) for t in _output_tensors(output)]
        except Exception:  # noqa: BLE001 - never break the forward
            self._outputs = None
        self._stepped = False

    def _alive(self) -> tuple[bool, ...] | None:
        if self._outputs is None:
            return None
        return tuple(ref() is not None for ref in self._outputs)

    def _stepping(self, *_: Any) -> None:
        if not self._stepped and self._outputs is not None:  # the first step after a forward
            self._stepped = True
            self.held_to_step = self._alive()

    def _record(self, _module: Any, args: Any, kwargs: Any) -> None:
        if self._outputs is not None:
            self.held_to_next = self._alive()
            self._outputs = None
        self.grad_enabled = torch.is_grad_enabled()
        try:
            seen: dict[int, TensorSpec] = {}
            self.args, self.kwargs = _spec(tuple(args), seen), _spec(dict(kwargs), seen)
            self.problem = None
        except DryRunError as error:
            self.args = self.kwargs = None
            self.problem = str(error)
        except Exception as error:  # noqa: BLE001 - never break the forward
            self.problem = f"{type(error).__name__}: {error}"


class Adam8bitLayout(torch.optim.Optimizer):
    """An Adam whose state is laid out as bitsandbytes' AdamW8bit (blockwise 8-bit), for replays.

    As bitsandbytes 0.50 holds it: per tensor of at least 4096 values two uint8 moments and a
    float32 absmax per 256 values, the signed and unsigned quantisation maps (256 float32 each)
    shared by all those tensors, two float32 moments for smaller tensors, and ``step`` as a Python
    int. Its update does no arithmetic worth measuring: it only holds that state.
    """

    def __init__(self, params: Any, lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr})
        self._qmaps: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if p.numel() >= _MIN_8BIT_SIZE:
                        if self._qmaps is None:
                            self._qmaps = (
                                torch.zeros(256, dtype=torch.float32),
                                torch.zeros(256, dtype=torch.float32),
                            )
                        blocks = math.ceil(p.numel() / _BLOCK)
                        for i in (1, 2):
                            state[f"state{i}"] = torch.zeros_like(p, dtype=torch.uint8)
                            state[f"qmap{i}"] = self._qmaps[i - 1]
                            state[f"absmax{i}"] = torch.zeros(blocks, dtype=torch.float32)
                    else:
                        state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                p.add_(p.grad, alpha=-group["lr"])


def dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` is on this thread's stack. (torch's own
    ``is_in_torch_dispatch_mode`` reads a process-wide flag that two threads entering and leaving
    modes in turn leave set: seen after two trackers ran in two threads.)"""
    return bool(torch._C._len_torch_dispatch_stack())


def fake_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[int, torch.Tensor]]:
    """A deep copy whose parameters and buffers are meta tensors (the dry run makes them fake)."""
    memo: dict[int, Any] = {}
    mapping: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        meta = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
        if isinstance(tensor, torch.nn.Parameter):
            meta = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
        mapping[id(tensor)] = meta
    return copy.deepcopy(model, memo), mapping


def _repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The largest list of same-class children (the repeated layers), by parameter count."""
    best: list[torch.nn.Module] = []
    best_size = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList | torch.nn.Sequential):
            continue
        children = list(module.children())
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for c in children for p in c.parameters())
        if size > best_size:
            best, best_size = children, size
    return best


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _enable_checkpointing(model: torch.nn.Module) -> None:
    if hasattr(model, "gradient_checkpointing_enable") and getattr(
        model, "supports_gradient_checkpointing", False
    ):
        model.gradient_checkpointing_enable()  # type: ignore[operator]  # its defaults, as advised
        model.train()
        return
    blocks = _repeated_blocks(model)
    if not blocks:
        raise DryRunError("no repeated blocks to checkpoint")
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)  # type: ignore[method-assign]


def _add_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    try:
        import peft
    except ImportError as error:
        raise DryRunError("LoRA needs peft to be replayed") from error
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    return peft.get_peft_model(model, config)


def _output_tensors(output: Any, found: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors of a forward's output, depth first: in tuples, lists and mappings (a
    transformers ``ModelOutput`` is an ordered dict of its set fields)."""
    if found is None:
        found = []
    if isinstance(output, torch.Tensor):
        found.append(output)
    elif isinstance(output, tuple | list):
        for item in output:
            _output_tensors(item, found)
    elif isinstance(output, Mapping):
        for item in output.values():
            _output_tensors(item, found)
    return found


def _loss(output: Any) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(output, Mapping):
        output = output.get("loss", next(iter(output.values()), None))
    if isinstance(output, tuple | list):
        output = next((o for o in output if isinstance(o, torch.Tensor)), None)
    if not isinstance(output, torch.Tensor):
        raise DryRunError("the model's output holds no tensor to take a loss of")
    return output.sum()


class Replayer:
    """Replays the recorded step of a tracked run with changes applied (see the module doc).

    Args:
        model: the tracked model (held weakly).
        optimizer: its optimizer, or ``None`` (no optimizer step is replayed).
        recorder: the root forward's recorded input.
        batch: the batch size the run used (the inputs' dim 0 of that size is resized).
        training: whether the run ran backward.
        device: the run's device type ("cuda" applies CUDA's rounding and optimizer path).
        rounding: the run's per-storage rounding.
        autocast: the autocast dtype the run used, if any (kept in every replay).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        recorder: InputRecorder,
        *,
        batch: int | None,
        training: bool,
        device: str,
        rounding: int,
        autocast: torch.dtype | None = None,
    ) -> None:
        self._model = weakref.ref(model)
        self._optimizer = weakref.ref(optimizer) if optimizer is not None else None
        self.args, self.kwargs, self.problem = recorder.args, recorder.kwargs, recorder.problem
        self.held_to_step, self.held_to_next = recorder.held_to_step, recorder.held_to_next
        self.batch = batch
        self.training = training
        self.device = device
        self.rounding = rounding
        self.autocast = autocast
        self._cache: dict[tuple[tuple[str, Any], ...], int] = {}

    @classmethod
    def for_run(
        cls, run: Any, recorder: InputRecorder, optimizer: torch.optim.Optimizer | None
    ) -> Replayer | None:
        """The replayer of a tracked run (a RunView), or ``None`` without a live model."""
        model = run.model
        if model is None:
            return None
        info = run.info
        return cls(
            model,
            optimizer,
            recorder,
            batch=info.observed_batch,
            # an OOM in the first forward comes before any backward: a forward that recorded
            # autograd with an optimizer present is a training step
            training=bool(info.training) or (recorder.grad_enabled and optimizer is not None),
            device=info.device_type,
            rounding=int(info.rounding),
            autocast=run.autocast_dtype,
        )

    def __call__(self, change: Mapping[str, Any]) -> int:
        """The replayed peak in bytes with ``change`` applied (cached per change)."""
        key = tuple(sorted(change.items()))
        if key not in self._cache:
            self._cache[key] = int(self._measure(change).peak_bytes)
        return self._cache[key]

    def replay(self, change: Mapping[str, Any] | None = None) -> DryRun:
        """The whole dry run of the recorded step with ``change`` applied (none: the step as it
        ran), for its per-category figures; not cached. Raises :class:`DryRunError`."""
        return self._measure(change or {})

    def _materialize(self, value: Any, batch: int | None, made: dict[int, Any]) -> Any:
        if isinstance(value, TensorSpec):
            if id(value) not in made:
                made[id(value)] = self._tensor(value, batch)
            return made[id(value)]
        if type(value) in (list, tuple):
            return type(value)(self._materialize(v, batch, made) for v in value)
        if type(value) is dict:
            return {k: self._materialize(v, batch, made) for k, v in value.items()}
        return value

    def _tensor(self, value: TensorSpec, batch: int | None) -> torch.Tensor:
        shape = list(value.shape)
        if batch is not None and shape and self.batch is not None and shape[0] == self.batch:
            shape[0] = batch
        if value.dtype.is_floating_point or value.dtype.is_complex:
            return torch.empty(shape, dtype=value.dtype, requires_grad=value.requires_grad)
        return torch.ones(shape, dtype=value.dtype)

    @staticmethod
    def _held(tensors: list[torch.Tensor], seen: tuple[bool, ...] | None) -> list[torch.Tensor]:
        """The output tensors the user's loop was ``seen`` to hold, or, not seen yet (an OOM in
        the first step), all of them (``out = model(x)`` holds them: the safe side)."""
        if seen is None or len(seen) != len(tensors):
            return tensors
        return [t for t, held in zip(tensors, seen, strict=True) if held]

    def _optimizer_for(self, model: torch.nn.Module, change: Mapping[str, Any]) -> Any:
        original = self._optimizer() if self._optimizer is not None else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        if original is None or not self.training:
            return None
        if change.get("optimizer") == "adamw8bit":
            return Adam8bitLayout(trainable)
        cls = type(original)
        settings = {k: v for k, v in original.param_groups[0].items() if k != "params"}
        try:
            return cls(trainable, **settings)  # type: ignore[call-arg]
        except TypeError:
            return cls(trainable)  # type: ignore[call-arg]

    def _measure(self, change: Mapping[str, Any]) -> DryRun:
        model = self._model()
        if model is None:
            raise DryRunError("the model is gone")
        if self.problem is not None:
            raise DryRunError(self.problem)
        if dispatch_mode_active():  # the fake tensors would be charged to that mode's owner
            raise DryRunError("a torch dispatch mode is active (another tracker's block?)")
        source, _ = fake_copy(model)
        batch = change.get("batch")
        dtype = change.get("autocast") or self.autocast
        amp = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        training = self.training

        def build() -> tuple[torch.nn.Module, Any]:
            built = source
            if change.get("checkpointing"):
                _enable_checkpointing(built)
            if change.get("lora"):
                built = _add_lora(built, int(change["lora"]))
            return built, self._optimizer_for(built, change)

        held: list[torch.Tensor] = []  # the output tensors the user's loop still holds

        def step(model: torch.nn.Module, optimizer: Any) -> None:
            made: dict[int, Any] = {}
            args = self._materialize(self.args, batch, made)
            kwargs = self._materialize(self.kwargs, batch, made)
            context = (
                torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()
            )
            grad = torch.enable_grad() if training else torch.no_grad()
            with grad:
                with context:
                    output = model(*args, **kwargs)
                    loss = _loss(output)
                tensors = _output_tensors(output)
                to_next = self._held(tensors, self.held_to_next)
                # the previous step's are let go once this output exists
                held[:] = self._held(tensors, self.held_to_step) + to_next
                del output, tensors
                if training:
                    loss.backward()
                    del loss  # freed before the optimizer step, as `model(x).sum().backward()`
                    if optimizer is not None:
                        optimizer.step()
                        optimizer.zero_grad()
                held[:] = to_next

        steps = 2 if training and self._optimizer is not None else 1
        return dry_run(build, step, steps=steps, device=self.device, rounding=self.rounding)
