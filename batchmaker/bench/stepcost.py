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

The result is a ``batchmaker.sim.profile.StepProfile``: JSON the simulator reads with no
model and no torch.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from batchmaker.config import EngineConfig
from batchmaker.models.base import Model
from batchmaker.models.seq2seq import Seq2SeqModel
from batchmaker.models.sequence import SequenceModel
from batchmaker.models.tree import TreeModel
from batchmaker.runtime.engine import scheduler_parts
from batchmaker.runtime.executor import CellSet
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.sim.profile import CostGrid, StepProfile, Unfold
from batchmaker.sim.simulator import SimRequest, graph_of
from scheduler import CellTypeSpec, ManualClock, SchedRequest, SchedulerConfig, make_scheduler

WARMUP = 6
"""Rounds thrown away per grid point: the kernel chooser times both CPU kernels three
times each on a bucket's first calls."""


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


def _requests(unfold: Unfold, rows: int, steps: int) -> list[SimRequest]:
    """``rows`` requests whose first plan of each cell type is ``rows`` x ``steps``."""
    tokens = np.ones(steps, dtype=np.int64)
    if unfold.family == "tree":
        leaf = np.full((1, 2), -1, dtype=np.int64)
        return [SimRequest(0.0, np.ones(1, dtype=np.int64), children=leaf)] * rows
    return [SimRequest(0.0, tokens, output_length=steps)] * rows


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
    seconds: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for rows in _axis(max(max(r) for r, _ in axes.values())):
        for steps in _axis(max(max(k) for _, k in axes.values())):
            if not any(rows in rs and steps in ks for rs, ks in axes.values()):
                continue
            for round_ in range(WARMUP + repeats):
                for name, k, dt in _run(
                    executor, specs, capacities, unfold, rows, steps, cap, top_k
                ):
                    rs, ks = axes[name]
                    if round_ >= WARMUP and rows in rs and k in ks:
                        seconds[(name, rows, k)].append(dt)
            if log is not None:
                got = [
                    f"{name.rsplit('/', 1)[-1]} {1e3 * statistics.median(times):.2f} ms"
                    for (name, r, k), times in sorted(seconds.items())
                    if r == rows and k == steps
                ]
                log(f"rows {rows:4d} steps {steps:3d}: {', '.join(got)}")
    costs = {}
    for spec in specs:
        rs, ks = axes[spec.name]
        grid = tuple(tuple(statistics.median(seconds[(spec.name, r, k)]) for k in ks) for r in rs)
        costs[spec.name] = CostGrid(rs, ks, grid)
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
    The points are the main cell type's full batch at a few steps (what saturation
    runs) and one row at one step (what a request alone runs), timed exactly as the
    profile timed them (``_run``), after the same warm-up."""

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
        main = next(s for s in self._specs if s.name == profile.unfold.cell)
        grid = profile.costs[main.name]
        full = grid.rows[-1]
        steps = max(k for k in grid.steps if k <= 4)
        self._points = [(main.name, full, steps), (main.name, 1, 1)]
        self._want = [grid.cost(rows, k) for _, rows, k in self._points]
        for _ in range(WARMUP):
            self._times()

    def _times(self) -> list[list[float]]:
        got: list[list[float]] = [[] for _ in self._points]
        for i, (name, rows, steps) in enumerate(self._points):
            for cell, k, dt in _run(
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
) -> list[tuple[str, int, float]]:
    """Every plan of one synthetic batch, as (cell type, steps, seconds), timed alone."""
    sched = make_scheduler(
        SchedulerConfig(max_steps_per_plan=cap, max_num_live_requests=rows),
        specs,
        capacities,
        ManualClock(),
    )
    for i, r in enumerate(_requests(unfold, rows, steps)):
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
            out.append((plan.cell_type, plan.num_steps, dt))
    return out
