"""Where OOM reports live on disk: writing one (JSON, Markdown, HTML), reading one, finding one.

A report is written atomically (:func:`~profiler.session.atomic.write_atomic`) into its session's
directory as ``oom_report.{json,md,html}``, or without a session into
``$GPUMEM_HOME/reports/oom-<time>-<pid>.*``. The JSON goes last, so a reader that finds it finds
the other two as well. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from profiler.errors import StreamError
from profiler.report.model import OomReport, report_from_dict, report_from_json, report_to_json
from profiler.report.render_html import render_html
from profiler.report.render_md import render_markdown
from profiler.session import files
from profiler.session.atomic import write_atomic_at
from profiler.session.layout import gpumem_home, make_private_dirs, open_private_dir
from profiler.text import printable

__all__ = [
    "REPORT_STEM",
    "find_report",
    "load_report",
    "report_location",
    "reports_dir",
    "write_report",
]

#: File stem of the report inside a session directory.
REPORT_STEM = "oom_report"
#: The largest report file read (a real one is tens of kilobytes).
MAX_REPORT_BYTES = 64 * 1024 * 1024
#: Names of the other JSON files a session directory holds (never taken for a report).
_SESSION_FILES = frozenset({"meta.json", "summary.json", "modules.json"})


def reports_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``<gpumem home>/reports``, created with mode 0700: where reports go without a session."""
    path = gpumem_home(home) / "reports"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def report_location(
    session_dir: str | os.PathLike[str] | None,
    home: str | os.PathLike[str] | None,
    created: float,
) -> tuple[Path, str]:
    """The directory and file stem a report created at ``created`` is written under.

    The session's directory and ``oom_report`` when there is a session, else the home's
    ``reports/`` and ``oom-<local time>-<pid>``. The directory exists on return (mode 0700).
    """
    if session_dir is not None:
        directory, stem = Path(session_dir), REPORT_STEM
    else:
        directory = reports_dir(home)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(created))
        stem = f"oom-{stamp}-{os.getpid()}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory, stem


def write_report(report: OomReport, directory: Path, stem: str = REPORT_STEM) -> OomReport:
    """Write ``report`` as ``<stem>.json``, ``.md`` and ``.html`` into ``directory``, atomically.

    The JSON is written last, so a reader that finds it finds the other two as well.

    Returns:
        The report with ``path`` set to the JSON file.
    """
    directory = Path(directory)
    make_private_dirs(directory)
    path = directory / f"{stem}.json"
    written = dataclasses.replace(report, path=path)
    fd = open_private_dir(directory)  # through its descriptor: a swapped link redirects nothing
    try:
        write_atomic_at(fd, f"{stem}.md", render_markdown(written).encode("utf-8"))
        write_atomic_at(fd, f"{stem}.html", render_html(written).encode("utf-8"))
        write_atomic_at(fd, f"{stem}.json", (report_to_json(written) + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    return written


def load_report(path: str | os.PathLike[str]) -> OomReport:
    """Read a report written by :func:`write_report`.

    Raises:
        StreamError: the file is missing, unreadable, torn, corrupt, or not a report.
    """
    path = Path(path)
    try:
        raw = files.read_bytes(path, limit=MAX_REPORT_BYTES, follow_symlinks=True)
    except FileNotFoundError:
        raise StreamError(f"no report at {path}") from None
    except files.NotRegularFile as exc:
        raise StreamError(f"{path} is {exc.strerror}, not a report") from None
    except OSError as exc:
        raise StreamError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamError(f"{path} is not a gpumem report (not UTF-8 text)") from None
    if not text.strip():
        return report_from_json(text, source=str(path))  # raises: empty
    try:  # NaN, Infinity, 1e999 and absurd integers read as null; nesting is bounded
        data = files.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamError(
            f"{path} is not valid JSON (torn or corrupt: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno})",
            hint="re-run to write a new report",
        ) from None
    except ValueError as exc:
        raise StreamError(f"{path} is not valid JSON ({exc})") from None
    return dataclasses.replace(report_from_dict(data, source=str(path)), path=path)


def _newest(paths: list[Path]) -> Path | None:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return max(paths, key=mtime) if paths else None


def _in_directory(path: Path) -> Path:
    """The report in a session (or reports) directory."""
    inside = path / f"{REPORT_STEM}.json"
    if inside.is_file():
        return inside
    found = _newest(sorted(path.glob("*.json")))
    if found is not None and found.name not in _SESSION_FILES:
        return found
    raise StreamError(f"no OOM report in {path}", hint="the session ended without an OOM")


def _under_home(target: str, root: Path) -> Path:
    """The report ``target`` names under the home: ``latest``, or a session's name or id."""
    if target == "latest":
        candidates = list((root / "sessions").glob(f"*/{REPORT_STEM}.json"))
        candidates += list((root / "reports").glob("oom-*.json"))
        found = _newest(candidates)
        if found is None:
            raise StreamError(f"no OOM report under {root}")
        return found
    sessions = root / "sessions"
    matches = sorted(
        d for d in sessions.glob("*") if d.is_dir() and (d.name == target or target in d.name)
    )
    with_report = [d / f"{REPORT_STEM}.json" for d in matches]
    found = _newest([p for p in with_report if p.is_file()])
    if found is not None:
        return found
    if matches:
        raise StreamError(
            f"session {target!r} has no OOM report", hint="the session ended without an OOM"
        )
    raise StreamError(
        f"no report file or session named {target!r}",
        hint=f"give a report path, a session directory, or a session name under {sessions}",
    )


def find_report(target: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The report JSON that ``target`` names.

    ``target`` is a report file (``.json``, or its ``.md``/``.html`` sibling), a session
    directory, a session's name or id under ``$GPUMEM_HOME/sessions``, or ``latest`` (the newest
    report anywhere under the home).

    Raises:
        StreamError: nothing found.
    """
    try:
        return _find(target, home)
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a NUL, ~nosuchuser
        raise StreamError(
            f"cannot look for a report named {printable(target, limit=80)!r}: {exc}"
        ) from None


def _find(target: str, home: str | os.PathLike[str] | None) -> Path:
    path = Path(target).expanduser()
    if path.is_file():
        if path.suffix in (".md", ".html"):
            sibling = path.with_suffix(".json")
            if sibling.is_file():
                return sibling
        return path
    if path.is_dir():
        return _in_directory(path)
    return _under_home(target, gpumem_home(home, create=False))
