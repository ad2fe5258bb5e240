"""``gpumem job JOB_ID``: the per-rank table of one distributed job, for scripts.

Reads the sessions under ``--home`` (default ``$GPUMEM_HOME``) once and prints one row per rank
(rank, local rank, host, live, step, current, peak) under the job's figures (ranks seen of the
world size, min/max/mean peak, imbalance, the rank nearest to its capacity, the slowest rank);
``--json`` prints the same as one object. A job id nobody recorded is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json

from profiler.errors import GpumemError

HELP = "Print the per-rank table of a distributed job."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``job`` subcommand's arguments."""
    parser.add_argument("job_id", metavar="JOB_ID", help="the job id (see `gpumem top`)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--home", metavar="DIR", help="gpumem home (default: $GPUMEM_HOME)")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    """Print the job; 0 when found."""
    from profiler.session.jobs import JobView, group_jobs, job_dict
    from profiler.session.reader import SessionReader
    from profiler.units import format_bytes

    reader = SessionReader(args.home)
    try:
        jobs = [j for j in group_jobs(reader.poll()) if isinstance(j, JobView)]
    finally:
        reader.close()
    job = next((j for j in jobs if j.job_id == args.job_id), None)
    if job is None:
        known = ", ".join(sorted(j.job_id for j in jobs)) or "none"
        raise GpumemError(f"no sessions of job {args.job_id!r} (jobs seen: {known})")
    if args.json:
        print(json.dumps(job_dict(job), sort_keys=True))
        return 0

    def size(value: float | None) -> str:
        return "-" if value is None else format_bytes(int(value))

    print(
        f"job {job.job_id}: {job.ranks_seen}/{_cell(job.world_size)} ranks · peak min "
        f"{size(job.min_peak)} max {size(job.max_peak)} mean {size(job.mean_peak)} · imbalance "
        f"{'-' if job.imbalance is None else f'{job.imbalance:.1%}'} · nearest capacity "
        f"{'-' if job.nearest_rank is None else f'rank {job.nearest_rank} ({job.nearest_share:.0%})'}"
        f" · slowest rank {_cell(job.slowest_rank)} at step {_cell(job.slowest_step)}"
    )
    header = ("rank", "local", "host", "live", "step", "current", "peak", "session")
    rows = [
        (
            _cell(v.meta.rank),
            _cell(v.meta.local_rank),
            _cell(v.meta.host),
            "yes" if v.live else "no",
            _cell(v.step),
            size(v.current),
            size(v.peak),
            v.id,
        )
        for v in job.sessions
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
