"""A job's sessions as one: the ranks of a distributed run grouped by their job id.

A rank is a session whose metadata carries a job id (:mod:`profiler.ranks`); a job is the
sessions sharing one. :func:`group_jobs` turns a poll's views into jobs with the figures that
matter across ranks: how many ranks are seen of the world size, the peak's min/max/mean and the
imbalance between them, the rank nearest to its device's capacity, and the slowest rank (the
fewest steps done). Sessions without a job id stay alone. Plain data, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from profiler.session.reader import SessionView

__all__ = ["JobView", "group_jobs", "job_dict", "rank_rows"]


@dataclass(frozen=True, slots=True)
class JobView:
    """The sessions of one job (ordered by rank) and their figures across ranks."""

    job_id: str
    sessions: tuple[SessionView, ...]
    world_size: int | None
    min_peak: int | None
    max_peak: int | None
    mean_peak: float | None
    #: (max - min) / max of the ranks' peaks: 0 for a balanced job
    imbalance: float | None
    #: the rank whose peak is the largest share of its capacity, and that share
    nearest_rank: int | None
    nearest_share: float | None
    #: the rank with the fewest steps done, and its step
    slowest_rank: int | None
    slowest_step: int | None

    @property
    def ranks_seen(self) -> int:
        """How many distinct ranks have a session."""
        return len({s.meta.rank for s in self.sessions})

    @property
    def live(self) -> bool:
        """Whether any rank still runs."""
        return any(s.live for s in self.sessions)


def _rank(view: SessionView) -> int:
    return view.meta.rank if view.meta.rank is not None else 1 << 30


def _job(
    job_id: str, views: Sequence[SessionView], capacity: Callable[[SessionView], Any]
) -> JobView:
    views = tuple(sorted(views, key=lambda v: (_rank(v), v.id)))
    peaks: list[int] = [v.peak for v in views if v.peak is not None]
    low, high = (min(peaks), max(peaks)) if peaks else (None, None)
    worlds = [v.meta.world_size for v in views if v.meta.world_size is not None]
    nearest: tuple[float, int] | None = None
    for view in views:
        size = capacity(view)
        if view.peak is not None and size and view.meta.rank is not None:
            share = view.peak / size
            if nearest is None or share > nearest[0]:
                nearest = (share, view.meta.rank)
    stepped = [(v.step, _rank(v)) for v in views if v.step is not None]
    slowest = min(stepped) if stepped else None
    return JobView(
        job_id=job_id,
        sessions=views,
        world_size=max(worlds) if worlds else None,
        min_peak=low,
        max_peak=high,
        mean_peak=sum(peaks) / len(peaks) if peaks else None,
        imbalance=(high - low) / high if high and low is not None else None,
        nearest_rank=None if nearest is None else nearest[1],
        nearest_share=None if nearest is None else nearest[0],
        slowest_rank=None if slowest is None or slowest[1] == 1 << 30 else slowest[1],
        slowest_step=None if slowest is None else slowest[0],
    )


def _meta_capacity(view: SessionView) -> int | None:
    if view.meta.capacity:
        return view.meta.capacity
    total = (view.nvml or {}).get("device_total")
    return total if isinstance(total, int) and total > 0 else None


def group_jobs(
    views: Iterable[SessionView],
    capacity: Callable[[SessionView], int | None] = _meta_capacity,
) -> list[JobView | SessionView]:
    """The views with each job's sessions folded into one :class:`JobView`, in first-seen order.

    ``capacity`` gives a session's device capacity (by default the simulated capacity, else
    NVML's device total the stream recorded).
    """
    order: list[JobView | SessionView | str] = []
    members: dict[str, list[SessionView]] = {}
    for view in views:
        job_id = view.meta.job_id
        if job_id is None:
            order.append(view)
            continue
        if job_id not in members:
            members[job_id] = []
            order.append(job_id)
        members[job_id].append(view)
    return [
        _job(item, members[item], capacity) if isinstance(item, str) else item for item in order
    ]


def rank_rows(job: JobView) -> list[dict[str, Any]]:
    """One plain dict per rank of ``job``: the per-rank table ``gpumem job`` prints."""
    return [
        {
            "rank": v.meta.rank,
            "local_rank": v.meta.local_rank,
            "host": v.meta.host,
            "session": v.id,
            "name": v.meta.name,
            "device": v.meta.device,
            "live": v.live,
            "step": v.step,
            "current": v.current,
            "peak": v.peak,
        }
        for v in job.sessions
    ]


def job_dict(job: JobView) -> dict[str, Any]:
    """``job`` as plain JSON-ready data (``top --once --json`` and ``gpumem job --json``)."""
    return {
        "job_id": job.job_id,
        "world_size": job.world_size,
        "ranks_seen": job.ranks_seen,
        "live": job.live,
        "min_peak": job.min_peak,
        "max_peak": job.max_peak,
        "mean_peak": job.mean_peak,
        "imbalance": job.imbalance,
        "nearest_rank": job.nearest_rank,
        "nearest_share": job.nearest_share,
        "slowest_rank": job.slowest_rank,
        "slowest_step": job.slowest_step,
        "ranks": rank_rows(job),
    }
