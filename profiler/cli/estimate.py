"""``gpumem estimate``: will it fit? Memory per category for a model, and which GPUs hold it."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

from profiler.errors import UsageError
from profiler.records import Category
from profiler.text import printable
from profiler.units import format_bytes, format_gb

HELP = "Estimate memory per category for a model or preset, and which GPUs it fits."

#: The GPUs of the default table (the whole catalog is in --json).
TABLE_GPUS = (
    "RTX 3090",
    "RTX 4090",
    "RTX 5090",
    "A10",
    "L4",
    "L40S",
    "A100 40GB",
    "A100 80GB",
    "H100 80GB",
    "H200 141GB",
    "B200",
    "MI300X",
)

_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The estimate command's options."""
    parser.add_argument(
        "model",
        nargs="?",
        help="a preset (see --list), a path to config.json, a Hugging Face model id (its "
        "config only), or a parameter count like 7B",
    )
    parser.add_argument("--list", action="store_true", help="list the model presets and exit")
    parser.add_argument(
        "--precision",
        "-p",
        help="fp32, fp16, bf16, int8, int4, gptq, awq, nf4, nf4-dq, llm-int8, q8_0, q5_k_m, q4_k_m",
    )
    parser.add_argument(
        "--mode", "-m", default="inference", help="inference (default), train, lora, qlora"
    )
    parser.add_argument(
        "--optimizer", "-o", default="adamw", help="adamw (default), adamw-8bit, sgd, adafactor"
    )
    parser.add_argument("--batch", "-b", default="1", help="batch size (default 1)")
    parser.add_argument(
        "--seq", "--context", "-s", dest="seq", help="sequence or context length (default 2048)"
    )
    parser.add_argument("--gpu", "-g", help="a GPU: show the largest batch and context that fit")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing (keep each block's input only)",
    )
    parser.add_argument("--attention", default="sdpa", help="sdpa (default), flash, eager")
    parser.add_argument(
        "--master-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep fp32 master weights (default: on for 16-bit full training)",
    )
    parser.add_argument("--optimizer-dtype", help="dtype of optimizer moments (default: weights')")
    parser.add_argument("--lora-rank", default="16", help="LoRA rank (default 16)")
    parser.add_argument(
        "--formulas",
        action="store_true",
        help="activations and temporaries from the formulas (approximate) instead of dry runs",
    )
    parser.add_argument(
        "--measure-step",
        action="store_true",
        help="activations and temporaries by dry runs of the real class (the default)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


#: The largest value each whole-number option takes (beyond any real run).
_HIGHEST = {"batch": 1 << 20, "seq": 1 << 24, "lora rank": 1 << 16}
#: The largest parameter count (``1000T``) and the longest MODEL or option text taken.
MAX_PARAMETERS = 10**15
MAX_TEXT = 4096


def _whole(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    shown = printable(text, limit=40)
    try:
        value = int(text) if len(text) <= 32 else None
    except ValueError:
        value = None
    if value is None:
        raise UsageError(f"{name} must be a whole number, got {shown!r}")
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {shown}")
    if value > _HIGHEST[name]:
        raise UsageError(f"{name} must be at most {_HIGHEST[name]}, got {shown}")
    return value


def _param_count(text: str) -> int | None:
    match = _COUNT.match(text) if len(text) <= 64 else None
    if match is None or "." in text and not match.group(2) and "e" not in text.lower():
        return None
    if not match.group(2) and "e" not in text.lower():
        return None  # a bare integer is not a model
    value = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if not 1 <= value <= MAX_PARAMETERS:  # False for inf (1e999) and NaN
        raise UsageError(
            f"parameter count out of range: {printable(text, limit=40)!r}",
            hint="between 1 and 1000T (1e15)",
        )
    return int(value)


def check_text(args: argparse.Namespace) -> None:
    """Refuse overlong, NUL-holding or non-text option values up front (one line, exit 2)."""
    for option in ("model", "precision", "mode", "optimizer", "gpu", "attention"):
        value = getattr(args, option, None)
        if value is None:
            continue
        if len(value) > MAX_TEXT or "\x00" in value:
            raise UsageError(
                f"--{option} is too long or holds a NUL: {printable(value, limit=40)!r}"
            )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.formulas and args.measure_step:
        raise UsageError("--formulas and --measure-step exclude each other")
    return {
        "precision": args.precision,
        "mode": args.mode,
        "optimizer": args.optimizer,
        "batch": _whole("batch", args.batch),
        "seq": _whole("seq", args.seq),
        "gradient_checkpointing": args.checkpointing,
        "attention": args.attention,
        "master_weights": args.master_weights,
        "optimizer_dtype": args.optimizer_dtype,
        "lora_rank": _whole("lora rank", args.lora_rank),
        "measure_step": not args.formulas,
    }


def _largest(fits: Any, low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n), assuming fits is monotone; None if none."""
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _confirmed(fits: Any, guess: int | None, low: int, high: int) -> int | None:
    """The largest n in [low, high] that ``fits`` (direct dry runs), starting from ``guess``.

    The guess holds where ``fits(guess)`` and not ``fits(guess + 1)``; otherwise the bracket
    grows from it by doubling steps and is then halved, so a near guess costs a few dry runs
    (each size is dry-run once: the measurements are cached).
    """
    start = low if guess is None else guess
    if fits(start):
        if start == high or not fits(start + 1):
            return start
        step, good = 2, start + 1
        while good + step <= high and fits(good + step):
            good, step = good + step, step * 2
        return _largest(fits, good, min(high, good + step - 1))
    if guess is None:
        return None
    step, bad = 1, start
    while bad - step >= low and not fits(bad - step):
        bad, step = bad - step, step * 2
    if bad - step < low:
        return _largest(fits, low, bad - 1) if bad > low else None
    return _largest(fits, bad - step, bad - 1)


def _fitted(base: Any) -> tuple[Any, str]:
    """A fit of the step for the searches, where it holds at its check point; else (None, why)."""
    from profiler.errors import ConfigError, DryRunError
    from profiler.predict.stepmeasure import fit_step

    inputs = dict(base.step_inputs)
    config, window = inputs.pop("config"), inputs.pop("window")
    try:
        fit = fit_step(config, limit=base.max_positions, window=window, **inputs)
    except (DryRunError, ConfigError) as exc:
        return None, f"no fit ({exc.message}): searched with direct dry runs"
    if not fit.holds:
        return None, f"the fit ({fit.label}) missed by over 1%: searched with direct dry runs"
    return fit, f"{fit.label} (within 1%)"


def limits(model: Any, options: dict[str, Any], gpu: Any) -> dict[str, Any]:
    """Largest batch (at the given seq) and longest seq (at the given batch) that fit on gpu.

    Where the step is dry-run, the searches run on a fit of six dry runs per regime (checked
    by a direct dry run at one more point; where it misses, on direct dry runs) and each answer
    is confirmed by direct dry runs at it (fits) and one above (does not), walked from there by
    direct dry runs where they disagree; ``search`` says how the answers were found.
    """
    from profiler.predict.estimate import estimate

    base = estimate(model, **options)
    seq, batch = base.seq, base.batch
    # every source knows its limit: the real config class, a config file, a preset
    longest = base.max_positions or 1 << 22
    state: dict[str, Any] = {"how": base.category_sources[Category.ACTIVATIONS]}

    def fitted() -> Any:
        if "fit" not in state:  # built on first use: not where nothing fits
            state["fit"], state["how"] = _fitted(base)
        return state["fit"]

    def fits(n_batch: int, n_seq: int, fit: Any = None) -> bool:
        change = {"batch": n_batch, "seq": n_seq, "step_fit": fit}
        if fit is None and base.step_inputs is not None:
            # no dry run where the rest alone (weights, state, cache) cannot fit
            rest = estimate(model, **{**options, **change, "measure_step": False})
            cats = rest.categories
            floor = rest.allocated - cats[Category.ACTIVATIONS] - cats[Category.TEMPORARIES]
            margin = math.ceil(floor * rest.margin_fraction)
            if floor + margin + gpu.context_bytes > gpu.memory_bytes:
                return False
        return estimate(model, **{**options, **change}).fits(gpu)

    results: dict[str, Any] = {}
    corrected = False
    for key, top, probe in (
        ("max_batch", 1 << 16, lambda n, f=None: fits(n, seq, f)),
        ("max_seq", longest, lambda n, f=None: fits(batch, n, f)),
    ):
        if base.step_inputs is None:  # formulas: no dry runs to confirm with
            results[key] = _largest(probe, 1, top)
            continue
        if not probe(1):  # a direct dry run: not even one fits
            results[key] = None
            continue
        fit = fitted()
        guess = _largest(lambda n, p=probe, f=fit: p(n, f), 1, top) if fit is not None else None
        results[key] = _confirmed(probe, guess, 1, top)
        corrected = corrected or (fit is not None and results[key] != guess)
    how = state["how"]
    if base.step_inputs is not None and "fit" not in state:
        how = "direct dry runs (none fits at the smallest size)"
    elif base.step_inputs is not None and state["fit"] is not None:
        how += (
            "; answers corrected by direct dry runs"
            if corrected
            else "; answers confirmed by direct dry runs"
        )
    return {**results, "seq_limit": base.max_positions, "search": how}


def _list(out: Any, as_json: bool) -> int:
    from profiler.predict.formulas import kv_cache_bytes_per_token, parameter_count
    from profiler.predict.modelshape import shape_from_config
    from profiler.predict.presets import load_preset, preset_names
    from profiler.predict.sources import APPROXIMATE

    rows = []
    for name in preset_names():
        data = load_preset(name)
        shape = shape_from_config(data, name=name)
        rows.append(
            {
                "name": name,
                "display": data.get("display", name),
                "hf_id": data.get("hf_id"),
                "parameters": parameter_count(shape),
                "layers": shape.num_layers,
                "kv_heads": shape.num_kv_heads,
                "context": shape.max_positions,
                "kv_bytes_per_token_fp16": kv_cache_bytes_per_token(shape, 2),
                "source": APPROXIMATE,
            }
        )
    if as_json:
        out.write(json.dumps({"presets": rows}, indent=2) + "\n")
        return 0
    out.write(
        f"{'preset':<14} {'model':<18} {'params':>8} {'layers':>6} {'kv heads':>8} "
        f"{'context':>8} {'KV/token':>11}\n"
    )
    for r in rows:
        out.write(
            f"{r['name']:<14} {r['display']:<18} {r['parameters'] / 1e9:>7.2f}B {r['layers']:>6} "
            f"{r['kv_heads']:>8} {r['context'] or '-':>8} "
            f"{format_bytes(r['kv_bytes_per_token_fp16']):>11}\n"
        )
    out.write(f"source: {APPROXIMATE}; gpumem estimate NAME measures each on the real class\n")
    return 0


def _render(est: Any, gpus: list[Any], extra: dict[str, Any], out: Any) -> None:
    trainer = f" · {est.optimizer}" if est.optimizer else ""
    out.write(
        f"{est.model} · {est.mode} · {est.precision}{trainer} · batch {est.batch} · "
        f"{'seq' if est.mode != 'inference' else 'context'} {est.seq} · "
        f"{est.parameters / 1e9:.2f}B parameters\n\n"
    )
    out.write(f"source: {est.source}\n\n")
    out.write(f"{'category':<18} {'GB':>9} {'bytes':>11}  source\n")
    sources = est.category_sources
    for category, nbytes in est.categories.items():
        out.write(
            f"{str(category):<18} {format_gb(nbytes):>9} {format_bytes(nbytes):>11}"
            f"  {sources[category]}\n"
        )
    if est.ssm_state:
        nbytes = est.ssm_state
        out.write(f"{'ssm_state':<18} {format_gb(nbytes):>9} {format_bytes(nbytes):>11}\n")
    for line in est.overheads:
        out.write(f"{line.name:<18} {format_gb(line.bytes):>9} {format_bytes(line.bytes):>11}\n")
    out.write(f"{'total':<18} {format_gb(est.total):>9} {format_bytes(est.total):>11}\n")
    for note in est.notes:
        out.write(f"note: {note}\n")
    out.write(f"\n{'GPU':<12} {'memory':>11} {'needed':>11}  fits\n")
    for gpu in gpus:
        needed = est.required_on(gpu)
        verdict = "yes" if needed <= gpu.memory_bytes else "no"
        out.write(
            f"{gpu.name:<12} {format_bytes(gpu.memory_bytes):>11} {format_bytes(needed):>11}"
            f"  {verdict}\n"
        )
    if extra:
        label = "seq" if est.mode != "inference" else "context"
        out.write(
            f"\non {extra['gpu']}: largest batch at {label} {est.seq}: "
            f"{extra['max_batch'] if extra['max_batch'] is not None else 'none fits'}; "
            f"longest {label} at batch {est.batch}: "
            f"{extra['max_seq'] if extra['max_seq'] is not None else 'none fits'}"
            + (f" (the model's limit is {extra['seq_limit']})" if extra.get("seq_limit") else "")
            + "\n"
            + f"  search: {extra['search']}\n"
        )


def run(args: argparse.Namespace) -> int:
    """Print the estimate table (or JSON) and the GPU fit table."""
    from profiler.predict.estimate import estimate
    from profiler.predict.gpus import find_gpu

    out = sys.stdout
    check_text(args)
    if args.list:
        return _list(out, args.json)
    if not args.model:
        raise UsageError("estimate needs a MODEL", hint="a preset name (gpumem estimate --list)")
    options = _options(args)
    count = _param_count(args.model)
    model: Any = count if count is not None else args.model
    spec = find_gpu(args.gpu) if args.gpu else None
    est = estimate(model, **options, gpu=spec)
    gpus = [find_gpu(name) for name in TABLE_GPUS]
    if spec is not None and spec not in gpus:
        gpus.append(spec)
    extra: dict[str, Any] = {}
    if spec is not None:
        extra = {"gpu": spec.name, **limits(model, {**options, "gpu": spec}, spec)}
    if args.json:
        data = est.to_dict(gpus)
        if extra:
            data["limits"] = extra
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    _render(est, gpus, extra, out)
    return 0
