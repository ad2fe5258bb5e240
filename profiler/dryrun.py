"""``dry_run()``: measure a training or inference step on fake tensors, without the memory.

The model is built and the step runs under one ``FakeTensorMode``: every tensor has a shape,
dtype and device but no data, so a 7B training step is measured on a laptop. The tracker's
exact ledger sees every storage as in a real run, and the target device's allocator rounding
(512 B per tensor on CUDA) is applied by the ledger.

Known fake-mode pitfalls, and what happens to each:

* Fake CUDA tensors are unusable on a CPU-only build (an op on one that requires grad aborts
  the process), so everything runs on fake **CPU** tensors: device arguments naming an
  accelerator (``device="cuda"``, ``.to("cuda")``, ``.cuda()``, ``torch.device("cuda")``
  contexts, ``torch.autocast("cuda")``) are redirected to the CPU while the dry run is active.
* ``module.to(...)`` on fake parameters fails in torch ("Couldn't swap"); while the dry run is
  active ``Module.to/.cuda/.cpu/.half/.bfloat16/.float/.double`` move nothing and convert dtypes
  by replacing parameters, ties preserved.
* ``copy.deepcopy`` in a constructor (``nn.TransformerEncoder``) gives the copies another fake
  mode ("Mixing fake modes NYI"); after ``build()`` every parameter and buffer from another mode,
  or a real one, is re-created in the dry run's mode.
* Optimizers left on their default implementation take the multi-tensor (foreach) path, as
  they would on CUDA (on CPU tensors torch would pick the per-parameter loop, whose scratch is
  far smaller); only for accelerator targets. Optimizers created inside ``step`` keep the CPU
  default.
* Ops that need real values (``.item()``, ``.tolist()``, printing a tensor, boolean-mask
  indexing, data-dependent shapes) cannot run on fake tensors: they raise
  :class:`~profiler.errors.DryRunError` naming the problem.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from profiler.errors import DryRunError, GpumemError
from profiler.fills import Fills

if TYPE_CHECKING:
    import pandas

    from profiler.predict.gpus import GpuSpec

__all__ = ["DryRun", "dry_run"]

_ACCELERATORS = ("cuda", "xpu", "mps", "hip", "mtia", "privateuseone")
_Tensor = torch.Tensor


def _is_accelerator(device: Any) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.split(":", 1)[0] in _ACCELERATORS
    if isinstance(device, torch.device):
        return device.type in _ACCELERATORS
    return False


class _CpuDevices(TorchFunctionMode):
    """Redirect accelerator devices in factory calls and ``Tensor.to``/``.cuda`` to the CPU.

    Every call also goes through :class:`~profiler.fills.Fills`, which keeps the values of
    tensors made by fill factories so that value checks take the real device's path.
    """

    def __init__(self, fills: Fills) -> None:
        super().__init__()
        self.fills = fills

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (_Tensor.cuda, _Tensor.xpu) or getattr(func, "__name__", "") == "cuda":
            return args[0]
        if "device" in kwargs and _is_accelerator(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is _Tensor.to and len(args) > 1 and _is_accelerator(args[1]):
            args = (args[0], "cpu", *args[2:])
        return self.fills.call(func, args, kwargs)


def _convert(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """Change floating parameters and buffers to ``dtype`` by replacement, keeping ties."""
    if dtype is None:
        return module
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not param.is_floating_point():
                continue
            if id(param) not in memo:
                memo[id(param)] = torch.nn.Parameter(
                    param.detach().to(dtype), requires_grad=param.requires_grad
                )
            sub._parameters[name] = memo[id(param)]
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_floating_point():
                if id(buf) not in memo:
                    memo[id(buf)] = buf.to(dtype)
                sub._buffers[name] = memo[id(buf)]
    return module


def _module_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
    _, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"nn.Module.to only accepts floating point dtypes, got {dtype}")
    return _convert(self, dtype)


_MODULE_PATCHES: dict[str, Callable[..., Any]] = {
    "to": _module_to,
    "cuda": lambda self, *a, **k: self,
    "cpu": lambda self, *a, **k: self,
    "half": lambda self: _convert(self, torch.float16),
    "bfloat16": lambda self: _convert(self, torch.bfloat16),
    "float": lambda self: _convert(self, torch.float32),
    "double": lambda self: _convert(self, torch.float64),
}


@contextlib.contextmanager
def _redirected() -> Iterator[None]:
    """Module conversions and accelerator devices patched for fake CPU tensors."""
    saved = {name: getattr(torch.nn.Module, name) for name in _MODULE_PATCHES}
    autocast_init = torch.amp.autocast_mode.autocast.__init__

    def cpu_autocast(self: Any, device_type: str, *args: Any, **kwargs: Any) -> None:
        if _is_accelerator(device_type):
            device_type = "cpu"
        autocast_init(self, device_type, *args, **kwargs)

    try:
        for name, patch in _MODULE_PATCHES.items():
            setattr(torch.nn.Module, name, patch)
        torch.amp.autocast_mode.autocast.__init__ = cpu_autocast  # type: ignore[method-assign]
        fills = Fills()
        with _CpuDevices(fills), fills.transformers_checks():
            yield
    finally:
        for name, original in saved.items():
            setattr(torch.nn.Module, name, original)
        torch.amp.autocast_mode.autocast.__init__ = autocast_init  # type: ignore[method-assign]


def _adopt(module: torch.nn.Module, mode: Any) -> dict[int, Any]:
    """Re-create parameters and buffers that are real or from another fake mode.

    Returns the replacements, keyed by the id of the tensor they replace.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    def foreign(t: torch.Tensor) -> bool:
        return not isinstance(t, FakeTensor) or t.fake_mode is not mode

    def fresh(t: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")

    memo: dict[int, Any] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not foreign(param):
                continue
            if id(param) not in memo:
                memo[id(param)] = torch.nn.Parameter(
                    fresh(param), requires_grad=param.requires_grad
                )
            sub._parameters[name] = memo[id(param)]
        for name, buf in list(sub._buffers.items()):
            if buf is None or not foreign(buf):
                continue
            if id(buf) not in memo:
                memo[id(buf)] = fresh(buf)
            sub._buffers[name] = memo[id(buf)]
    return memo


def _like_cuda(optimizer: torch.optim.Optimizer) -> None:
    """Pick the multi-tensor (foreach) path that torch picks by default for CUDA parameters.

    On CPU tensors torch defaults to the per-parameter loop, whose scratch is one parameter's
    size; on CUDA it defaults to foreach, whose ``_foreach_sqrt`` scratch is as large as all the
    parameters' state together. Without this a CUDA dry run would miss that peak.
    """
    for group in optimizer.param_groups:
        if "foreach" in group and group["foreach"] is None and not group.get("fused"):
            group["foreach"] = True


def _explain(exc: BaseException, where: str) -> DryRunError:
    """A DryRunError naming the fake-mode limitation behind ``exc``."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if name in ("DataDependentOutputException", "DynamicOutputShapeException") or (
        "_local_scalar_dense" in text or "data-dependent" in text.lower()
    ):
        return DryRunError(
            f"the {where} reads tensor values, which fake tensors do not have ({name}: {text})",
            hint="drop .item(), .tolist(), printing tensors and boolean-mask indexing from the "
            "dry-run step (log the loss only in real runs); generate() stops on token values, "
            "so dry-run its prefill, model(input_ids, use_cache=True), instead",
        )
    if "Mixing fake modes" in text:
        return DryRunError(
            f"the {where} copies tensors into another fake mode (copy.deepcopy of a module?)",
            hint="build copies in build(), not in step(); dry_run re-creates parameters after "
            "build() but cannot follow copies made during the step",
        )
    if "Couldn't swap" in text:
        return DryRunError(
            f"the {where} converts fake parameters in place ({text})",
            hint="convert dtypes with model.to(dtype) or build the model in the right dtype",
        )
    return DryRunError(
        f"the {where} cannot run on fake tensors: {name}: {text}",
        hint="check that it runs for real on a tiny config; ops that need real data or a "
        "real device cannot be dry-run",
    )


class DryRun:
    """What a dry run measured: the same views as a ``track_memory`` run, for a target device."""

    def __init__(self, tracker: Any, *, device: str, rounding: int, steps: int) -> None:
        self.tracker = tracker
        self.device = device
        self.rounding = rounding
        self.steps_run = steps

    @property
    def peak_bytes(self) -> int:
        """The highest total the ledger saw, rounded as the target device's allocator rounds."""
        return int(self.tracker.peak_bytes)

    def breakdown(self) -> pandas.DataFrame:
        """Bytes per category (current, peak, at_peak, predicted), as ``mem.breakdown()``."""
        return self.tracker.breakdown()

    def modules(self) -> pandas.DataFrame:
        """Bytes per module, as ``mem.modules()``."""
        return self.tracker.modules()

    def timeline(self) -> pandas.DataFrame:
        """The samples as a DataFrame, as ``mem.timeline()``."""
        return self.tracker.timeline()

    def compare(self) -> pandas.DataFrame:
        """Predicted vs measured per category, as ``mem.compare()``."""
        return self.tracker.compare()

    @property
    def samples(self) -> list[Any]:
        """The tracker's samples."""
        return self.tracker.samples

    @property
    def steps(self) -> list[Any]:
        """One record per step."""
        return self.tracker.steps

    def fits(self, gpu: GpuSpec | str, *, context_bytes: int | None = None) -> bool:
        """Whether the peak plus the GPU's CUDA context fits in its memory."""
        from profiler.predict.gpus import find_gpu

        spec = find_gpu(gpu) if isinstance(gpu, str) else gpu
        context = spec.context_bytes if context_bytes is None else context_bytes
        return self.peak_bytes + context <= spec.memory_bytes

    def __repr__(self) -> str:
        from profiler.units import format_bytes

        return (
            f"DryRun(device={self.device!r}, steps={self.steps_run}, "
            f"peak={format_bytes(self.peak_bytes)})"
        )


def dry_run(
    build: Callable[[], Any],
    step: Callable[[Any, Any], Any],
    *,
    steps: int = 2,
    device: str = "cuda",
    rounding: int | None = None,
) -> DryRun:
    """Build a model and run ``steps`` steps on fake tensors through the exact ledger.

    Args:
        build: returns the model, or a ``(model, optimizer)`` tuple. Runs under the fake mode:
            build the model in place (``with torch.device(...)`` or by its constructor).
        step: ``step(model, optimizer)`` runs one step and makes its own batch.
        steps: how many steps to run (2 shows the steady state: optimizer state exists).
        device: the target device: ``"cuda"`` applies the CUDA caching allocator's 512-byte
            rounding, ``"cpu"`` none. The tensors themselves are always fake CPU tensors.
        rounding: override the per-tensor rounding.

    Returns:
        A :class:`DryRun` with ``breakdown()``, ``modules()``, ``compare()`` and ``peak_bytes``.

    Raises:
        DryRunError: the model or step cannot run on fake tensors; the message says why.
        UsageError: bad arguments.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from profiler.errors import UsageError
    from profiler.tracker import track_memory

    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise UsageError(f"steps must be a positive whole number, got {steps!r}")
    target = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if rounding is None:
        rounding = 512 if target in _ACCELERATORS else 1
    if not callable(build) or not callable(step):
        raise UsageError("dry_run needs two callables: build() and step(model, optimizer)")

    fake = FakeTensorMode(allow_non_fake_inputs=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        with fake, _redirected(), torch.device("cpu"):
            try:
                built = build()
            except GpumemError:
                raise
            except Exception as exc:  # noqa: BLE001 - turned into a DryRunError
                raise _explain(exc, "build()") from exc
            model, optimizer = built if isinstance(built, tuple) else (built, None)
            if not isinstance(model, torch.nn.Module):
                raise UsageError(
                    f"build() must return an nn.Module or (model, optimizer), got "
                    f"{type(model).__name__}"
                )
            replaced = _adopt(model, fake)
            if replaced and optimizer is not None:
                if optimizer.state:
                    raise DryRunError(
                        "build() stepped an optimizer over parameters made outside the dry run",
                        hint="return a fresh optimizer from build()",
                    )
                for group in optimizer.param_groups:
                    group["params"] = [replaced.get(id(p), p) for p in group["params"]]
            if optimizer is not None and target in _ACCELERATORS:
                _like_cuda(optimizer)
            tracker = track_memory(
                model,
                optimizer,
                mode="exact",
                stream=False,
                device="cpu",
                rounding=rounding,
                leaks=False,
            )
            try:
                with tracker as mem:
                    for _ in range(steps):
                        step(model, optimizer)
                        mem.step()
            except GpumemError:
                raise
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _explain(exc, "step") from exc
    return DryRun(tracker, device=target, rounding=rounding, steps=steps)
