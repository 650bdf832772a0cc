"""``batchmaker profile``: measure a model's step-cost profile on the real executor.

For every cell type, a grid of plans, rows (powers of two up to its max batch) by steps
per plan (powers of two up to the cap; one step for cells without runs), each timed as
the device worker's whole step (``schedule``, ``TorchExecutor.execute``: gather, cell,
scatter, outputs to host; ``update_from_output``) and kept as the median of
``repeats``. The scheduler's own time counts because the device waits for it.

The plans are the real scheduler's, for synthetic requests shaped to produce them:
``rows`` chains of ``steps`` tokens make one plan of exactly that shape; seq2seq sources
of ``steps`` tokens with an output cap of ``steps`` make one encoder plan and then
decoder steps of ``rows``; one-node trees make one plan of ``rows`` leaves. Warm-up
rounds come first, so the CPU kernel chooser (``cells.recurrent.KernelChooser``) has
settled each bucket before anything is kept.

Then, for cell types that run several steps per plan, the same grid again with rows that
end apart (``ragged_lengths``): measured over what the first grid's staircase charges
such a plan, a factor per point (``CostGrid.ragged``), since a kernel that drops rows is
not always the kernel that runs rows ending together.

Last, ``measure_host``: the engine serving a synthetic Poisson load at a quarter of the
capacity the grid predicts and at an overload, warmed until it settles, its plans' times
over the grid's cost of the same plans at each, the median of a few replays
(``StepProfile.host_by_load``), since the grid times each plan alone and a server runs
it beside its event loop, whose work grows with the load.

The result is a ``batchmaker.sim.profile.StepProfile``: JSON the simulator reads with no
model and no torch.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from batchmaker.bench.openloop import Replay, replay
from batchmaker.bench.trace import Trace
from batchmaker.bench.workloads import Workload, engine_sender
from batchmaker.config import EngineConfig
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from batchmaker.runtime.engine import Engine, scheduler_parts
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.runtime.worker import DeviceWorker
from batchmaker.sim.profile import CostGrid, StepProfile, Unfold
from batchmaker.sim.simulator import SimRequest, graph_of, requests_from_trace, simulate
from cells.recurrent import KERNEL_TRIALS, KernelChooser
from scheduler import (
    CellTypeSpec,
    ManualClock,
    SchedRequest,
    SchedulerConfig,
    StepPlan,
    make_scheduler,
)

WARMUP = 3 * KERNEL_TRIALS
"""Rounds thrown away per grid point: the kernel chooser times each of the three CPU
kernels ``KERNEL_TRIALS`` times on a bucket's first calls."""


def unfold_of(model: Model) -> Unfold:
    """How ``model``'s requests become graphs, in the names its engine serves."""
    q = model.qualify
    if isinstance(model, Seq2SeqModel):
        return Unfold(
            "seq2seq",
            q("encoder"),
            q(model.cell_pool("encoder")),
            decoder=q("decoder"),
            bos=model.bos,
            eos=model.eos,
        )
    ((name, cell),) = model.cells.items()
    if isinstance(model, TreeModel):
        return Unfold("tree", q(name), q(model.cell_pool(name)), arity=cell.arity)
    if isinstance(model, SequenceModel):
        return Unfold("chain", q(name), q(model.cell_pool(name)))
    raise TypeError(f"no step-cost profile for {type(model).__name__}")


def _axis(top: int) -> tuple[int, ...]:
    out, n = [], 1
    while n < top:
        out.append(n)
        n *= 2
    out.append(top)
    return tuple(out)


def ragged_lengths(rows: int, steps: int) -> list[int]:
    """A ragged probe's runs: the longest ``steps``, the others spread down to about half
    of it, as a saturated batch's rows end apart (each row a different step where it can)."""
    return [steps - math.ceil(i * steps / (2 * rows)) for i in range(rows)]


def _requests(unfold: Unfold, rows: int, steps: int, *, ragged: bool = False) -> list[SimRequest]:
    """``rows`` requests whose first plan of each cell type is ``rows`` x ``steps``; with
    ``ragged``, whose runs in it are ``ragged_lengths`` (the decoder's steps stay whole)."""
    if unfold.family == "tree":
        leaf = np.full((1, 2), -1, dtype=np.int64)
        return [SimRequest(0.0, np.ones(1, dtype=np.int64), children=leaf)] * rows
    lengths = ragged_lengths(rows, steps) if ragged else [steps] * rows
    return [SimRequest(0.0, np.ones(n, dtype=np.int64), output_length=steps) for n in lengths]


def measure_profile(
    model: Model,
    config: EngineConfig,
    *,
    device: str = "cpu",
    max_steps: int | None = None,
    repeats: int = 5,
    top_k: int = 0,
    log: Callable[[str], None] | None = None,
    executor: TorchExecutor | None = None,
) -> StepProfile:
    """Time ``model``'s plans on ``device`` over the grid; see the module docstring.

    ``top_k``: what the requests ask for, which changes what leaves the device each step:
    0, every step's full output vector (a 10k vocabulary's scores are 40 KB a row); else
    only the top ``top_k`` ids and scores. Profile the way the traffic will call.
    ``executor``: one already serving ``model`` to measure on, so that the kernels its
    cells chose during the warm-up rounds can be read afterwards (``bench-sim`` hands
    them to the engine it compares with); by default a fresh one on ``device``."""
    specs, capacities = scheduler_parts([model], config)
    cap = max_steps or config.max_steps_per_plan
    unfold = unfold_of(model)
    if executor is None:
        executor = TorchExecutor(device)
        executor.load_cells(CellSet.of([model], config.num_slots))()
    # Each cell type's grid: rows up to its max batch; steps up to the cap if it runs runs.
    axes = {
        s.name: (_axis(min(s.max_batch, config.num_slots)), _axis(cap) if s.runs else (1,))
        for s in specs
    }

    def grid(
        ragged: bool,
        value: Callable[[str, float, tuple[int, ...] | None], float],
        show: Callable[[float], str],
    ) -> dict[tuple[str, int, int], list[float]]:
        """``value(cell type, seconds, runs)`` of each timed plan, by (cell type, rows,
        steps), over the axes (from two rows and two steps for ``ragged`` plans)."""
        first = 1 if ragged else 0
        out: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        for rows in _axis(max(max(r) for r, _ in axes.values()))[first:]:
            for steps in _axis(max(max(k) for _, k in axes.values()))[first:]:
                if not any(rows in rs and steps in ks[first:] for rs, ks in axes.values()):
                    continue
                for round_ in range(WARMUP + repeats):
                    for name, k, dt, runs in _run(
                        executor, specs, capacities, unfold, rows, steps, cap, top_k, ragged=ragged
                    ):
                        rs, ks = axes[name]
                        apart = not ragged or (runs is not None and min(runs) < k)
                        if round_ >= WARMUP and rows in rs and k in ks and apart:
                            out[(name, rows, k)].append(value(name, dt, runs))
                if log is not None:
                    got = [
                        f"{name.rsplit('/', 1)[-1]} {show(statistics.median(v))}"
                        for (name, r, k), v in sorted(out.items())
                        if r == rows and k == steps
                    ]
                    log(
                        f"rows {rows:4d} steps {steps:3d}{', ragged' if ragged else ''}: "
                        + ", ".join(got)
                    )
        return out

    seconds = grid(False, lambda _name, dt, _runs: dt, lambda v: f"{1e3 * v:.2f} ms")
    costs = {}
    for spec in specs:
        rs, ks = axes[spec.name]
        medians = tuple(
            tuple(statistics.median(seconds[(spec.name, r, k)]) for k in ks) for r in rs
        )
        costs[spec.name] = CostGrid(rs, ks, medians)
    # Plans whose rows end apart, over what the grid's staircase charges them (the
    # ``CostGrid.ragged`` factors): for cell types that run runs, at two rows and steps up.
    ragged = grid(
        True,
        lambda name, dt, runs: dt / costs[name].ragged_cost(runs or ()),
        lambda v: f"x {v:.2f}",
    )
    for name, g in list(costs.items()):
        if any(n == name for n, _, _ in ragged):
            costs[name] = replace(
                g,
                ragged=tuple(
                    tuple(
                        statistics.median(ragged[(name, r, k)]) if (name, r, k) in ragged else 1.0
                        for k in g.steps
                    )
                    for r in g.rows
                ),
            )
    return StepProfile(
        model=model.key,
        device=executor.device,
        cell_types=tuple(specs),
        pools=capacities,
        unfold=unfold,
        costs=costs,
        meta={
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "repeats": repeats,
            "top_k": top_k,
            "statistic": "median",
        },
    )


PROBE_SECONDS = 0.25
"""Least time each of ``SpeedProbe``'s points is timed for, per factor."""


class SpeedProbe:
    """Two of a profile's grid points timed again, now: how much slower (> 1) or faster
    the device runs than when the profile was measured.

    This project's machines are shared, and their speed drifts by tens of percent, even
    2 x, within minutes (a chain profile took 65 s and, ten minutes later, 120 s). A
    comparison of the simulator with the engine must not charge that drift to the
    simulator, so ``bench-sim`` scales the profile by this factor around each replay.
    The points are, for every cell type, its full batch at a few steps (what saturation
    runs) and one row at one step (what a request alone runs), timed exactly as the
    profile timed them (``_run``), after the same warm-up. Every cell type, because the
    machine's drift is not the same for each: seq2seq's probe once timed the encoder
    alone, which is a fifth of its served time, and read the machine 1.07-1.21 x slower
    where the decoder's plans said otherwise."""

    def __init__(
        self,
        model: Model,
        config: EngineConfig,
        profile: StepProfile,
        executor: TorchExecutor,
        *,
        top_k: int = 0,
        repeats: int = 5,
    ) -> None:
        """``executor``: serving ``model``, best the one the profile was measured on."""
        self._specs, self._capacities = scheduler_parts([model], config)
        self._cap = config.max_steps_per_plan
        self._unfold = profile.unfold
        self._top_k = top_k
        self._repeats = repeats
        self._executor = executor
        self._points: list[tuple[str, int, int]] = []
        for name, grid in profile.costs.items():
            steps = max(k for k in grid.steps if k <= 4)
            self._points += [(name, grid.rows[-1], steps), (name, 1, 1)]
        self._want = [profile.costs[name].cost(rows, k) for name, rows, k in self._points]
        for _ in range(WARMUP):
            self._times()

    def _times(self) -> list[list[float]]:
        got: list[list[float]] = [[] for _ in self._points]
        for i, (name, rows, steps) in enumerate(self._points):
            for cell, k, dt, _ in _run(
                self._executor,
                self._specs,
                self._capacities,
                self._unfold,
                rows,
                steps,
                self._cap,
                self._top_k,
            ):
                if cell == name and k == steps:
                    got[i].append(dt)
        return got

    def factor(self) -> float:
        """Now against the profile: the mean over the points of their time ratios, each
        point the median of at least ``repeats`` plans and ``PROBE_SECONDS`` of them (a
        tree cell's plan takes well under a millisecond, too short to time a few of)."""
        samples: list[list[float]] = [[] for _ in self._points]
        rounds = 0
        while rounds < self._repeats or min(map(sum, samples)) < PROBE_SECONDS:
            for (_, rows, steps), acc, got in zip(
                self._points, samples, self._times(), strict=True
            ):
                if not got:
                    raise RuntimeError(f"no plan of {rows} rows x {steps} steps to time")
                acc.extend(got)
            rounds += 1
        ratios = [
            statistics.median(acc) / want for acc, want in zip(samples, self._want, strict=True)
        ]
        return statistics.fmean(ratios)


def _run(
    executor: TorchExecutor,
    specs: list[CellTypeSpec],
    capacities: dict[str, int],
    unfold: Unfold,
    rows: int,
    steps: int,
    cap: int,
    top_k: int,
    *,
    ragged: bool = False,
) -> list[tuple[str, int, float, tuple[int, ...] | None]]:
    """Every plan of one synthetic batch (``_requests``), as (cell type, steps, seconds,
    each row's steps or ``None`` for one each), timed alone."""
    sched = make_scheduler(
        SchedulerConfig(max_steps_per_plan=cap, max_num_live_requests=rows),
        specs,
        capacities,
        ManualClock(),
    )
    for i, r in enumerate(_requests(unfold, rows, steps, ragged=ragged)):
        graph = graph_of(unfold, r)
        sched.add_request(SchedRequest(str(i), graph, top_k=top_k, wants_outputs=not top_k))
    out = []
    sync = torch.cuda.synchronize if executor.device.startswith("cuda") else None
    while True:
        # The whole step as the device worker runs it: schedule, execute, update.
        t0 = time.perf_counter()
        plan = sched.schedule()
        if plan is None:
            break
        result = executor.execute(plan)
        if sync is not None:
            sync()
        sched.update_from_output(plan, result)
        dt = time.perf_counter() - t0
        if plan.num_real == rows:
            runs = None if plan.steps is None else tuple(int(n) for n in plan.steps.tolist())
            out.append((plan.cell_type, plan.num_steps, dt, runs))
    return out


HOST_REQUESTS = 400
"""Requests of the synthetic trace ``measure_host`` replays at each load, every replay."""
HOST_LOADS = (0.25, 3.0)
"""Its loads, as shares of the capacity the grid predicts for the same requests: a light
one, and an overload (as ``bench-sim`` finds capacity), where the device runs saturated.

Two, because the host's toll grows with load. With one factor measured at half load,
the served plans took 0.92-0.97 x its charge at a quarter of capacity, about 1.0 at half,
and 1.05-1.18 x at capacity, and the capacity prediction was as far off; with one measured
at saturation, the plans of a quarter load took 0.82 x its charge, and the predicted p99
was 1.23 x the measured (``bench-sim``, seq2seq and trees, 2026-12-05)."""
HOST_REPLAYS = 3
"""Timed replays per load, after the warm-up (``settle``); the factor is their median.
One replay to the next on one engine, the factor moved by up to 7% (seq2seq, six
overload replays each on two engines, 2026-12-05), which one timed replay carried whole.
What the median does not remove is the host's drift from one profile to the next, an
hour apart on a shared machine (seq2seq's overload factor 1.01, 0.97 and 1.13)."""
WARMUP_REPLAYS = 6
"""Most uncounted replays of a load before the timed ones (``settle``)."""
SETTLED = 0.03
"""A warm-up replay less than this much faster than the one before ends the warm-up."""


async def settle(
    replay_once: Callable[[], Awaitable[float]],
    trial_plans: Callable[[], int],
    *,
    log: Callable[[str], object] | None = None,
) -> None:
    """Replay a load uncounted (``replay_once``: its throughput) until a replay ran no
    kernel on trial and was less than ``SETTLED`` faster than the one before, at most
    ``WARMUP_REPLAYS``: an engine serves a load faster over its first replays, as the
    kernel chooser tries each new plan shape and the scheduler learns the longer plans'
    costs (``simcheck``'s docstring has the figures)."""
    previous = 0.0
    for _ in range(WARMUP_REPLAYS):
        trials = trial_plans()
        got = await replay_once()
        trials = trial_plans() - trials
        if log is not None:
            log(f"warm-up: {got:.1f} req/s, {trials} trials")
        if not trials and got < previous * (1 + SETTLED):
            return
        previous = got


SPREAD_POINTS = 100
"""Multipliers in a profile's ``host_spread``: quantiles at the middles of this many
equal shares of the light load's plans."""


@dataclass(frozen=True)
class HostFactors:
    """What ``measure_host`` found: ``StepProfile.with_host``'s arguments."""

    points: list[tuple[float, float]]
    """Per load: (cell-steps served per second, factor)."""
    spread: tuple[float, ...]
    """The first load's plans, one by one, around their mean (``host_spread``)."""


def plan_spread(times: Sequence[tuple[StepPlan, float]], profile: StepProfile) -> tuple[float, ...]:
    """``times``' plans, each its served time over ``profile``'s charge, as ``SPREAD_POINTS``
    equally likely multipliers with mean 1: the quantiles at the middle of each share,
    over their mean. Over the mean, so that the drift and the host factor, which scale
    every plan alike, drop out."""
    ratios = np.array([t / profile.cost(plan) for plan, t in times])
    # Observed ratios, not interpolations between them: a stall is a stall.
    q = np.quantile(ratios, (np.arange(SPREAD_POINTS) + 0.5) / SPREAD_POINTS, method="inverted_cdf")
    return tuple(float(m) for m in q / q.mean())


def spread_quantiles(spread: Sequence[float]) -> list[tuple[str, float]]:
    """A spread's median, 90th and 99th multipliers, by name (none without one)."""
    if not spread:
        return []
    n = len(spread)
    return [(f"p{q}", spread[min(n - 1, n * q // 100)]) for q in (50, 90, 99)]


def spread_text(spread: Sequence[float]) -> str:
    """``spread_quantiles`` for a log line."""
    got = spread_quantiles(spread)
    return " ".join(f"{k} {v:.2f}" for k, v in got) if got else "none"


async def measure_host(
    workload: Workload,
    config: EngineConfig,
    profile: StepProfile,
    *,
    executor: TorchExecutor | None = None,
    speed: Callable[[], float] | None = None,
    requests: int = HOST_REQUESTS,
    loads: Sequence[float] = HOST_LOADS,
    replays: int | None = None,
) -> HostFactors:
    """The served engine's plans over what ``profile``'s grid charges them, at each of
    ``loads`` (the ``StepProfile.host_by_load`` points: cell-steps served per second, factor):
    an in-process engine replays a synthetic Poisson trace of ``requests`` requests at
    each load times the simulator's capacity for it, uncounted until settled
    (``settle``), then ``replays`` times with each plan's step timed
    (``DeviceWorker.plan_times``, plans run on a chosen kernel only; ``None``:
    ``HOST_REPLAYS``); each figure is the median of those. The spread is the first
    load's, from the plans of all its timed replays (``plan_spread``): at a light load a
    request's latency is its own plans', and their spread is its tail. ``executor``:
    the one the profile was measured on, whose kernel choices the engine starts with,
    as ``bench-sim`` does.

    ``speed``: how much slower the device runs now than when the grid was timed
    (``SpeedProbe.factor``), asked before and after each timed replay; the ratio is
    divided by their mean, so that the factor is the host's and not the machine's drift
    since the grid. Without it a shared machine's drift went into the factor: a seq2seq
    profile read 0.93, and the simulator, which scales by the drift again when it
    compares, predicted 1.33 x the engine's capacity."""
    replays = HOST_REPLAYS if replays is None else replays
    if requests < 1 or replays < 1 or not loads or not all(f > 0 for f in loads):
        raise ValueError("measure_host needs requests >= 1, replays >= 1 and positive loads")
    model = workload.model
    trace = workload.make_trace(requests, seed=1, arrival="poisson")
    sched = config.scheduler_config()
    capacity = simulate(profile, requests_from_trace(trace, 1e6), sched).summary()["throughput_rps"]
    grid_only = replace(profile, host=1.0, host_by_load=())
    engine = Engine(room_for(config, workload, trace), [model])
    await engine.start()
    points: list[tuple[float, float]] = []
    spread: tuple[float, ...] = ()
    try:
        if executor is not None:
            share_kernel_choices(executor, engine)
        top_k = int(profile.meta.get("top_k", 0))  # the requests the grid was timed for
        send = engine_sender(engine, model, workload.specs(trace), top_k=top_k, vectors=not top_k)
        (worker,) = engine.workers
        ask = speed or (lambda: 1.0)

        async def replay_at(rate: float) -> Replay:
            return await replay(send, trace.arrivals(rate), rate=rate, lead_s=0.02)

        for load in loads:
            rate = load * capacity

            async def replay_once(rate: float = rate) -> float:
                return (await replay_at(rate)).throughput_rps

            await settle(replay_once, lambda: worker.stats.num_trial_plans)
            rates, factors = [], []
            served: list[tuple[StepPlan, float]] = []
            for _ in range(replays):
                before = ask()
                with timing_plans(worker) as times:
                    rep = await replay_at(rate)
                drift = (before + ask()) / 2
                if not times:
                    raise RuntimeError("measure_host: the engine ran no plan on a chosen kernel")
                rates.append(served_steps_per_s(times, rep.wall_s))
                factors.append(served_over_model(times, grid_only) / drift)
                served += times
            if not points:  # the first load's, the light one
                spread = plan_spread(served, grid_only)
            points.append((statistics.median(rates), statistics.median(factors)))
    finally:
        await engine.shutdown(grace=0)
    return HostFactors(points, spread)


@contextlib.contextmanager
def timing_plans(worker: DeviceWorker) -> Iterator[list[tuple[StepPlan, float]]]:
    """The plans ``worker`` runs on a chosen kernel while the block runs, each with its
    whole step's seconds (``DeviceWorker.plan_times``)."""
    times: list[tuple[StepPlan, float]] = []
    worker.plan_times = times
    try:
        yield times
    finally:
        worker.plan_times = None


def served_steps_per_s(times: Sequence[tuple[StepPlan, float]], wall_s: float) -> float:
    """Cell-steps the plans of ``times`` computed per second of a replay lasting
    ``wall_s``: the load a host factor is measured and read at (``StepProfile.host_at``)."""
    return sum(plan.num_cell_steps for plan, _ in times) / wall_s


def served_over_model(
    times: Sequence[tuple[StepPlan, float]],
    profile: StepProfile,
    steps_per_s: float | None = None,
) -> float:
    """Served plans' seconds over what ``profile`` charges the same plans, served at
    ``steps_per_s`` cell-steps a second (its host factor there): 1 where the model is right."""
    return sum(t for _, t in times) / sum(profile.cost(plan, steps_per_s) for plan, _ in times)


def room_for(config: EngineConfig, workload: Workload, trace: Trace) -> EngineConfig:
    """``config``, cellular, with room for the whole of ``trace`` live at once (slots and
    the admission limit): a replay that compares the engine with the simulator queues
    when overloaded, and never refuses."""
    slots = workload.max_slots_per_request(trace) * len(trace)
    return replace(
        config,
        mode="cellular",
        num_slots=max(config.num_slots, slots),
        max_num_live_requests=max(config.live_limit, len(trace)),
    )


def share_kernel_choices(profiled: TorchExecutor, engine: Engine) -> None:
    """Start the engine's cells with the CPU kernels the profile's cells chose, bucket by
    bucket (``cells.recurrent.KernelChooser``): the profile's grid was timed on those, and
    its warm-up tried every bucket the grid covers, which a replay of a few hundred
    requests does not (56 buckets of nine trial calls each for the chain; six replays
    at the overload still ran trials). So the engine runs the kernels the simulator's
    costs were measured on, as a server would once it had met every shape."""
    for worker in engine.workers:
        assert isinstance(worker.executor, TorchExecutor)
        for name, cell in worker.executor.cells.items():
            mine, theirs = (
                getattr(cell, "kernels", None),
                getattr(profiled.cells[name], "kernels", None),
            )
            if isinstance(mine, KernelChooser) and isinstance(theirs, KernelChooser):
                mine.chosen.update(theirs.chosen)
