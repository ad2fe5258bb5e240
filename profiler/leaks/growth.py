"""Robust growth statistics over step-end byte counts: the leak detector's first stage.

The test runs on the bytes of one category (or the total) at the end of each step, over a sliding
window of the last ``window`` steps after warm-up, and says whether they are growing:

- **Warm-up is excluded.** The first ``warmup`` steps (default 2) never enter a window: step 0
  creates the optimizer state and lazily initialised modules, and allocator caching and lazy
  buffers settle during the first steps.
- **Robust slope.** The Theil–Sen estimator (median of all pairwise slopes) gives bytes per step;
  one outlier step (a spike, a one-off buffer) cannot move it.
- **Consistent sign.** The Mann–Kendall score (``tau``: pairs going up minus pairs going down,
  over all pairs) must reach ``min_tau``; noise that goes up and down scores near 0.
- **Noise floor.** The slope must reach ``min_bytes_per_step`` (default 64 KiB per step).
- **Still growing now.** The slope over the last ``recent`` points must also reach the floor, so
  memory that grew and then plateaued (a capped cache, allocator warm-up) clears the test as soon
  as it is flat for ``recent`` steps.

Cost: O(window²) arithmetic on plain ints per series and step (28 pairs for a window of 8);
nothing here imports torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from profiler.errors import UsageError
from profiler.units import KiB

__all__ = [
    "GrowthEstimate",
    "GrowthSeries",
    "GrowthTest",
    "mann_kendall_tau",
    "theil_sen_slope",
]


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The median of the slopes between every pair of points (0.0 for fewer than two points)."""
    slopes: list[float] = []
    n = len(xs)
    for i in range(n):
        xi = xs[i]
        yi = ys[i]
        for j in range(i + 1, n):
            dx = xs[j] - xi
            if dx != 0:
                slopes.append((ys[j] - yi) / dx)
    if not slopes:
        return 0.0
    slopes.sort()
    mid = len(slopes) // 2
    if len(slopes) % 2:
        return slopes[mid]
    return (slopes[mid - 1] + slopes[mid]) / 2


def mann_kendall_tau(ys: Sequence[float]) -> float:
    """Pairs going up minus pairs going down, over all pairs: 1.0 for strictly increasing."""
    n = len(ys)
    if n < 2:
        return 0.0
    score = 0
    for i in range(n):
        yi = ys[i]
        for j in range(i + 1, n):
            if ys[j] > yi:
                score += 1
            elif ys[j] < yi:
                score -= 1
    return score / (n * (n - 1) // 2)


@dataclass(frozen=True, slots=True)
class GrowthEstimate:
    """The verdict of the growth test on one series over one window."""

    #: what grows: a category name, or ``"total"``
    series: str
    #: Theil–Sen slope over the window, bytes per step
    bytes_per_step: int
    #: Theil–Sen slope over the last ``recent`` points, bytes per step
    recent_bytes_per_step: int
    #: Mann–Kendall tau over the window, in [-1, 1]
    tau: float
    #: the first and last step of the window
    first_step: int
    last_step: int
    #: bytes at the last step of the window
    current: int
    #: how many points the window held
    points: int
    #: whether every criterion passed
    growing: bool


class GrowthTest:
    """The thresholds of the growth test; :meth:`estimate` applies them to one window.

    Raises:
        UsageError: thresholds that cannot make a test (a window under 3 points, ...).
    """

    __slots__ = ("min_bytes_per_step", "min_points", "min_tau", "recent", "warmup", "window")

    def __init__(
        self,
        *,
        window: int = 6,
        warmup: int = 2,
        min_bytes_per_step: int = 64 * KiB,
        min_tau: float = 0.6,
        recent: int = 3,
        min_points: int = 3,
    ) -> None:
        if window < 3 or recent < 2 or min_points < 2 or recent > window:
            raise UsageError(
                f"bad growth test: window={window}, recent={recent}, min_points={min_points}",
                hint="use window >= 3, 2 <= recent <= window and min_points >= 2",
            )
        self.window = window
        self.warmup = warmup
        self.min_bytes_per_step = min_bytes_per_step
        self.min_tau = min_tau
        self.recent = recent
        self.min_points = min_points

    def estimate(
        self, series: str, steps: Sequence[int], values: Sequence[int]
    ) -> GrowthEstimate | None:
        """Test the last ``window`` points of one series; ``None`` below ``min_points`` points."""
        n = len(values)
        if n < self.min_points:
            return None
        xs = steps[-self.window :]
        ys = values[-self.window :]
        slope = theil_sen_slope(xs, ys)
        k = min(self.recent, len(ys))
        recent = theil_sen_slope(xs[-k:], ys[-k:])
        tau = mann_kendall_tau(ys)
        floor = self.min_bytes_per_step
        growing = slope >= floor and recent >= floor and tau >= self.min_tau
        return GrowthEstimate(
            series=series,
            bytes_per_step=round(slope),
            recent_bytes_per_step=round(recent),
            tau=tau,
            first_step=xs[0],
            last_step=xs[-1],
            current=ys[-1],
            points=len(ys),
            growing=growing,
        )


class GrowthSeries:
    """Step-end values of several named series after warm-up, in windows of fixed length."""

    __slots__ = ("_columns", "_last", "_same", "_seen", "_steps", "_values", "names", "test")

    def __init__(self, names: Sequence[str], test: GrowthTest) -> None:
        self.names = tuple(names)
        self.test = test
        self._seen = 0
        self._steps: deque[int] = deque(maxlen=test.window)
        self._values: dict[str, deque[int]] = {
            name: deque(maxlen=test.window) for name in self.names
        }
        #: the same deques in ``names`` order (one step's values are appended by position)
        self._columns = tuple(self._values.values())
        #: the latest values added, and how many adds in a row repeated the one before
        self._last: tuple[int, ...] | None = None
        self._same = 0

    @property
    def points(self) -> int:
        """How many post-warm-up points the window holds now."""
        return len(self._steps)

    def add(self, step: int, values: Sequence[int]) -> bool:
        """Add one step's values (in ``names`` order); ``False`` while the step is warm-up."""
        self._seen += 1
        if self._seen <= self.test.warmup:
            return False
        self._steps.append(step)
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)
        current = tuple(values)  # (a tuple is not copied; a list the caller reuses is)
        if current == self._last:
            self._same += 1
        else:
            self._same = 0
            self._last = current
        return True

    def reset(self) -> None:
        """Forget the window (the warm-up is not repeated)."""
        self._steps.clear()
        for values in self._values.values():
            values.clear()
        self._last = None
        self._same = 0

    def estimate(self, name: str) -> GrowthEstimate | None:
        """The growth test on one series; ``None`` until enough points."""
        values = self._values[name]
        if len(values) < self.test.min_points:
            return None
        if values[0] == values[-1] and min(values) == max(values):
            # the common case: a flat series costs one comparison pass
            return GrowthEstimate(
                series=name,
                bytes_per_step=0,
                recent_bytes_per_step=0,
                tau=0.0,
                first_step=self._steps[0],
                last_step=self._steps[-1],
                current=values[-1],
                points=len(values),
                growing=False,
            )
        return self.test.estimate(name, list(self._steps), list(values))

    def growing(self) -> list[GrowthEstimate]:
        """Every series that passes the growth test now, fastest first.

        The recent slope (three pairs by default) is checked first: a series that is not rising
        now is dropped without the full window's O(window²) test.
        """
        test = self.test
        if len(self._steps) < test.min_points:
            return []
        # With three points or fewer, the median of the pairwise slopes reaches the floor only if
        # the slope from the first point to the last does (it lies between the other two): one
        # subtraction rules out a series that is not rising fast enough now.
        shortcut = test.recent <= 3
        k = min(test.recent, len(self._steps))
        if shortcut and self._same + 1 >= k:
            # the last k points repeat one set of values (the steady state): the subtraction
            # below rules out every series
            return []
        steps = list(self._steps)[-test.recent :]
        floor = test.min_bytes_per_step
        rise_needed = floor * (steps[-1] - steps[-k])
        found = []
        for name in self.names:
            values = self._values[name]
            if shortcut and (values[-1] <= values[-k] or values[-1] - values[-k] < rise_needed):
                continue
            recent = list(values)[-test.recent :]
            if theil_sen_slope(steps, recent) < floor:
                continue
            est = self.estimate(name)
            if est is not None and est.growing:
                found.append(est)
        found.sort(key=lambda e: -e.bytes_per_step)
        return found
