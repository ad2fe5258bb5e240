"""The rows of the interactive tables: sessions and jobs on the main screen, a job's ranks.

Pure functions of a :class:`~tui.snapshot.Snapshot` (no Textual). On the main screen a job (the
sessions sharing a job id) is one row: the ranks seen of the world size, the peak across ranks
(max, and min / mean beside it), the imbalance, the rank nearest to its capacity and the slowest
rank's step; enter opens its per-rank table (:func:`rank_row`), enter again one rank.
"""

from __future__ import annotations

from collections.abc import Sequence

from profiler.backends.base import DeviceInfo
from profiler.session.jobs import JobView
from profiler.session.reader import SessionView
from profiler.units import format_bytes
from tui.snapshot import Snapshot, session_capacity
from tui.widgets.render import session_row

__all__ = [
    "JOB_PREFIX",
    "RANK_COLUMNS",
    "ROW_COLUMNS",
    "group_rows",
    "highest_rank",
    "job_header",
    "job_id_of",
    "rank_row",
]

#: The identity of a job's row starts with this (a directory name never holds a NUL).
JOB_PREFIX = "\x00job\x00"

_RIGHT = ("STEP", "CURRENT", "PEAK", "MIN / MEAN", "IMBAL", "NEAREST", "CAP")
#: The columns of the main screen's table of sessions and jobs: (label, justify).
ROW_COLUMNS = tuple(
    (name, "right" if name in _RIGHT else "left")
    for name in (
        "NAME", "PID", "RANK", "DEVICE", "STEP", "CURRENT", "PEAK", "MIN / MEAN", "IMBAL",
        "NEAREST", "STATUS",
    )
)  # fmt: skip
#: The columns of a job's per-rank table.
RANK_COLUMNS = tuple(
    (name, "right" if name in _RIGHT else "left")
    for name in ("RANK", "LOCAL", "HOST", "PID", "DEVICE", "STEP", "CURRENT", "PEAK", "CAP",
                 "STATUS")
)  # fmt: skip


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _share(peak: int | None, capacity: int | None) -> str:
    return "" if peak is None or not capacity else f"{peak / capacity:.0%}"


def _status(session: SessionView) -> str:
    return "live" if session.live else (session.status or "ended")


def job_id_of(identity: str | None) -> str | None:
    """The job id a row identity names, or ``None`` for a session's row."""
    if identity is not None and identity.startswith(JOB_PREFIX):
        return identity[len(JOB_PREFIX) :]
    return None


def _session_cells(session: SessionView, devices: Sequence[DeviceInfo]) -> tuple[str, ...]:
    *who, status = session_row(session)  # NAME ... PEAK, STATUS as --once prints them
    return (*who, "", "", _share(session.peak, session_capacity(session, devices)), status)


def _job_cells(job: JobView) -> tuple[str, ...]:
    first = job.sessions[0]
    live = sum(1 for s in job.sessions if s.live)
    if live == len(job.sessions):
        status = "live"
    elif live:
        status = f"{live}/{len(job.sessions)} live"
    else:
        status = _status(first)
    devices = {s.meta.device for s in job.sessions if s.meta.device}
    kinds = {device.split(":")[0] for device in devices}
    hosts = {s.meta.host for s in job.sessions if s.meta.host}
    if len(hosts) > 1:
        where = f"{len(hosts)} hosts"
    else:
        where = f"{len(devices)}×{kinds.pop()}" if len(kinds) == 1 else f"{len(devices)} devs"
    mean = None if job.mean_peak is None else int(job.mean_peak)
    return (
        f"▸ {first.meta.name} [{job.job_id}]"[:40],
        "-",
        f"{job.ranks_seen}/{_opt(job.world_size)}",
        where,
        "-" if job.slowest_step is None else f"{job.slowest_step} (r{_opt(job.slowest_rank)})",
        format_bytes(max((s.current for s in job.sessions if s.current is not None), default=None)),
        format_bytes(job.max_peak),
        f"{format_bytes(job.min_peak)} / {format_bytes(mean)}",
        "-" if job.imbalance is None else f"{job.imbalance:.0%}",
        "-"
        if job.nearest_rank is None or job.nearest_share is None
        else f"r{job.nearest_rank} {job.nearest_share:.0%}",
        status,
    )


def group_rows(snapshot: Snapshot) -> list[tuple[str, tuple[str, ...], str]]:
    """The main table's rows: one per job (identity :data:`JOB_PREFIX` + id), one per other
    session (its id); ended ones dimmed."""
    rows = []
    for item in snapshot.groups:
        if isinstance(item, JobView):
            rows.append((JOB_PREFIX + item.job_id, _job_cells(item), "" if item.live else "dim"))
        else:
            rows.append(
                (item.id, _session_cells(item, snapshot.devices), "" if item.live else "dim")
            )
    return rows


def rank_row(session: SessionView, devices: Sequence[DeviceInfo]) -> tuple[str, ...]:
    """A rank's cells in its job's table."""
    meta = session.meta
    return (
        _opt(meta.rank),
        _opt(meta.local_rank),
        meta.host or "-",
        _opt(meta.pid),
        meta.device or "-",
        _opt(session.step),
        format_bytes(session.current),
        format_bytes(session.peak),
        _share(session.peak, session_capacity(session, devices)),
        _status(session),
    )


def highest_rank(job: JobView) -> SessionView:
    """The job's session with the highest peak (the first rank when none has one)."""
    best = job.sessions[0]
    for session in job.sessions:
        if session.peak is not None and (best.peak is None or session.peak > best.peak):
            best = session
    return best


def job_header(job: JobView) -> str:
    """One line about a job: its ranks, the peaks across them, the outliers."""
    mean = None if job.mean_peak is None else int(job.mean_peak)
    parts = [
        f"job {job.job_id}",
        f"{job.ranks_seen}/{_opt(job.world_size)} ranks",
        f"peak min {format_bytes(job.min_peak)} · max {format_bytes(job.max_peak)} · "
        f"mean {format_bytes(mean)}",
    ]
    if job.imbalance is not None:
        parts.append(f"imbalance {job.imbalance:.0%}")
    if job.nearest_rank is not None and job.nearest_share is not None:
        parts.append(f"nearest capacity rank {job.nearest_rank} ({job.nearest_share:.0%})")
    if job.slowest_step is not None:
        parts.append(f"slowest rank {_opt(job.slowest_rank)} at step {job.slowest_step}")
    parts.append("live" if job.live else "ended")
    return "  ·  ".join(parts)
