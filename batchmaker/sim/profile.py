"""A step-cost profile: what one model's plans cost on one device, and how its requests
unfold, saved as JSON so the simulator needs neither the model nor torch.

Per cell type, a grid of measured seconds per plan over batch sizes (rows) and steps
per plan, each row running every step (the executor's plan, gather and scatter
included). A plan between grid points costs the bilinear interpolation; beyond the
largest batch, in proportion to the rows; beyond the longest plan, along the last
segment (never falling). A multi-step plan whose rows run different numbers of steps
costs what its rows compute: each row drops out after its last step, as the step loop
and the packed kernels run it (``CostGrid.ragged_cost``), times a factor measured for
such plans, since the kernel that runs them is not always the one that runs rows that
all end together.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from batchmaker.sim.jsonfile import read_json
from scheduler import CellTypeSpec, StepPlan
from scheduler.cost import along

Family = Literal["chain", "seq2seq", "tree"]
FAMILIES: tuple[Family, ...] = ("chain", "seq2seq", "tree")

PROFILE_VERSION = 1


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class CostGrid:
    """Seconds per plan on a grid of rows x steps (both ascending, from 1)."""

    rows: tuple[int, ...]
    steps: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]
    """``seconds[i][j]``: a plan of ``rows[i]`` rows and ``steps[j]`` steps."""
    ragged: tuple[tuple[float, ...], ...] | None = None
    """``ragged[i][j]``: a plan of ``rows[i]`` rows whose longest run is ``steps[j]`` and
    whose rows end apart, measured over what ``ragged_cost``'s staircase charges it; 1
    where a plan cannot be ragged (one row, one step). ``None`` (a profile from before
    it was measured): 1 everywhere. The CPU kernel chooser keeps a kernel per bucket
    for ragged runs apart (``cells.recurrent.KernelChooser``), and oneDNN's fused kernel,
    often the fastest when rows end together, cannot drop rows. For the chain benchmark
    model on this project's CPU the factors were 0.87-1.23 (2026-12-05); without them,
    the served engine's ragged plans of 17-64 rows took 1.43 x what the staircase
    charged in one replay, against 1.09 x for plans whose rows ended together."""

    def __post_init__(self) -> None:
        for name, axis in (("rows", self.rows), ("steps", self.steps)):
            if not axis or axis[0] < 1 or any(b <= a for a, b in itertools.pairwise(axis)):
                raise ProfileError(f"{name}: must be ascending integers from 1, got {list(axis)}")
        for name, values in (("seconds", self.seconds), ("ragged", self.ragged)):
            if values is None:
                continue
            if len(values) != len(self.rows) or any(len(r) != len(self.steps) for r in values):
                raise ProfileError(
                    f"{name}: must be {len(self.rows)} rows of {len(self.steps)} values "
                    f"(one per batch size, one per steps per plan)"
                )
            if any(not (s > 0.0) for r in values for s in r):
                raise ProfileError(f"{name}: every value must be a positive number")

    def cost(self, rows: int, steps: int = 1) -> float:
        """Seconds of a plan of ``rows`` rows and ``steps`` steps."""
        scale = 1.0
        if rows > self.rows[-1]:
            scale, rows = rows / self.rows[-1], self.rows[-1]
        i = _segment(self.rows, rows)
        lo = along(self.steps, self.seconds[i], steps)
        if i + 1 == len(self.rows) or rows <= self.rows[i]:
            return scale * lo
        hi = along(self.steps, self.seconds[i + 1], steps)
        w = (rows - self.rows[i]) / (self.rows[i + 1] - self.rows[i])
        return scale * (lo + w * (hi - lo))

    def ragged_cost(self, steps: Sequence[int]) -> float:
        """Seconds of a plan whose row ``i`` runs ``steps[i]`` steps and then drops out.

        The plan as a staircase: every row for the shortest run, then the rows still
        running for the next stretch, and so on, each stretch costed as the grid's
        increase from extending a plan of that many rows over it. So a plan whose rows
        all run ``k`` steps costs ``cost(rows, k)``; with a fixed cost per plan and a cost
        per row-step the sum is exactly the plan's, and the fixed cost is paid once.
        Costing it as every row running every step (as this did) overcharged the plans a
        saturated chain runs, whose rows compute 60-90% of rows x steps: the simulator
        then predicted 0.83 x the engine's capacity.
        """
        counts = collections.Counter(int(n) for n in steps)
        rows = alive = sum(counts.values())
        total, before = 0.0, 0
        for n in sorted(counts):
            # A measured grid can dip between neighbouring points (noise on a plan of a
            # few microseconds); running further never costs less.
            total += max(0.0, self.cost(alive, n) - (self.cost(alive, before) if before else 0.0))
            alive -= counts[n]
            before = n
        if len(counts) > 1 and self.ragged is not None:
            total *= self.ragged_factor(rows, before)
        return total

    def ragged_factor(self, rows: int, steps: int) -> float:
        """``ragged`` at ``rows`` x ``steps``: bilinear between grid points, the edge's
        value beyond them (a ratio, not a cost: it does not grow with the rows)."""
        if self.ragged is None:
            return 1.0
        i, w = _between(self.rows, rows)
        j, v = _between(self.steps, steps)
        g = self.ragged

        def at(r: int) -> float:
            return g[r][j] if v == 0.0 else g[r][j] + v * (g[r][j + 1] - g[r][j])

        return at(i) if w == 0.0 else at(i) + w * (at(i + 1) - at(i))

    def scaled(self, factor: float) -> CostGrid:
        """Every cost ``factor`` times; the ragged factors, ratios, as they are."""
        return replace(self, seconds=tuple(tuple(x * factor for x in r) for r in self.seconds))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rows": list(self.rows),
            "steps": list(self.steps),
            "seconds": self.seconds,
        }
        if self.ragged is not None:
            out["ragged"] = self.ragged
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CostGrid:
        try:
            ragged = d.get("ragged")
            return cls(
                tuple(int(r) for r in d["rows"]),
                tuple(int(s) for s in d["steps"]),
                tuple(tuple(float(x) for x in r) for r in d["seconds"]),
                None if ragged is None else tuple(tuple(float(x) for x in r) for r in ragged),
            )
        except KeyError as exc:
            raise ProfileError(f"missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"rows, steps and seconds must be lists of numbers: {exc}") from None


def _segment(axis: Sequence[int], x: int) -> int:
    """Index ``i`` with ``axis[i] <= x < axis[i + 1]`` (clamped to the axis)."""
    return max(0, min(len(axis) - 1, bisect.bisect_right(axis, x) - 1))


def _between(axis: Sequence[int], x: int) -> tuple[int, float]:
    """``(i, w)``: ``x`` lies ``w`` of the way from ``axis[i]`` to ``axis[i + 1]``; ``w`` is 0
    at or beyond either end."""
    i = _segment(axis, x)
    if x <= axis[0] or i + 1 == len(axis):
        return i, 0.0
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


@dataclass(frozen=True)
class Unfold:
    """How a request of the model becomes a graph: the names its graph uses."""

    family: Family
    cell: str
    """The chain's or tree's cell type; seq2seq: the encoder's."""
    pool: str
    decoder: str = ""
    """seq2seq only."""
    bos: int = 0
    eos: int = 1
    arity: int = 2
    """trees only."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ProfileError(f"unfold.family: must be one of {FAMILIES}, got {self.family!r}")
        if self.family == "seq2seq" and not self.decoder:
            raise ProfileError("unfold.decoder: a seq2seq model needs its decoder's cell type")


def _points(raw: Any) -> tuple[tuple[float, float], ...]:
    """``host_by_load`` as read from JSON: pairs of numbers, or an error naming it."""
    try:
        return tuple((float(u), float(h)) for u, h in raw)
    except (TypeError, ValueError):
        raise ProfileError(
            f"host_by_load: a list of [cell-steps per second, factor] pairs, got {raw!r}"
        ) from None


def _multipliers(raw: Any) -> tuple[float, ...]:
    """``host_spread`` as read from JSON: a list of numbers, or an error naming it."""
    try:
        return tuple(float(m) for m in raw)
    except (TypeError, ValueError):
        raise ProfileError(f"host_spread: a list of multipliers, got {raw!r}") from None


SPREAD_MEAN_TOLERANCE = 1e-6
"""How far from 1 a ``host_spread``'s mean may be (JSON's rounding is far below it)."""


@dataclass(frozen=True)
class StepProfile:
    """One model on one device: its cell types, pools, how requests unfold, and costs."""

    model: str
    device: str
    cell_types: tuple[CellTypeSpec, ...]
    pools: dict[str, int]
    """Pool -> slots (requests' states the device can hold)."""
    unfold: Unfold
    costs: dict[str, CostGrid]
    """Cell type -> its grid."""
    meta: dict[str, Any] = field(default_factory=dict)
    """How it was measured: date, torch version, threads, command. Carried, not read."""
    host: float = 1.0
    """The served engine's plans over what the grid charges them at saturation
    (``measure_host``): the grid times each plan alone, and a serving engine runs it
    beside its event loop (the streams' outputs, admissions, the clients), which shares
    the host and, in Python, the GIL. Where no load is known (``cost`` without one, the
    planner's floor on a request's work), every plan costs the grid's cost times this.
    1 for a profile from before it was measured."""
    host_by_load: tuple[tuple[float, float], ...] = ()
    """The same ratio at each load it was measured at, as (cell-steps the device served
    per second, factor), ascending by the first: the event loop's work, and so its toll
    on the device's plans, grows with the outputs it hands to streams, one per row per
    step. Between the points a plan costs the linear interpolation at the cell-steps per
    second of the second before it; outside them, the nearest point's. Empty: ``host`` at
    every load."""
    host_spread: tuple[float, ...] = ()
    """How the served plans' times spread around their charge, one by one: equally
    likely multipliers with mean 1 (each plan's served time over the grid's cost, at the
    light load ``measure_host`` serves, as quantiles over their mean). A request's
    latency is the sum of its own plans, and a plan served beside the event loop (which
    shares the host and the GIL) takes twice its mean or more one time in a hundred
    (trees' 99th multiplier 2.1-2.5 on a 2-core CPU); one factor per load charges every
    plan the mean, and the predicted p99 came out 0.55-0.96 x the measured for trees at
    a quarter of capacity.
    The simulator multiplies each plan's cost by one of these drawn at random (seeded:
    ``simulate(seed=...)``). Empty: every plan costs its mean."""

    def __post_init__(self) -> None:
        if not self.host > 0.0:
            raise ProfileError(f"host: must be a positive number, got {self.host}")
        spread = self.host_spread
        if spread and (
            not all(m > 0.0 and math.isfinite(m) for m in spread)
            or abs(math.fsum(spread) / len(spread) - 1.0) > SPREAD_MEAN_TOLERANCE
        ):
            raise ProfileError(
                "host_spread: positive multipliers whose mean is 1, got "
                f"{len(spread)} with mean {math.fsum(spread) / len(spread):.4g}"
            )
        rates = [u for u, _ in self.host_by_load]
        if any(not u >= 0.0 or not h > 0.0 for u, h in self.host_by_load):
            raise ProfileError(
                "host_by_load: each point is [cell-steps per second >= 0, factor > 0], got "
                f"{[list(p) for p in self.host_by_load]}"
            )
        if rates != sorted(set(rates)):
            raise ProfileError(f"host_by_load: cell-steps per second must ascend, got {rates}")
        names = {spec.name for spec in self.cell_types}
        for spec in self.cell_types:
            if spec.name not in self.costs:
                raise ProfileError(f"costs: no grid for cell type {spec.name!r}")
            if spec.pool not in self.pools:
                raise ProfileError(f"cell_types: {spec.name!r} uses unknown pool {spec.pool!r}")
        wanted = [self.unfold.cell] + ([self.unfold.decoder] if self.unfold.decoder else [])
        for name in wanted:
            if name not in names:
                raise ProfileError(f"unfold: unknown cell type {name!r}")
        if self.unfold.pool not in self.pools:
            raise ProfileError(f"unfold.pool: unknown pool {self.unfold.pool!r}")

    def cost(self, plan: StepPlan, steps_per_s: float | None = None) -> float:
        """Seconds ``plan`` takes on this device (rows that end early drop out, unless the
        plan is padded to its longest row, as the request-level baselines are), with the
        device serving ``steps_per_s`` cell-steps a second around it (``host_at``)."""
        grid = self.costs[plan.cell_type]
        host = self.host_at(steps_per_s)
        if plan.steps is None or plan.pad_to_longest:
            return host * grid.cost(plan.batch_size, plan.num_steps)
        return host * grid.ragged_cost(plan.steps.tolist())

    def host_at(self, steps_per_s: float | None) -> float:
        """The host factor with the device serving ``steps_per_s`` cell-steps a second
        (``host_by_load``); ``host``, the saturated one, where that is not known."""
        points = self.host_by_load
        if steps_per_s is None or not points:
            return self.host
        i = bisect.bisect_left(points, (steps_per_s,))
        if i == 0:
            return points[0][1]
        if i == len(points):
            return points[-1][1]
        (u0, h0), (u1, h1) = points[i - 1], points[i]
        return h0 + (h1 - h0) * (steps_per_s - u0) / (u1 - u0)

    def with_host(
        self, points: Sequence[tuple[float, float]], spread: Sequence[float] = ()
    ) -> StepProfile:
        """This profile with the host factors ``measure_host`` found, as (cell-steps per
        second, factor) in the order of the loads measured: ``host`` is the last one's,
        the overload's (saturation); and with the plans' ``spread`` (``host_spread``)."""
        by_load = tuple(sorted((float(u), float(h)) for u, h in points))
        return replace(
            self,
            host=float(points[-1][1]) if points else 1.0,
            host_by_load=by_load,
            host_spread=tuple(float(m) for m in spread),
        )

    def scaled(self, factor: float) -> StepProfile:
        """The same profile on a device ``factor`` times slower (> 1) or faster: every
        plan's seconds multiplied. For a device whose speed has drifted since it was
        profiled as a whole (a shared machine, a clock change), not for another device,
        whose costs change shape as well as scale: profile that one."""
        if not factor > 0.0:
            raise ValueError(f"factor must be a positive number, got {factor}")
        costs = {name: g.scaled(factor) for name, g in self.costs.items()}
        meta = {**self.meta, "scaled": factor * float(self.meta.get("scaled", 1.0))}
        return replace(self, costs=costs, meta=meta)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "model": self.model,
            "device": self.device,
            "cell_types": [
                {
                    "name": s.name,
                    "max_batch": s.max_batch,
                    "pool": s.pool,
                    "arity": s.arity,
                    "rank": s.rank,
                    "runs": s.runs,
                }
                for s in self.cell_types
            ],
            "pools": dict(self.pools),
            "unfold": {
                "family": self.unfold.family,
                "cell": self.unfold.cell,
                "pool": self.unfold.pool,
                "decoder": self.unfold.decoder,
                "bos": self.unfold.bos,
                "eos": self.unfold.eos,
                "arity": self.unfold.arity,
            },
            "costs": {name: grid.to_json() for name, grid in self.costs.items()},
            "host": self.host,
            "host_by_load": [list(p) for p in self.host_by_load],
            "host_spread": list(self.host_spread),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StepProfile:
        if not isinstance(d, Mapping):
            raise ProfileError("a profile is a JSON object")
        if d.get("version") != PROFILE_VERSION:
            raise ProfileError(f"version: expected {PROFILE_VERSION}, got {d.get('version')!r}")
        try:
            specs = tuple(
                CellTypeSpec(
                    str(c["name"]),
                    int(c["max_batch"]),
                    str(c["pool"]),
                    arity=int(c.get("arity", 1)),
                    rank=int(c.get("rank", 0)),
                    runs=bool(c.get("runs", False)),
                )
                for c in d["cell_types"]
            )
            u = d["unfold"]
            unfold = Unfold(
                u["family"],
                str(u["cell"]),
                str(u["pool"]),
                decoder=str(u.get("decoder", "")),
                bos=int(u.get("bos", 0)),
                eos=int(u.get("eos", 1)),
                arity=int(u.get("arity", 2)),
            )
            costs = {}
            for name, grid in d["costs"].items():
                try:
                    costs[name] = CostGrid.from_json(grid)
                except ProfileError as exc:
                    raise ProfileError(f"costs.{name}: {exc}") from None
            return cls(
                model=str(d["model"]),
                device=str(d["device"]),
                cell_types=specs,
                pools={str(k): int(v) for k, v in d["pools"].items()},
                unfold=unfold,
                costs=costs,
                meta=dict(d.get("meta", {})),
                host=float(d.get("host", 1.0)),
                host_by_load=_points(d.get("host_by_load", ())),
                host_spread=_multipliers(d.get("host_spread", ())),
            )
        except KeyError as exc:
            raise ProfileError(f"missing field {exc.args[0]!r}") from None
        except ProfileError:
            raise
        except (TypeError, AttributeError, ValueError) as exc:
            raise ProfileError(f"malformed profile: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StepProfile:
        return read_json(path, cls.from_json, ProfileError)
