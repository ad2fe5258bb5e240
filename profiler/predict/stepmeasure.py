"""Activations and temporaries measured by a dry run of the real class at the asked size.

Opt-in (``estimate(..., measure_step=True)``, ``gpumem estimate --measure-step``): the config's
model is built by transformers under :func:`profiler.dryrun.dry_run` (fake tensors: no memory)
and two steps run through the exact ledger at the requested batch and sequence length: a
training step (forward with labels, backward, the optimizer's step) or an inference prefill
(``no_grad`` forward with the model's cache). Each category's own peak is read.

The step is measured at the asked point, not fitted from small ones: peaks are maxima of
several terms (logits against optimizer scratch, for instance), so a fit from small sizes can
pick the wrong term. Depth is what is scaled: where the layers repeat (see
:mod:`profiler.predict.measured`), 1, 2 and 3 layers are dry-run and each figure must grow by
the same amount per layer, or the whole model is dry-run. Which experts a token reaches
depends on values fake tensors do not have, so MoE models raise
:class:`~profiler.errors.DryRunError` (the estimate keeps its formulas then, and says so).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from profiler.errors import ConfigError, DryRunError
from profiler.predict.measured import _PRESET_KEYS, _quiet, _truncated, scalable_layers
from profiler.records import CATEGORIES, Category

__all__ = ["STEP_SOURCE", "measure_step"]

#: How an estimate labels the figures this module measures.
STEP_SOURCE = "measured (dry run of the real class on fake tensors)"
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_OPTIMIZERS = ("adamw", "sgd", "adafactor")


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
) -> tuple[int, int]:
    """The own peaks of activations and temporaries of one step, in bytes (CUDA rounding).

    Raises:
        DryRunError: the step cannot run on fake tensors (MoE routing, for instance), or the
            optimizer cannot be built here (8-bit optimizers need bitsandbytes and CUDA).
        ConfigError: the config cannot be built.
    """
    if mode in ("train", "lora") and optimizer not in _OPTIMIZERS:
        raise DryRunError(f"the {optimizer} optimizer cannot be dry-run here")
    if mode not in ("train", "lora", "inference") or precision not in _DTYPES:
        raise DryRunError(f"a {mode} step in {precision} is not dry-run")
    cleaned = {k: v for k, v in config.items() if k not in _PRESET_KEYS}
    key = json.dumps(cleaned, sort_keys=True)
    args = (mode, optimizer, batch, seq, precision, checkpointing, lora_rank, lora_targets)
    return _cached(key, args)


@lru_cache(maxsize=64)
def _cached(key: str, args: tuple[Any, ...]) -> tuple[int, int]:
    cfg = json.loads(key)
    scaled = scalable_layers(cfg)
    if scaled is not None:
        field, layers, period = scaled
        parts = [_run(_truncated(cfg, field, n * period), *args) for n in (1, 2, 3)]
        steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(parts, parts[1:], strict=False)]
        if steps[0] == steps[1]:
            groups = layers // period - 1
            return parts[0][0] + groups * steps[0][0], parts[0][1] + groups * steps[0][1]
    return _run(cfg, *args)


def _run(
    cfg: dict[str, Any],
    mode: str,
    optimizer: str,
    batch: int,
    seq: int,
    precision: str,
    checkpointing: bool,
    lora_rank: int,
    lora_targets: str,
) -> tuple[int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from profiler.dryrun import dry_run

    cfg = dict(cfg)
    dtype = getattr(torch, _DTYPES[precision])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)

    def build() -> Any:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if any(name.endswith("experts") for name, _ in model.named_modules()):
            raise DryRunError("MoE routing depends on values fake tensors do not have")
        if mode == "inference":
            return model.eval(), None
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        if mode == "lora":
            model = _with_adapters(model, lora_rank, lora_targets)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, _optimizer(optimizer, trainable)

    def step(model: Any, opt: Any) -> None:
        ids = torch.zeros(batch, seq, dtype=torch.long)
        if mode == "inference":
            with torch.no_grad():
                model(input_ids=ids, use_cache=True)
            return
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with _quiet():
        try:
            run = dry_run(build, step, steps=2, device="cuda")
        except (DryRunError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - transformers refusing the config
            raise ConfigError(f"the step could not be dry-run: {exc}") from None
    peaks = dict(zip(CATEGORIES, run.tracker.peaks.by_category, strict=True))
    return int(peaks[Category.ACTIVATIONS]), int(peaks[Category.TEMPORARIES])


def _optimizer(name: str, params: list[Any]) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False)
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
