"""Creation sites: live storages made during a leak hunt, grouped by the line that made them.

During a hunt the run records where every storage is created (the innermost user frame, see
:mod:`profiler.frames`). Storages created in one step and still alive steps later are what a leak
keeps; grouped by (site, category) they say which line makes the leaked memory and how many bytes
a step it adds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from profiler.leaks.records import CreationSite
from profiler.leaks.source import source_of
from profiler.records import Category, LiveStorage

__all__ = ["creation_sites"]


def creation_sites(
    storages: Iterable[LiveStorage],
    *,
    first_step: int,
    last_step: int,
    categories: Iterable[Category] | None = None,
    steps: int | None = None,
) -> list[CreationSite]:
    """Group live storages created in ``first_step..last_step`` by (site, category), largest first.

    Args:
        storages: :class:`~profiler.records.LiveStorage` records (``run.live_storages()``).
        first_step, last_step: the creation steps to keep (inclusive).
        categories: keep only these categories (all when ``None``).
        steps: divide bytes by this many steps (default: the number of steps in the range).
    """
    wanted = None if categories is None else {Category(c) for c in categories}
    groups: dict[tuple[str | None, Category], list[LiveStorage]] = {}
    for storage in storages:
        if not first_step <= storage.step <= last_step:
            continue
        category = Category(storage.category)
        if wanted is not None and category not in wanted:
            continue
        groups.setdefault((storage.site, category), []).append(storage)
    per = max(1, steps if steps is not None else last_step - first_step + 1)
    result = []
    for (site, category), members in groups.items():
        # the module most of them were made in (the first seen on a tie)
        modules = [m.module for m in members if m.module]
        result.append(
            CreationSite(
                site=site,
                source=source_of(site),
                category=category,
                module=Counter(modules).most_common(1)[0][0] if modules else None,
                bytes_per_step=sum(m.nbytes for m in members) // per,
                storages=len(members),
                steps=tuple(sorted({m.step for m in members})),
            )
        )
    # sites known first, then by bytes
    result.sort(key=lambda c: (c.site is None, -c.bytes_per_step))
    return result
