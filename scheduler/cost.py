"""What a plan costs: seconds per plan of a cell type, by batch size and steps per plan.

The cellular scheduler uses it to choose how many steps a plan runs when nodes are
waiting for seats (``scheduler/cellular.py``): a longer plan costs less per step (the
host's work and a fused kernel's fixed cost are paid once, and the kernel may be a
faster one), but rows whose run ends early leave their seat empty until the plan
ends. Which wins depends on the device, the model and the batch, so it is measured,
not configured: the device worker reports every plan's time (``Scheduler.observe``),
and the estimate for a plan not yet seen interpolates between the plan lengths that
were, per power-of-two batch-size bucket.

Pure Python and cheap: ``observe`` is a few dict operations per plan, ``estimate`` a
short scan of at most one point per power-of-two plan length.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

_SMOOTHING = 0.2
"""Weight of each new observation in a point's running mean: plans' times are noisy
(other threads, a shared machine), and a device's speed drifts slowly."""


def pow2_bucket(n: int) -> int:
    """The smallest power of two >= ``n`` (``n >= 1``)."""
    return 1 << (n - 1).bit_length()


@dataclass(slots=True)
class _Point:
    """Running means of plans whose length fell in one power-of-two bucket."""

    steps: float
    seconds: float
    rows: float
    count: int = 1


class PlanCosts:
    """Learned seconds per plan, per cell type, batch-size bucket and plan-length bucket."""

    def __init__(self) -> None:
        self._points: dict[tuple[str, int], dict[int, _Point]] = {}
        self._sorted: dict[tuple[str, int], list[_Point]] = {}

    def observe(self, cell_type: str, rows: int, steps: int, seconds: float) -> None:
        """A plan of ``rows`` rows and ``steps`` steps took ``seconds`` to execute."""
        if rows < 1 or steps < 1 or not seconds > 0.0:
            return
        key = (cell_type, pow2_bucket(rows))
        points = self._points.setdefault(key, {})
        bucket = pow2_bucket(steps)
        point = points.get(bucket)
        if point is None:
            points[bucket] = _Point(float(steps), seconds, float(rows))
            self._sorted[key] = [points[b] for b in sorted(points)]
            return
        point.steps += _SMOOTHING * (steps - point.steps)
        point.seconds += _SMOOTHING * (seconds - point.seconds)
        point.rows += _SMOOTHING * (rows - point.rows)
        point.count += 1

    def estimate(
        self, cell_type: str, rows: int, steps: int, *, guess: bool = True
    ) -> float | None:
        """Seconds a plan of ``rows`` rows and ``steps`` steps should take; ``None`` when no
        plan of this cell type and batch-size bucket has been seen, or (``guess=False``)
        when ``steps`` (in its power-of-two bucket) is outside the plan lengths seen.

        Between two seen plan lengths, linear. Below the shortest, in proportion to it
        (no fixed cost assumed, so short plans are never made to look cheap). Above the
        longest, along the line through the two longest, never cheaper than the longest
        and never falling: a guess, which the plans it leads to then measure. A caller
        that compares lengths by their whole cost (the SLO controller) asks without the
        guesses: below the shortest length seen they drop the plan's fixed cost, and past
        the longest they favour the lengths already known.
        """
        points = self._sorted.get((cell_type, pow2_bucket(rows)))
        if not points:
            return None
        if not guess and not (
            pow2_bucket(math.ceil(points[0].steps))
            <= pow2_bucket(steps)
            <= pow2_bucket(math.ceil(points[-1].steps))
        ):
            return None
        return along([p.steps for p in points], [p.seconds for p in points], steps)

    def by_rows(self, cell_type: str, rows: int, steps: int) -> float | None:
        """Seconds of a plan of ``rows`` rows and ``steps`` steps, read along the rows too:
        between the batch buckets seen, linear in their mean rows (``along``); ``None``
        when no plan of the cell type was seen. ``estimate`` keeps to one bucket, which is
        what the plan length needs; a caller comparing batch sizes needs this."""
        curve = sorted(
            (sum(p.rows * p.count for p in points) / sum(p.count for p in points), key[1])
            for key, points in self._sorted.items()
            if key[0] == cell_type
        )
        if not curve:
            return None
        xs: list[float] = []
        ys: list[float] = []
        for mean_rows, bucket in curve:
            cost = self.estimate(cell_type, bucket, steps)
            if cost is not None and (not xs or mean_rows > xs[-1]):
                xs.append(mean_rows)
                ys.append(cost)
        return along(xs, ys, rows)

    def table(self) -> dict[str, dict[int, list[tuple[float, float, int]]]]:
        """Every point seen: cell type -> batch bucket -> ``(steps, seconds, count)``, for
        tests, benchmarks and anyone who wants to see what the scheduler believes."""
        out: dict[str, dict[int, list[tuple[float, float, int]]]] = {}
        for (cell_type, rows), points in self._sorted.items():
            out.setdefault(cell_type, {})[rows] = [(p.steps, p.seconds, p.count) for p in points]
        return out

    def forget(self, cell_type: str) -> None:
        """Drop a cell type's points (its model was unloaded)."""
        for key in [k for k in self._points if k[0] == cell_type]:
            del self._points[key]
            del self._sorted[key]


def along(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """``y`` at ``x`` on a cost curve through the points ``(xs[i], ys[i])`` (``xs``
    ascending and positive): linear between them, in proportion to the first below it,
    and above the last along the last segment, never falling (with one point, in
    proportion to it). The learned costs here and a profile's measured grid
    (``batchmaker.sim.profile``) read their curves the same way."""
    if x <= xs[0]:
        return ys[0] * x / xs[0]
    j = bisect.bisect_left(xs, x)  # xs[j - 1] < x <= xs[j]
    if j < len(xs):
        w = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
        return ys[j - 1] + w * (ys[j] - ys[j - 1])
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
    return ys[-1] + slope * (x - xs[-1])
