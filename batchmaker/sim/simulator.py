"""The discrete-event loop: arrivals, replicas, and the real scheduler on simulated time.

Each replica is one device: a scheduler made by ``scheduler.make_scheduler`` (the same
call the engine makes) over the profile's cell types and pools. All replicas share one
``ManualClock``. At each event time, in this order, as a device worker sees them:

1. plans that end now are handed back (``update_from_output``), and their emissions
   and endings recorded;
2. requests that arrive now are admitted to the replica with the fewest live requests
   (the engine's placement), or rejected at once when it is full (``AdmissionError``,
   the engine's ``RESOURCE_EXHAUSTED``);
3. every idle replica schedules; a plan occupies its replica for the profile's cost,
   and the scheduler is told that cost (``observe``), as the worker tells it the
   measured time.

Then the clock jumps to the next event: an arrival, a plan's end, or a scheduler's
wake-up (a batching timeout, a deadline). Nothing sleeps, so a minute of traffic takes
as long as the scheduler's own Python for that minute's plans.

Where it differs from the live server, by design: step k's outputs reach their stream
when step k ends (the worker hands them over when step k+1 starts: the same moment on a
busy device), and the host's time outside the executor (admission, the event loop) is
not modelled except as far as the profile's measured plan times include it: each plan
costs the profile's host factor at the cell-steps per second its replica served over the
second before it (``StepProfile.host_by_load``), times a multiplier drawn from the
served plans' spread around that mean (``StepProfile.host_spread``), seeded, so a run is
repeatable.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchmaker.sim.profile import StepProfile, Unfold
from scheduler import (
    AdmissionError,
    CellularScheduler,
    ChainGraph,
    FinishReason,
    ManualClock,
    RequestGraph,
    SchedRequest,
    Scheduler,
    SchedulerConfig,
    Seq2SeqGraph,
    SloConfig,
    SloController,
    SloDecision,
    StepPlan,
    TreeGraph,
    make_scheduler,
)

HOST_WINDOW_S = 1.0
"""Seconds of a replica's past plans whose cell-steps per second its host factor is read at."""


@dataclass(frozen=True)
class SimRequest:
    """One request of the simulated traffic: when it arrives and what it asks for."""

    arrival: float
    """Seconds from the start."""
    tokens: np.ndarray
    """Its input ids: a sequence, or one per tree node."""
    output_length: int = 0
    """seq2seq: decoder steps (sent as its output cap, as the benchmark's traces do)."""
    children: np.ndarray | None = None
    """Trees: ``[nodes, 2]`` child indices, -1 where absent."""


def graph_of(unfold: Unfold, request: SimRequest) -> RequestGraph:
    """The request graph the model would build for ``request``."""
    if unfold.family == "chain":
        return ChainGraph(unfold.cell, request.tokens, unfold.pool)
    if unfold.family == "seq2seq":
        if request.output_length < 1:
            raise ValueError("a seq2seq request needs an output_length >= 1")
        return Seq2SeqGraph(
            unfold.cell,
            unfold.decoder,
            request.tokens,
            unfold.pool,
            bos=unfold.bos,
            eos=unfold.eos,
            max_steps=request.output_length,
        )
    if request.children is None:
        raise ValueError("a tree request needs its children")
    children = [[int(c) for c in row if c >= 0] for row in request.children]
    return TreeGraph(unfold.cell, request.tokens, children, unfold.pool, arity=unfold.arity)


def requests_from_trace(trace: Any, rate: float, limit: int | None = None) -> list[SimRequest]:
    """A recorded trace (``batchmaker.bench.trace.Trace``, or anything with its fields)
    replayed at ``rate`` requests/s: the same requests the live benchmark sends."""
    times = np.asarray(trace.offsets[:limit], dtype=np.float64) / rate
    outputs = trace.output_lengths
    children = trace.children
    return [
        SimRequest(
            float(t),
            np.asarray(trace.tokens[i], dtype=np.int64),
            0 if outputs is None else int(outputs[i]),
            None if children is None else np.asarray(children[i]),
        )
        for i, t in enumerate(times)
    ]


@dataclass
class PlanRecord:
    """One executed plan, for tests and for anyone tracing a simulation."""

    replica: int
    start: float
    seconds: float
    cell_type: str
    rows: tuple[tuple[int, int, int], ...]
    """Per row: (request index, first node, steps); padding rows are (-1, -1, 1)."""


@dataclass
class SimResult:
    """What happened to every request, and what the devices did."""

    arrival: np.ndarray
    first_output: np.ndarray
    """When its first step reached its stream; NaN if none did."""
    finish: np.ndarray
    """When it ended; NaN for a rejected request."""
    reasons: list[str]
    """Its finish reason, or ``"rejected"``."""
    span: float
    """From the first arrival to the last event."""
    busy: list[float]
    """Per replica: seconds its device spent on plans."""
    plans: dict[str, int] = field(default_factory=dict)
    """Per cell type: plans run."""
    rows: dict[str, int] = field(default_factory=dict)
    """Per cell type: real rows summed over plans."""
    cell_steps: dict[str, int] = field(default_factory=dict)
    """Per cell type: rows' steps run (each real row's steps)."""
    records: list[PlanRecord] = field(default_factory=list)
    slo: list[tuple[float, SloDecision]] = field(default_factory=list)
    """With an SLO controller: each of its updates, at its simulated time."""

    @property
    def num_rejected(self) -> int:
        return sum(r == "rejected" for r in self.reasons)

    @property
    def latency(self) -> np.ndarray:
        """Seconds from arrival to the end, for requests that completed cleanly."""
        ok = np.array([r in (FinishReason.COMPLETED, FinishReason.LENGTH) for r in self.reasons])
        return (self.finish - self.arrival)[ok] if ok.any() else np.zeros(0)

    def summary(self) -> dict[str, Any]:
        """The figures a deployment is judged by (seconds; per cell type where it varies)."""
        lat = self.latency
        ttft = (self.first_output - self.arrival)[np.isfinite(self.first_output)]
        n_done = len(lat)
        return {
            "num_requests": len(self.reasons),
            "num_completed": n_done,
            "num_rejected": self.num_rejected,
            "throughput_rps": n_done / self.span if self.span > 0 else 0.0,
            "latency_s": _percentiles(lat),
            "first_output_s": _percentiles(ttft),
            "mean_batch": {k: self.rows[k] / n for k, n in self.plans.items() if n},
            "steps_per_plan": {
                k: self.cell_steps[k] / self.rows[k] for k in self.plans if self.rows[k]
            },
            "busy_fraction": [b / self.span if self.span > 0 else 0.0 for b in self.busy],
        }


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


class _Result:
    """The executor's result as the scheduler reads it: only the decoders' tokens.

    A simulated decoder never emits EOS (``-1`` is no token id), so it decodes its
    output cap, as the benchmark's seq2seq traces make the live one do."""

    __slots__ = ("tokens",)

    def __init__(self, batch: int) -> None:
        self.tokens = np.full(batch, -1, dtype=np.int64)


def simulate(
    profile: StepProfile,
    requests: Sequence[SimRequest],
    config: SchedulerConfig | None = None,
    *,
    replicas: int = 1,
    record: bool = False,
    slo: SloConfig | None = None,
    seed: int = 0,
) -> SimResult:
    """Run ``requests`` (ascending arrivals) through ``replicas`` devices of ``profile``.

    ``seed``: of the draws from the profile's ``host_spread`` (none without one).

    ``slo``: run the server's SLO controller (``scheduler/slo.py``) as the engine does: one
    for all replicas, its admission limit per replica, its plan length on every scheduler,
    updated at the first event after each interval; its decisions are in ``SimResult.slo``.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    config = config or SchedulerConfig()
    clock = ManualClock()
    scheds: list[Scheduler] = [
        make_scheduler(config, profile.cell_types, profile.pools, clock) for _ in range(replicas)
    ]
    n = len(requests)
    arrival = np.array([r.arrival for r in requests], dtype=np.float64)
    if n and np.any(np.diff(arrival) < 0):
        raise ValueError("requests must be in order of arrival")
    # Python lists in the loop (a numpy scalar per emission costs more than the rest of
    # its bookkeeping); arrays once it ends.
    first: list[float | None] = [None] * n
    finish = [float("nan")] * n
    reasons = [""] * n
    busy = [0.0] * replicas
    running: list[tuple[float, StepPlan] | None] = [None] * replicas
    out = SimResult(arrival, np.zeros(0), np.zeros(0), reasons, 0.0, busy)
    for spec in profile.cell_types:
        out.plans[spec.name] = out.rows[spec.name] = out.cell_steps[spec.name] = 0
    live = [0] * replicas
    nxt = 0
    now = float(arrival[0]) if n else 0.0
    start = now
    control = (
        None
        if slo is None
        else SloController(
            slo,
            live_limit=config.max_num_live_requests,
            max_steps_per_plan=config.max_steps_per_plan,
            now=now,
        )
    )
    live_arrivals: dict[int, float] = {}
    # Each replica's plans over the last HOST_WINDOW_S (start, cell-steps), and their
    # cell-steps: the load its host factor is read at (``StepProfile.host_at``).
    recent: list[collections.deque[tuple[float, int]]] = [
        collections.deque() for _ in range(replicas)
    ]
    recent_steps = [0] * replicas
    spread = _Spread(profile.host_spread, seed)

    def ended(requests_: Iterable[SchedRequest], r: int) -> None:
        for req in requests_:
            i = req.tag
            finish[i] = now
            reasons[i] = str(req.finish_reason)
            live[r] -= 1
            if control is not None:
                del live_arrivals[i]
                if req.finish_reason in (FinishReason.COMPLETED, FinishReason.LENGTH):
                    control.finished(req.arrival, now, req.graph.longest_run)

    while True:
        clock.set(now)
        progressed = False
        # 1. plans that end now
        for r, run in enumerate(running):
            if run is not None and run[0] <= now:
                progressed = True
                running[r] = None
                done = run[1]
                outcome = scheds[r].update_from_output(done, _Result(done.batch_size))
                for emitted in outcome.each():
                    i = emitted[0].tag
                    if first[i] is None:
                        first[i] = now
                ended(outcome.finished, r)
        # 2. arrivals
        while nxt < n and arrival[nxt] <= now:
            progressed = True
            req = requests[nxt]
            r = min(range(replicas), key=live.__getitem__)
            if control is not None and live[r] >= control.live_limit:
                reasons[nxt] = "rejected"
                control.rejected()
                nxt += 1
                continue
            sreq = SchedRequest(
                str(nxt), graph_of(profile.unfold, req), arrival=float(arrival[nxt]), tag=nxt
            )
            try:
                scheds[r].add_request(sreq)
            except AdmissionError:
                reasons[nxt] = "rejected"
                if control is not None:
                    control.rejected()  # as the engine counts a refusal for want of slots
            else:
                live[r] += 1
                if control is not None:
                    control.admitted(live[r])
                    live_arrivals[nxt] = sreq.arrival
            nxt += 1
        if control is not None and control.due(now):
            busiest = max(live)
            decision = control.update(
                now,
                live_arrivals=live_arrivals.values(),
                live=busiest,
                plan_cost=functools.partial(scheds[0].plan_seconds, busiest),
                step_cost=scheds[0].step_seconds,
            )
            for sched in scheds:
                if isinstance(sched, CellularScheduler):
                    sched.max_steps_per_plan = decision.max_steps_per_plan
            out.slo.append((now, decision))
        # 3. idle replicas schedule
        wake = float("inf")
        for r, sched in enumerate(scheds):
            run = running[r]
            if run is None:
                plan = sched.schedule()
                ended(sched.take_outcome().finished, r)  # expiries found by schedule()
                if plan is not None:
                    progressed = True
                    window = recent[r]
                    while window and window[0][0] <= now - HOST_WINDOW_S:
                        recent_steps[r] -= window.popleft()[1]
                    seconds = profile.cost(plan, recent_steps[r] / HOST_WINDOW_S) * spread.draw()
                    window.append((now, plan.num_cell_steps))
                    recent_steps[r] += plan.num_cell_steps
                    sched.observe(plan, seconds)
                    run = running[r] = (now + seconds, plan)
                    busy[r] += seconds
                    _count(out, plan, r, now, seconds, record)
                else:
                    w = sched.next_wakeup()
                    if w is not None:
                        wake = min(wake, max(w, now))
            if run is not None:
                wake = min(wake, run[0])
        if nxt < n:
            wake = min(wake, float(arrival[nxt]))
        if wake == float("inf"):
            break
        if wake <= now and not progressed:
            # A scheduler that wants to run now but plans nothing would spin here forever
            # (the live worker waits for news instead); it is a policy bug, so say so.
            raise RuntimeError(f"the scheduler made no progress at t={now:.6f} s")
        now = wake
    out.span = now - start
    out.first_output = np.array([np.nan if t is None else t for t in first], dtype=np.float64)
    out.finish = np.array(finish, dtype=np.float64)
    return out


class _Spread:
    """Multipliers drawn with replacement from ``host_spread``, in chunks (one numpy call
    per plan would cost more than the rest of a plan's bookkeeping); always 1 without."""

    CHUNK = 4096

    def __init__(self, multipliers: Sequence[float], seed: int) -> None:
        self._values = np.asarray(multipliers, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._drawn: list[float] = []

    def draw(self) -> float:
        if not len(self._values):
            return 1.0
        if not self._drawn:
            picks = self._rng.integers(len(self._values), size=self.CHUNK)
            self._drawn = self._values[picks].tolist()
        return self._drawn.pop()


def _count(
    out: SimResult, plan: StepPlan, replica: int, now: float, seconds: float, record: bool
) -> None:
    name = plan.cell_type
    out.plans[name] += 1
    out.rows[name] += plan.num_real
    out.cell_steps[name] += plan.num_cell_steps
    if record:
        steps = plan.steps
        out.records.append(
            PlanRecord(
                replica,
                now,
                seconds,
                name,
                tuple(
                    (-1, -1, 1)
                    if req is None
                    else (int(req.tag), node, 1 if steps is None else int(steps[k]))
                    for k, (req, node) in enumerate(zip(plan.requests, plan.nodes, strict=True))
                ),
            )
        )
