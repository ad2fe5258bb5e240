"""``gpumem devices``: one line per GPU, with the processes on it (NVML).

Without a GPU or without the NVML library it prints one clear line and exits 0: having no GPU is
an answer, not an error.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from profiler.errors import BackendUnavailable
from profiler.text import printable
from profiler.units import format_bytes

HELP = "List the GPUs and the processes on them (NVML); exit 0 with one line where there is none."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpumem devices``."""
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument(
        "--demo", action="store_true", help="show a scripted demo machine instead of NVML"
    )


def collect(source: Any) -> tuple[list[Any], list[Any], str | None]:
    """(devices, processes, error) from a device source; the error says why there is nothing.

    ``source`` is a :class:`~profiler.backends.base.DeviceSource`, or a callable returning one
    (which may raise :class:`~profiler.errors.BackendUnavailable`).
    """
    try:
        if callable(source) and not hasattr(source, "devices"):
            source = source()
        devices = source.devices()
    except BackendUnavailable as exc:
        return [], [], exc.one_line()
    if not devices:
        return [], [], "NVML sees no GPU"
    try:
        processes = source.processes()
    except BackendUnavailable as exc:
        return devices, [], f"processes unavailable: {exc.one_line()}"
    return devices, processes, None


def _percent(value: int | None) -> str:
    return "-" if value is None else f"{value}%"


def render_lines(devices: list[Any], processes: list[Any], error: str | None) -> list[str]:
    """The text report: one line per GPU, its processes indented below it."""
    if not devices:
        return [f"no NVIDIA GPU found: {printable(error, limit=1000)}"]
    lines = []
    for d in devices:
        temperature = "-" if d.temperature is None else f"{d.temperature}°C"
        power = "-" if d.power_watts is None else f"{d.power_watts:.0f} W"
        mig = "-" if d.mig_mode is None else ("on" if d.mig_mode else "off")
        lines.append(
            f"GPU {d.index}  {printable(d.name or '?', limit=100)}  "
            f"{format_bytes(d.memory_used)} / {format_bytes(d.memory_total)} used  "
            f"util {_percent(d.utilization)}  {temperature}  {power}  MIG {mig}  "
            f"{printable(d.uuid or '-', limit=100)}"
        )
        mine = sorted(
            (p for p in processes if p.device_index == d.index),
            key=lambda p: (-(p.gpu_memory or 0), p.pid),
        )
        for p in mine:
            lines.append(
                f"    pid {p.pid:<8} {format_bytes(p.gpu_memory):>11}  "
                f"{printable(p.user or '?', limit=64):<10} "
                f"{printable(p.command or p.name or '?', limit=2000)}"
            )
        if not mine:
            lines.append("    no processes")
    if error is not None:
        lines.append(printable(error, limit=1000))
    return lines


def to_json(devices: list[Any], processes: list[Any], error: str | None) -> dict[str, Any]:
    """The JSON report: each device with its processes, and the error (or null)."""
    out = []
    for d in devices:
        row = asdict(d)
        row["processes"] = [
            {k: v for k, v in asdict(p).items() if k != "device_index"}
            for p in processes
            if p.device_index == d.index
        ]
        out.append(row)
    return {"devices": out, "error": error}


def run(args: argparse.Namespace) -> int:
    """Print the GPUs; exit 0 even where there is none."""
    if args.demo:
        from profiler.backends.fake import demo_source

        source: Any = demo_source()
    else:
        from profiler.backends.nvml import default_source

        source = default_source
    devices, processes, error = collect(source)
    if args.json:
        print(json.dumps(to_json(devices, processes, error), indent=2))
    else:
        print("\n".join(render_lines(devices, processes, error)))
    return 0
