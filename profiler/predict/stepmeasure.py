"""Activations and temporaries of one step, measured by a dry run of the real class.

The default of :func:`~profiler.predict.estimate.estimate` for a config transformers knows: the
config's model is built by transformers under :func:`profiler.dryrun.dry_run` (fake tensors: no
memory) and two steps run through the exact ledger: a training step (forward with labels,
backward, the optimizer's real step: AdamW, the 8-bit AdamW's layout, Adafactor or SGD) or an
inference prefill (``no_grad`` forward with the model's cache). Each category's own peak is read.

Depth is scaled: where the layers repeat (see :mod:`profiler.predict.measured`), 1, 2 and 3
layers are dry-run and each figure must grow by the same amount per layer (or, with a fourth
depth, from the second layer on: a one-layer prefill can peak at the head), or the whole model
is dry-run. A dry run costs the same at any size (fake tensors hold no data), so the asked point is
measured directly. The ``--gpu`` searches run dozens of sizes: there :func:`fit_step` dry-runs
six (batch, seq) points and solves for each category in the terms the model's code makes
(``1, B, S, B·S, S², B·S²``: weights-sized scratch, per-row buffers, rotary tables, every
``B × S × width`` activation, masks and eager attention scores), the forward/backward and the
optimizer step measured apart since a peak is the larger of the two; the searches check the fit
and confirm their answers with direct dry runs (:mod:`profiler.cli.estimate`). Which experts a
token reaches depends on values fake tensors do not have, so MoE models raise
:class:`~profiler.errors.DryRunError` (the estimate keeps its formulas then, and says so).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from profiler.errors import ConfigError, DryRunError
from profiler.predict.measured import _PRESET_KEYS, _quiet, _truncated, scalable_layers
from profiler.records import CATEGORIES, Category

__all__ = ["FIT_TERMS", "STEP_SOURCE", "FitPiece", "StepFit", "fit_step", "measure_step"]

#: How an estimate labels the figures this module measures.
STEP_SOURCE = "measured (dry run of the real class on fake tensors)"
#: The terms a fit solves for, in (batch B, sequence S).
FIT_TERMS = ("1", "B", "S", "B·S", "S²", "B·S²")
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_OPTIMIZERS = ("adamw", "adamw-8bit", "sgd", "adafactor")
#: Attention implementations the dry run asks for: eager, else the class's default (sdpa where
#: the class has it; flash kernels do not exist on the CPU, and neither keeps S × S scores).
_ATTENTION = {"eager": "eager"}
#: The fit's longest sequence (or the model's limit) and its batches: two batches at each of
#: three lengths, large enough to be past the small sizes where weight-sized transients (the
#: head's gradient, for instance) still outweigh the activation-sized ones.
_FIT_SEQ = 8192
_FIT_BATCHES = (4, 8)
#: The batch of the check point (its sequence is halfway between the fit's two shorter ones);
#: the fit holds where each category is within 1% or 1 MiB of the direct dry run.
_CHECK_BATCH = 6
FIT_TOLERANCE = 0.01
FIT_SLACK = 1 << 20
#: The sequence length at which the optimizer step's own peak is measured.
_FLOOR_SEQ = 8


def measure_step(
    config: Mapping[str, Any],
    *,
    mode: str,
    optimizer: str,
    batch: int,
    seq: int,
    precision: str,
    checkpointing: bool,
    lora_rank: int = 16,
    lora_targets: str = "all-linear",
    attention: str = "sdpa",
    optimizer_step: bool = True,
) -> tuple[int, int]:
    """The own peaks of activations and temporaries of one step, in bytes (CUDA rounding).

    ``optimizer_step=False`` runs a training step without the optimizer (forward and backward).

    Raises:
        DryRunError: the step cannot run on fake tensors (MoE routing, for instance).
        ConfigError: the config cannot be built.
    """
    if mode in ("train", "lora") and optimizer not in _OPTIMIZERS:
        raise DryRunError(f"the {optimizer} optimizer cannot be dry-run here")
    if mode not in ("train", "lora", "inference") or precision not in _DTYPES:
        raise DryRunError(f"a {mode} step in {precision} is not dry-run")
    cleaned = {k: v for k, v in config.items() if k not in _PRESET_KEYS}
    key = json.dumps(cleaned, sort_keys=True)
    stepped = optimizer_step and mode != "inference"
    args = (
        mode,
        optimizer if stepped else None,
        batch,
        seq,
        precision,
        checkpointing and mode != "inference",
        lora_rank,
        lora_targets,
        _ATTENTION.get(attention),
    )
    if not stepped:
        return _cached(key, args)
    # a step's peak is the larger of its forward/backward's and its optimizer step's, and the
    # two grow differently with depth (the optimizer's scratch with every layer, backward's
    # transient not), so a 1-3 layer step can peak in backward where the whole model peaks in
    # the optimizer: they are measured apart, the optimizer's where backward is negligible
    # (one row of _FLOOR_SEQ tokens), and the larger kept per category
    figures = _cached(key, (args[0], None, *args[2:]))
    floor = floor_at(_cached(key, (*args[:2], 1, _FLOOR_SEQ, *args[4:])), batch, seq)
    return max(figures[0], floor[0]), max(figures[1], floor[1])


def _blocks(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def floor_at(floor: tuple[int, int], batch: int, seq: int) -> tuple[int, int]:
    """The optimizer step's own peaks, measured at one row of :data:`_FLOOR_SEQ` tokens, at
    ``batch × seq``: the step's token ids (int64, alive through the step, CUDA-rounded) are
    the one tensor alive at every moment of the step whose size depends on the batch."""
    grown = _blocks(8 * batch * seq) - _blocks(8 * _FLOOR_SEQ)
    return floor[0], floor[1] + grown if floor[1] else 0


@lru_cache(maxsize=256)
def _cached(key: str, args: tuple[Any, ...]) -> tuple[int, int]:
    cfg = json.loads(key)
    scaled = scalable_layers(cfg)
    if scaled is None:
        return _run(cfg, *args)
    field, layers, period = scaled
    parts = [_run(_truncated(cfg, field, n * period), *args) for n in (1, 2, 3)]
    groups = layers // period
    if _steady(parts[0], parts[1], parts[2]):
        return _extend(parts[0], parts[1], groups - 1)
    if groups > 4:  # a first group unlike the rest (the head's transient outweighs one layer)
        parts.append(_run(_truncated(cfg, field, 4 * period), *args))
        if _steady(parts[1], parts[2], parts[3]):
            return _extend(parts[1], parts[2], groups - 2)
    return _run(cfg, *args)


def _steady(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> bool:
    """Whether every figure grows by the same amount from a to b as from b to c."""
    return all(y - x == z - y for x, y, z in zip(a, b, c, strict=True))


def _extend(a: tuple[int, int], b: tuple[int, int], more: int) -> tuple[int, int]:
    """``a`` plus ``more`` times the growth from a to b."""
    return a[0] + more * (b[0] - a[0]), a[1] + more * (b[1] - a[1])


def _run(
    cfg: dict[str, Any],
    mode: str,
    optimizer: str | None,
    batch: int,
    seq: int,
    precision: str,
    checkpointing: bool,
    lora_rank: int,
    lora_targets: str,
    attention: str | None,
) -> tuple[int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    dtype = getattr(torch, _DTYPES[precision])
    try:
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except Exception as exc:  # noqa: BLE001 - transformers' validation of a truncated config
        raise ConfigError(f"the step's config could not be built: {exc}") from None

    def build() -> Any:
        chosen = {"attn_implementation": attention} if attention else {}
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **chosen)
        if any(name.endswith("experts") for name, _ in model.named_modules()):
            raise DryRunError("MoE routing depends on values fake tensors do not have")
        if mode == "inference":
            return model.eval(), None
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()  # type: ignore[operator]
        if mode == "lora":
            model = _with_adapters(model, lora_rank, lora_targets)
        if optimizer is None:
            return model, None
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, _optimizer(optimizer, trainable)

    # two steps with an optimizer (the second backward can peak above the first: its state
    # exists); without one both steps are the same (checked on five presets)
    return _dry_peaks(
        build,
        _lm_step(mode, batch, seq, {}),
        steps=1 if optimizer is None else 2,
        error=ConfigError,
        what="the step",  # transformers refusing the config
    )


def _lm_step(mode: str, batch: int, seq: int, train_kwargs: dict[str, Any]) -> Any:
    """A causal LM's step on ``batch x seq`` token ids: an inference prefill with the cache,
    or forward with labels (and ``train_kwargs``), backward and the optimizer's step."""
    import torch

    def step(model: Any, opt: Any) -> None:
        ids = torch.zeros(batch, seq, dtype=torch.long)
        if mode == "inference":
            with torch.no_grad():
                model(input_ids=ids, use_cache=True)
            return
        model(input_ids=ids, labels=ids, **train_kwargs).loss.backward()
        if opt is None:
            model.zero_grad(set_to_none=True)
            return
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _dry_peaks(build: Any, step: Any, *, steps: int, error: type, what: str) -> tuple[int, int]:
    """The own peaks of activations and temporaries of ``steps`` dry-run steps (CUDA rounding);
    a failure other than gpumem's own becomes ``error`` saying ``what`` could not be dry-run."""
    from profiler.dryrun import dry_run

    with _quiet():
        try:
            run = dry_run(build, step, steps=steps, device="cuda")
        except (DryRunError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - a config or module fake tensors cannot run
            raise error(f"{what} could not be dry-run: {exc}") from None
    peaks = dict(zip(CATEGORIES, run.tracker.peaks.by_category, strict=True))
    return int(peaks[Category.ACTIVATIONS]), int(peaks[Category.TEMPORARIES])


def measure_module_step(
    module: Any, *, mode: str, optimizer: str, batch: int, seq: int, checkpointing: bool
) -> tuple[int, int]:
    """The own peaks of activations and temporaries of one step of a live transformers module
    (a PeftModel, a partly frozen model: its own trainable parameters and adapters), dry-run on
    a fake copy of it (no memory), in bytes (CUDA rounding).

    Raises:
        DryRunError: the step cannot run on fake tensors.
    """
    from profiler.replay import fake_copy

    if mode in ("train", "lora") and optimizer not in _OPTIMIZERS:
        raise DryRunError(f"the {optimizer} optimizer cannot be dry-run here")

    copied, _ = fake_copy(module)  # meta parameters, made fake by the dry run (as a replay's)

    def build() -> Any:
        model = copied
        if mode == "inference":
            return model.eval(), None
        model.train()
        if checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()  # type: ignore[operator]
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, _optimizer(optimizer, trainable)

    return _dry_peaks(
        build,
        _lm_step(mode, batch, seq, {"use_cache": False}),
        steps=1 if mode == "inference" else 2,
        error=DryRunError,
        what="the module's step",
    )


def _optimizer(name: str, params: list[Any]) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False)
    if name == "adamw-8bit":
        from profiler.replay import Adam8bitLayout  # bitsandbytes' state, without CUDA

        return Adam8bitLayout(params)
    return torch.optim.AdamW(params, lr=1e-3)


#: peft target modules for the estimate's LoRA target sets.
_LORA_TARGETS: dict[str, Any] = {
    "all-linear": "all-linear",
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qv": ["q_proj", "v_proj"],
}


def _with_adapters(model: Any, rank: int, targets: str) -> Any:
    """The model with peft LoRA adapters of ``rank`` on ``targets`` (base weights frozen)."""
    try:
        import peft
    except ImportError:
        raise DryRunError("a LoRA step needs peft (pip install peft)") from None
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=_LORA_TARGETS[targets])
    return peft.get_peft_model(model, config)


# -- the fit -----------------------------------------------------------------------------------


def _terms(batch: int, seq: int) -> tuple[int, ...]:
    return (1, batch, seq, batch * seq, seq * seq, batch * seq * seq)


@dataclass(frozen=True, slots=True)
class FitPiece:
    """One regime of a fit: sequences up to ``upto`` (None: any longer), six points, a check.

    ``coefficients`` holds, per category (activations, temporaries), one exact fraction per
    :data:`FIT_TERMS` term for the forward and backward.
    """

    upto: int | None
    points: tuple[tuple[int, int], ...]
    coefficients: tuple[tuple[Fraction, ...], tuple[Fraction, ...]]
    check: tuple[int, int]
    check_measured: tuple[int, int]

    def forward(self, batch: int, seq: int) -> tuple[int, int]:
        terms = _terms(batch, seq)
        a, t = (
            round(sum(c * x for c, x in zip(co, terms, strict=True))) for co in self.coefficients
        )
        return int(a), int(t)


@dataclass(frozen=True, slots=True)
class StepFit:
    """Activations and temporaries as functions of (batch, seq), solved from dry runs.

    One :class:`FitPiece` per regime of the sequence length (two where a sliding window is
    shorter than the fit's longest sequence: the attention masks change past it); ``floor`` is
    the optimizer step's own peak per category (0 in inference), which a step's peak is never
    below.
    """

    pieces: tuple[FitPiece, ...]
    floor: tuple[int, int]

    @property
    def points(self) -> tuple[tuple[int, int], ...]:
        """Every (batch, seq) dry-run for the fit."""
        return tuple(p for piece in self.pieces for p in piece.points)

    @property
    def check(self) -> tuple[int, int]:
        """The first piece's check point."""
        return self.pieces[0].check

    @property
    def holds(self) -> bool:
        """Whether each piece is within 1% (or 1 MiB) of the direct dry run at its check."""
        return all(
            abs(f - d) <= max(d * FIT_TOLERANCE, FIT_SLACK)
            for piece in self.pieces
            for f, d in zip(self.at(*piece.check), piece.check_measured, strict=True)
        )

    def at(self, batch: int, seq: int) -> tuple[int, int]:
        """The fitted (activations, temporaries) bytes at ``batch`` rows of ``seq`` tokens."""
        piece = next(p for p in self.pieces if p.upto is None or seq <= p.upto)
        floor = floor_at(self.floor, batch, seq)
        a, t = piece.forward(batch, seq)
        return max(a, 0, floor[0]), max(t, 0, floor[1])

    @property
    def label(self) -> str:
        """How an output names figures from this fit."""
        shown = ", ".join(f"({b},{s})" for b, s in self.points)
        checks = ", ".join(f"({b},{s})" for b, s in (p.check for p in self.pieces))
        split = (
            f" (one fit below the sliding window of {(self.pieces[0].upto or 0) + 1} tokens, "
            "one from it on)"
            if len(self.pieces) > 1
            else ""
        )
        return f"fitted from dry runs at (batch,seq) {shown}{split}, checked at {checks}"


def fit_step(
    config: Mapping[str, Any],
    *,
    limit: int | None = None,
    window: int | None = None,
    **step: Any,
) -> StepFit:
    """Dry-run six (batch, seq) points per regime, solve for :data:`FIT_TERMS`, and check.

    The check is a direct dry run of the whole step at one more point per regime
    (:attr:`StepFit.holds`).

    Args:
        config: the transformers config.
        limit: the model's longest context: the points stay within it.
        window: the sliding window, where layers have one: sequences shorter than it and the
            rest are fitted apart.
        step: :func:`measure_step`'s other keywords (mode, optimizer, precision, ...).

    Raises:
        DryRunError, ConfigError: as :func:`measure_step`.
    """
    longest = min(limit or _FIT_SEQ, _FIT_SEQ)
    if longest < 3:
        raise DryRunError(f"a context limit of {longest} is too short to fit")
    step = {k: v for k, v in step.items() if k not in ("batch", "seq")}
    bounds: list[tuple[int, int, int | None]] = [(0, longest, None)]
    if window is not None and 6 < window <= longest:
        # transformers masks from a sequence as long as the window on: a regime of its own
        below = window - 1 if window < 1024 else (window - 1) // 256 * 256
        bounds = [(0, below, window - 1), (window - 1, longest, None)]
    pieces = tuple(_piece(config, low, high, upto, step) for low, high, upto in bounds)
    floor = (0, 0)
    if step.get("mode") != "inference":  # the optimizer step's own peak (see measure_step)
        floor = measure_step(config, batch=1, seq=_FLOOR_SEQ, **step)
    return StepFit(pieces, floor)


def _piece(
    config: Mapping[str, Any], low: int, high: int, upto: int | None, step: dict[str, Any]
) -> FitPiece:
    """Six points at a third, two thirds and all of (low, high], two batches each; a check."""
    unit = 256 if high - low >= 768 else 1  # whole CUDA blocks: no rounding in the terms

    def at(fraction: float) -> int:
        seq = low + int((high - low) * fraction)
        rounded = seq // unit * unit
        return rounded if rounded > low else seq

    seqs = (at(1 / 3), at(2 / 3), high)
    points = tuple((b, s) for s in seqs for b in _FIT_BATCHES)
    forward = [
        measure_step(config, batch=b, seq=s, optimizer_step=False, **step) for b, s in points
    ]
    rows = [_terms(b, s) for b, s in points]
    coefficients = tuple(_solve(rows, [v[i] for v in forward]) for i in (0, 1))
    # between the points in both: batch 6, halfway between the two shorter sequences
    middle = (seqs[0] + seqs[1]) // 2
    check = (_CHECK_BATCH, middle // unit * unit if middle // unit * unit > seqs[0] else middle)
    measured = measure_step(config, batch=check[0], seq=check[1], **step)
    return FitPiece(upto, points, coefficients, check, measured)  # type: ignore[arg-type]


def _solve(rows: list[tuple[int, ...]], values: list[int]) -> tuple[Fraction, ...]:
    """The exact solution of the square system ``rows · x = values`` (Gauss-Jordan)."""
    n = len(rows)
    matrix = [
        [Fraction(v) for v in row] + [Fraction(y)] for row, y in zip(rows, values, strict=True)
    ]
    for col in range(n):
        pivot = next(r for r in range(col, n) if matrix[r][col] != 0)
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        for r in range(n):
            if r != col and matrix[r][col] != 0:
                factor = matrix[r][col] / matrix[col][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col], strict=True)]
    return tuple(matrix[i][n] / matrix[i][i] for i in range(n))
