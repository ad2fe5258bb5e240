"""The known tensors: weights, buffers, gradients, optimizer state and KV cache.

Their category is known from what holds them, so both strategies charge them exactly through the
ledger: the model's parameters and buffers at entry, gradients as they land (exact mode) or once
per step (fast mode: each gradient on sampled steps, one pool in between,
:mod:`~profiler.tracking.gradients`), optimizer state after each step, KV caches when the model
is handed or returns one.

fp32 master weights are optimizer state: a mixed-precision recipe keeps the model in bf16/fp16
and gives the optimizer fp32 copies of its parameters (apex's and DeepSpeed's fp16 optimizers do
the same). An optimizer parameter that is not one of the model's, is fp32, and has the shape of a
16-bit model parameter (or as many elements as all of them: one flat buffer) is charged as
``optimizer``, as ``profiler.predict.estimate`` books master weights.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from profiler.kvcache import cache_positions, cache_tensors, find_caches
from profiler.ledger import (
    ACTIVATIONS,
    BUFFERS,
    GRADIENTS,
    KV_CACHE,
    OPTIMIZER,
    OTHER,
    TEMPORARIES,
    WEIGHTS,
)
from profiler.tracking.gradients import GradientPool
from profiler.tracking.state import EngineState

__all__ = ["KnownTensors"]

Tensor = torch.Tensor
_HALF = (torch.bfloat16, torch.float16)


def _param_count(optimizer: torch.optim.Optimizer) -> int:
    """How many parameters ``optimizer``'s groups hold (per group, not per parameter)."""
    count = 0
    for group in optimizer.param_groups:
        count += len(group["params"])
    return count


class KnownTensors:
    """Charges the tensors whose role is known from their holder."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        #: ids of the parameters with a gradient hook (their gradients need no scan).
        self.hooked: set[int] = set()
        #: the parameters whose gradients fast mode claims at each backward end.
        self.grad_params: list[weakref.ref[torch.Tensor]] = []
        #: fast mode's gradients between full claims; used while ``lean_grads`` (set by the
        #: engine on fast mode's lean steps).
        self.gradients = GradientPool()
        self.lean_grads = False
        self._kv_refs: list[weakref.ref[Any]] = []
        #: ids of the caches walked since the last forward started (walked once per step).
        self._kv_walked: set[int] = set()
        #: per optimizer: (state entries, param groups) at its last state scan.
        self._opt_sizes: dict[int, tuple[int, int]] = {}
        #: the shapes of the model's 16-bit float parameters, and their elements in all (an
        #: optimizer's fp32 parameter like one of them is a master copy).
        self._half_shapes: set[tuple[int, ...]] = set()
        self._half_numel = 0
        #: ids of the model's parameters (never master copies).
        self._model_params: set[int] = set()
        #: ids of the optimizers found updating master copies (their gradients need a scan).
        self._master_optimizers: set[int] = set()

    # ------------------------------------------------------------------ at entry

    def name_modules(self, model: torch.nn.Module | None) -> None:
        """Name every module of ``model`` by its fully qualified name."""
        names = self.state.names = {}
        if model is None:
            return
        for fqn, module in model.named_modules():
            names.setdefault(id(module), fqn or type(model).__name__)

    def register_model(self, model: torch.nn.Module | None) -> None:
        """Charge what exists already: weights, buffers, gradients; note the model's facts."""
        state = self.state
        if model is None:
            return
        ledger = state.ledger
        wanted = state.is_wanted
        params = trainable = 0
        seen: set[int] = set()
        self._half_shapes = half_shapes = set()
        self._half_numel = 0
        self._model_params = seen
        for fqn, module in model.named_modules():
            ledger.module = fqn or type(model).__name__
            for param in module.parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    params += param.numel()
                    trainable += param.numel() if param.requires_grad else 0
                    if param.dtype in _HALF:
                        half_shapes.add(tuple(param.shape))
                        self._half_numel += param.numel()
                if wanted(param):
                    ledger.claim(param, WEIGHTS)
                if param.grad is not None and wanted(param.grad):
                    ledger.claim(param.grad, GRADIENTS)
            for buffer in module.buffers(recurse=False):
                if wanted(buffer):
                    ledger.claim(buffer, BUFFERS, only_from=(OTHER, TEMPORARIES))
        ledger.module = None
        state.param_count = params
        state.trainable_param_count = trainable
        config = getattr(model, "config", None)
        state.attention_impl = getattr(config, "_attn_implementation", None)
        for attribute in ("is_activation_checkpointing", "is_gradient_checkpointing"):
            if hasattr(type(model), attribute):
                state.checkpointing = bool(getattr(model, attribute))
                break

    def trainable_params(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters that get gradients (remembered for the gradient claims)."""
        self.gradients = GradientPool()  # a new block: the first claim is a full one
        result = []
        for param in model.parameters():
            if param.requires_grad:
                self.hooked.add(id(param))
                self.grad_params.append(weakref.ref(param))
                result.append(param)
        return result

    def clear(self) -> None:
        """Forget the hooked parameters (the block ended)."""
        self.hooked.clear()
        self.grad_params.clear()
        self.lean_grads = False  # the pool stays charged while its gradients live, as entries do
        self._opt_sizes.clear()
        self._master_optimizers.clear()
        self._kv_walked.clear()

    def new_step(self) -> None:
        """A step ended: the caches are walked again in the next one."""
        self._kv_walked.clear()

    # ------------------------------------------------------------------ gradients, optimizers

    def claim_model_grads(self) -> None:
        """Claim the trainable parameters' gradients (fast mode, once per step).

        With :attr:`lean_grads` (fast mode's lean steps) the gradients are one pool
        (:class:`~profiler.tracking.gradients.GradientPool`: O(1) per step); otherwise, and for
        the first claim, each gradient's storage is charged.
        """
        ledger = self.state.ledger
        if self.lean_grads and self.gradients.claim(ledger):
            return
        self.gradients.full_claim(ledger, self.grad_params, self.state.is_wanted)

    def adopt_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Track ``optimizer`` from now on (one created inside the block, seen at its step)."""
        state = self.state
        for ref in state.optimizer_refs:
            if ref() is optimizer:
                return
        state.optimizer_refs.append(weakref.ref(optimizer))
        state.optimizer_class = state.optimizer_class or type(optimizer).__name__

    def scan_optimizers(
        self, *, grads: bool = True, opt_state: bool = True, changed_only: bool = False
    ) -> None:
        """Charge each tracked optimizer's state and the gradients of parameters not hooked.

        ``changed_only``: skip the state of an optimizer whose number of state entries and of
        param groups is what it was at its last scan (state tensors are updated in place).
        """
        state = self.state
        ledger = state.ledger
        entries = ledger.entries
        hooked = self.hooked
        wanted = state.is_wanted
        for ref in state.optimizer_refs:
            optimizer = ref()
            if optimizer is None:
                continue
            if grads and (
                id(optimizer) in self._master_optimizers or len(hooked) < _param_count(optimizer)
            ):
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        grad = param.grad
                        if grad is not None and id(param) not in hooked and wanted(grad):
                            ledger.claim(grad, GRADIENTS)
            if opt_state:
                sizes = (len(optimizer.state), len(optimizer.param_groups))
                if changed_only and self._opt_sizes.get(id(optimizer)) == sizes:
                    continue
                self._opt_sizes[id(optimizer)] = sizes
                if self._half_shapes:
                    self._claim_master_weights(optimizer)
            for param_state in optimizer.state.values() if opt_state else ():
                if type(param_state) is not dict:
                    continue
                for value in param_state.values():
                    if not isinstance(value, Tensor):
                        continue
                    try:
                        entry = entries.get(value.untyped_storage()._cdata)
                    except (RuntimeError, NotImplementedError, TypeError):
                        continue
                    # Steady state: every state tensor is known already; one lookup each.
                    if (entry is None or entry.cat != OPTIMIZER) and wanted(value):
                        ledger.claim(value, OPTIMIZER)

    def _claim_master_weights(self, optimizer: torch.optim.Optimizer) -> None:
        """Charge the fp32 master copies of 16-bit model parameters an optimizer updates."""
        state = self.state
        ledger = state.ledger
        shapes = self._half_shapes
        for group in optimizer.param_groups:
            for param in group["params"]:
                if (
                    isinstance(param, Tensor)
                    and param.dtype is torch.float32
                    and (tuple(param.shape) in shapes or param.numel() == self._half_numel)
                    and id(param) not in self._model_params
                    and state.is_wanted(param)
                ):
                    # made before the block (other), or inside it: a temporary, or weights for
                    # a cast of a weight (``p.detach().float()``)
                    ledger.claim(param, OPTIMIZER, only_from=(OTHER, TEMPORARIES, WEIGHTS))
                    if ledger.category_of(param) == OPTIMIZER:
                        self._master_optimizers.add(id(optimizer))

    # ------------------------------------------------------------------ inputs and KV caches

    def observe_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Note the root model's batch and sequence, and the KV caches it is handed."""
        seq = self._observe_shape(args, kwargs)
        if not kwargs:
            return  # (no keyword: no cache handed)
        for value in find_caches(kwargs):
            if seq is not None and seq > 1 and not self.state.kv_cache_reused:
                # a prompt (several tokens) fed to a cache that already holds some: the cache
                # was not reset between generations (or a conversation goes on)
                self.state.kv_cache_reused = cache_positions(value) > 0
            self.mark_kv_cache(value, again=False)

    def _observe_shape(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """The batch (latest call) and sequence length (longest call) from the root's input.

        The input is the first tensor argument, or ``input_ids`` / ``inputs_embeds``; its dim 0
        is the batch, and dim 1 the sequence for token ids (integers) or for 3-d float inputs.
        Returns this call's sequence length (``None`` where there is none).
        """
        state = self.state
        candidates = (
            (*args, kwargs.get("input_ids"), kwargs.get("inputs_embeds")) if kwargs else args
        )
        for value in candidates:
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                state.observed_batch = int(value.shape[0])
                if (value.dim() == 2 and not value.is_floating_point()) or value.dim() >= 3:
                    seq = int(value.shape[1])
                    state.observed_seq = max(state.observed_seq or 0, seq)
                    return seq
                return None
        return None

    def observe_output(self, output: Any) -> None:
        """Charge the KV caches the root model returned, and every cache known so far."""
        for cache in find_caches(output):
            self.mark_kv_cache(cache, again=False)
        self.scan_kv_caches(once=True)

    def mark_kv_cache(self, obj: Any, *, again: bool = True) -> None:
        """Count the tensors held by ``obj`` (a cache object, tuple or tensor) as KV cache.

        ``again=False``: a cache known already is left to the forward's end (walked once).
        """
        if any(ref() is obj for ref in self._kv_refs):
            if again:
                self._claim_kv(obj)
            return
        # Tuples and lists cannot be weakly referenced: what they hold is charged now.
        try:
            self._kv_refs.append(weakref.ref(obj))
        except TypeError:
            pass
        else:
            if not again:
                return  # handed to the model: walked at the forward's end
        self._claim_kv(obj)

    def kv_caches(self) -> list[Any]:
        """The live cache objects known."""
        return [c for c in (ref() for ref in self._kv_refs) if c is not None]

    def scan_kv_caches(self, *, once: bool = False) -> None:
        """Charge what every live known cache holds now (caches grow in place).

        ``once``: skip the caches walked in this step already (a forward's end walks each cache
        once; the step's end and the block's end walk them all).
        """
        alive = []
        walked = self._kv_walked
        for ref in self._kv_refs:
            cache = ref()
            if cache is not None:
                alive.append(ref)
                if not once or id(cache) not in walked:
                    walked.add(id(cache))
                    self._claim_kv(cache)
        self._kv_refs = alive

    def _claim_kv(self, obj: Any) -> None:
        state = self.state
        ledger = state.ledger
        for tensor in cache_tensors(obj):
            if state.is_wanted(tensor):
                ledger.claim(tensor, KV_CACHE, only_from=(TEMPORARIES, ACTIVATIONS, OTHER))
        state.kv_tokens = max(state.kv_tokens or 0, cache_positions(obj))
