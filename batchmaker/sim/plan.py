"""The cost and capacity planner: which deployment meets a p99 target for least money.

Given step-cost profiles (one per instance type or serverless backend), prices, an SLO
and traffic, it prices three kinds of deployment and picks the cheapest that meets the
SLO, or says that none does and what p99 the best of them reaches:

- **always-on**: N replicas of an instance type, each running the cellular scheduler with
  a max batch (the profile's, or half) and a max steps per plan (1, 8 or 32). The
  smallest N whose simulated p99 at the peak hour meets the SLO, under the configuration
  with the lowest p99 there; its capacity is the highest rate at which that still holds
  (bisection on the rate), and headroom is capacity over the peak.
- **serverless** (scale to zero, one request per container, billed per request): a pool
  of containers simulated request by request. A request takes an idle container that
  has been idle for less than the backend's keep-warm time, or starts a cold one and
  waits for its cold start. Its service time is the request alone on the backend's
  profile plus the platform's invoke overhead.
- **mix** (MArk, ATC '19): fewer instances than always-on needs, with an admission limit
  per replica low enough that admitted requests meet the SLO; the requests refused
  (``SimResult.reasons == "rejected"``) spill to a serverless backend.

Latency comes from the simulator (``simulate``: the real scheduler on simulated time),
never from a queueing formula: under cellular batching a request's latency depends on
its length and on the lengths around it. Every hour of the day is simulated as a
stationary window of requests at that hour's rate (``Traffic.requests_at``, bounded in
size), and every simulation is cached, so a plan costs a few dozen simulations.

p99 here is the inverted CDF: the latency that 99% of requests meet or beat (of 100
requests, the 99th smallest). Always-on p99 is the peak hour's (its worst hour);
serverless and mix p99 are over the day's requests, each hour weighted by its traffic
(a quiet hour has more cold starts, so its worst hour is the quietest).

Pure: profiles, prices, an SLO and a ``requests_at(rate)`` callable in, a ``PlanResult``
out. It never imports ``batchmaker.bench``; the CLI builds the callable from a trace.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchmaker.sim.prices import Prices, ServerlessPrice
from batchmaker.sim.profile import FAMILIES, StepProfile
from batchmaker.sim.simulator import SimRequest, SimResult, simulate
from scheduler import SchedulerConfig, default_live_limit

RequestsAt = Callable[[float], Sequence[SimRequest]]
"""Traffic at a mean rate (requests/s): a bounded window of requests, ascending arrivals."""

STEPS_CHOICES = (1, 8, 32)
"""Max steps per plan an always-on configuration may use."""
BATCH_DIVISORS = (1, 2)
"""An always-on configuration's max batch: the profile's, or half of it."""
HOURS = 24
SECONDS_PER_DAY = 86_400.0
REL_TOL = 0.02
"""Capacity is bisected to within 2%."""


class PlanError(ValueError):
    """Input the planner cannot use; the message names the field or flag."""


# ---------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------

FLAT: tuple[float, ...] = (1.0,) * HOURS
DIURNAL: tuple[float, ...] = tuple(
    round(1 + 0.6 * math.cos(2 * math.pi * (h - 15) / HOURS), 3) for h in range(HOURS)
)
"""A synthetic working-day curve: peak at 15:00 at 1.6 x the mean, trough at 03:00 at 0.4 x."""
DAILY_PROFILES = {"flat": FLAT, "diurnal": DIURNAL}


def check_weights(weights: Any, where: str = "daily profile") -> tuple[float, ...]:
    """24 hourly weights (relative traffic per hour of the day), non-negative, not all 0."""
    if (
        not isinstance(weights, list | tuple)
        or len(weights) != HOURS
        or not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights)
    ):
        raise PlanError(f"{where}: must be a list of {HOURS} numbers, one per hour")
    out = tuple(float(w) for w in weights)
    if any(not math.isfinite(w) or w < 0 for w in out) or sum(out) <= 0:
        raise PlanError(f"{where}: weights must be finite, >= 0 and not all 0")
    return out


@dataclass(frozen=True)
class Traffic:
    """How much traffic, over the day, and what one window of it looks like."""

    requests_at: RequestsAt
    requests_per_day: float
    hourly: tuple[float, ...] = FLAT
    """Relative traffic in each hour of the day (any scale)."""

    def __post_init__(self) -> None:
        if not (self.requests_per_day > 0 and math.isfinite(self.requests_per_day)):
            raise PlanError(f"requests per day: must be > 0, got {self.requests_per_day}")
        object.__setattr__(self, "hourly", check_weights(list(self.hourly)))

    def per_hour(self) -> list[tuple[float, float]]:
        """(rate in requests/s, requests that hour) for each hour with traffic."""
        total = sum(self.hourly)
        out = []
        for w in self.hourly:
            if w > 0:
                n = self.requests_per_day * w / total
                out.append((n / 3600, n))
        return out

    @property
    def mean_rate(self) -> float:
        return self.requests_per_day / SECONDS_PER_DAY

    @property
    def peak_rate(self) -> float:
        return max(rate for rate, _ in self.per_hour())

    def scaled(self, requests_per_day: float) -> Traffic:
        return dataclasses.replace(self, requests_per_day=requests_per_day)


def check_trace(trace: Any, family: str) -> None:
    """A trace (``batchmaker.bench.trace.Trace``, or anything with its fields) the planner
    can replay for a model of ``family``; refuses it naming the field."""
    try:
        offsets = np.asarray(trace.offsets, dtype=np.float64)
        tokens = list(trace.tokens)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PlanError(f"offsets, tokens: must be lists of numbers: {exc}") from None
    if offsets.ndim != 1 or len(offsets) == 0:
        raise PlanError("offsets: must be a non-empty list of arrival times")
    if len(tokens) != len(offsets):
        raise PlanError(f"tokens: {len(tokens)} requests, but {len(offsets)} offsets")
    if not np.all(np.isfinite(offsets)) or offsets[0] < 0 or np.any(np.diff(offsets) < 0):
        raise PlanError("offsets: must be finite, >= 0 and ascending")
    for i, t in enumerate(tokens):
        if np.asarray(t).ndim != 1 or len(t) == 0:
            raise PlanError(f"tokens[{i}]: must be a non-empty list of ids")
    kind = trace.kind
    if family not in FAMILIES or kind != family:
        raise PlanError(f"the trace is a {kind} trace, but the profiles' model is a {family}")
    if kind == "seq2seq":
        outputs = np.asarray(trace.output_lengths)
        if outputs.shape != offsets.shape or np.any(outputs < 1):
            raise PlanError("output_lengths: must be one length >= 1 per request")
    if kind == "tree":
        for i, (t, ch) in enumerate(zip(tokens, trace.children, strict=True)):
            ch = np.asarray(ch)
            if ch.shape != (len(t), 2) or np.any(ch >= len(t)):
                raise PlanError(f"children[{i}]: must be [nodes, 2] node indices (-1: none)")


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOption:
    """One priced deployment and what the simulator predicts for it."""

    kind: str
    """``always-on``, ``serverless`` or ``mix``."""
    name: str
    """For people: ``always-on 2 x ml.c5.xlarge``."""
    instance: str
    """The instance type; ``""`` for serverless."""
    backend: str
    """The serverless backend; ``""`` for always-on."""
    replicas: int
    config: dict[str, Any]
    """max batch per cell type, max steps per plan, the admission limit (mix), memory and
    cold start (serverless)."""
    p99_s: float
    meets_slo: bool
    usd_per_month: float
    usd_per_million: float
    capacity_rps: float | None = None
    """Always-on: the highest rate at which p99 still meets the SLO (0: never)."""
    headroom: float | None = None
    """Always-on: capacity over the peak hour's rate."""
    cold_fraction: float | None = None
    """Serverless and mix: requests that waited for a cold start (of those it served)."""
    spill_fraction: float | None = None
    """Mix: requests refused by the instances and sent to serverless."""

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class BreakEvenPoint:
    """The cheapest instance option and the cheapest serverless one at one traffic level."""

    requests_per_day: float
    instance: str
    instance_usd_per_month: float
    instance_p99_s: float
    serverless: str
    serverless_usd_per_month: float
    serverless_p99_s: float


@dataclass(frozen=True)
class BreakEven:
    """Cost and p99 of instance against serverless over a log grid of traffic."""

    points: tuple[BreakEvenPoint, ...]
    requests_per_day: float | None
    """Where the cost lines cross (serverless cheaper below); None if they do not on the grid."""

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_per_day": self.requests_per_day,
            "points": [
                {k: _finite(v) for k, v in dataclasses.asdict(p).items()} for p in self.points
            ],
        }


@dataclass(frozen=True)
class PlanResult:
    """Every option, the cheapest that meets the SLO (or why none does), and break-even."""

    model: str
    slo_p99_s: float
    requests_per_day: float
    mean_rps: float
    peak_rps: float
    hourly: tuple[float, ...]
    options: tuple[PlanOption, ...]
    best: PlanOption | None
    """The cheapest option that meets the SLO; None when none does."""
    best_p99_s: float
    """The lowest p99 any option reaches (what an infeasible SLO could be relaxed to)."""
    best_p99_option: str
    break_even: BreakEven | None
    notes: tuple[str, ...] = ()

    @property
    def infeasible(self) -> bool:
        return self.best is None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "slo_p99_s": self.slo_p99_s,
            "traffic": {
                "requests_per_day": self.requests_per_day,
                "mean_rps": self.mean_rps,
                "peak_rps": self.peak_rps,
                "hourly_weights": list(self.hourly),
            },
            "options": [o.to_json() for o in self.options],
            "feasible": not self.infeasible,
            "best": None if self.best is None else self.best.to_json(),
            "best_p99_s": _finite(self.best_p99_s),
            "best_p99_option": self.best_p99_option,
            "break_even": None if self.break_even is None else self.break_even.to_json(),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------
# Serverless: a pool of one-request containers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerlessRun:
    """What each request saw on a serverless backend."""

    latency: np.ndarray
    billed_s: np.ndarray
    """Each request's billed seconds (the cold start included where the backend bills it)."""
    cold: np.ndarray
    """Whether it waited for a cold start."""


def simulate_serverless(
    arrivals: Sequence[float],
    service_s: Sequence[float],
    price: ServerlessPrice,
    cold_start_s: float,
    *,
    warm: bool = True,
) -> ServerlessRun:
    """Requests through a scale-to-zero pool, one request per container at a time.

    A request takes the most recently freed idle container, if one has been idle for
    less than ``keep_warm_s`` (the others age out, so the pool shrinks to what the
    traffic keeps busy, as Lambda's does), else starts a new one and waits
    ``cold_start_s``. No concurrency limit.

    ``warm``: the window runs again and again, back to back, and the last pass is
    reported, so the pool starts as this traffic leaves it rather than empty (an empty
    start would charge a busy window with every container its first second needs). It
    runs enough passes to cover a cold start, however short the window."""
    n = len(arrivals)
    latency, billed, cold = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    idle: deque[float] = deque()  # free-since times, ascending
    busy: list[float] = []  # heap of free-at times
    span = arrivals[-1] - arrivals[0] + (arrivals[-1] - arrivals[0]) / (n - 1) if n > 1 else 0.0
    warm_up = 1 + math.ceil(cold_start_s / span) if warm and span > 0 else 0
    for offset in (k * span for k in range(min(warm_up, 100) + 1)):
        for i, (t, service) in enumerate(zip(arrivals, service_s, strict=True)):
            t += offset
            while busy and busy[0] <= t:
                idle.append(heapq.heappop(busy))
            while idle and t - idle[0] >= price.keep_warm_s:
                idle.popleft()
            cold[i] = not idle
            if idle:
                idle.pop()
            wait = cold_start_s if cold[i] else 0.0
            latency[i] = wait + service
            billed[i] = price.billed_seconds(service + (wait if price.bills_cold_start else 0.0))
            heapq.heappush(busy, t + latency[i])
    return ServerlessRun(latency, billed, cold)


def quantile(parts: Iterable[tuple[np.ndarray, float]], q: float = 0.99) -> float:
    """The smallest value that at least ``q`` of the weight is at or below (inverted CDF):
    ``parts`` are (values, weight of each value)."""
    values, weights = [], []
    for x, weight in parts:
        values.append(np.asarray(x, dtype=np.float64))
        weights.append(np.full(len(x), weight))
    if not values or not sum(len(v) for v in values):
        return float("nan")
    v = np.concatenate(values)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(np.concatenate(weights)[order])
    i = int(np.searchsorted(cum, q * cum[-1] * (1 - 1e-12)))
    return float(v[order][min(i, len(v) - 1)])


# ---------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    batch_divisor: int
    max_steps_per_plan: int
    max_live: int | None = None
    """Live requests per replica; ``None``: the server's default for the configuration's
    max batch (``scheduler.default_live_limit``), which is what a deployment of it admits.
    The mix lowers it."""


@dataclass
class _Hourly:
    """One hour of a serverless or mix option: its latencies and its spend."""

    latency: np.ndarray
    requests: float
    """Requests in the hour, per day."""
    usd_per_request: float
    """Pay-per-use spend per request of the hour (serverless, or the mix's spill)."""
    cold: float
    spill: float = 0.0


def plan(
    profiles: Mapping[str, StepProfile],
    prices: Prices,
    slo_p99_s: float,
    traffic: Traffic,
    *,
    cold_start_s: float | None = None,
    model: str | None = None,
    max_replicas: int = 64,
    break_even_grid: Sequence[float] | None = None,
) -> PlanResult:
    """Price every option of ``profiles`` (hardware name -> its profile; the name is an
    instance type or a serverless backend of ``prices``) for ``traffic`` under
    ``slo_p99_s``. ``cold_start_s``: the deployed server's cold start on every serverless
    backend (None: each backend's own figure from the prices file)."""
    return _Planner(profiles, prices, slo_p99_s, traffic, cold_start_s, model, max_replicas).run(
        break_even_grid
    )


def check_model(profiles: Mapping[str, StepProfile], model: str | None) -> str:
    """The one model all profiles are of (``--model`` must match each, with or without
    the ``@version`` the profile records)."""
    for name, p in profiles.items():
        if model is not None and model not in (p.model, p.model.partition("@")[0]):
            raise PlanError(
                f"--model: {model!r} does not match the profile for {name}, whose `model` "
                f"field is {p.model!r}"
            )
    models = sorted({p.model for p in profiles.values()})
    if len(models) > 1:
        raise PlanError(f"model: the profiles are of different models {models}; plan one model")
    families = {p.unfold.family for p in profiles.values()}
    if len(families) > 1:
        raise PlanError(f"unfold.family: the profiles unfold differently {sorted(families)}")
    return models[0]


class _Planner:
    def __init__(
        self,
        profiles: Mapping[str, StepProfile],
        prices: Prices,
        slo: float,
        traffic: Traffic,
        cold_start_s: float | None,
        model: str | None,
        max_replicas: int,
    ) -> None:
        if not profiles:
            raise PlanError("hardware: give at least one NAME=PROFILE")
        for name in profiles:
            if name not in prices.instances and name not in prices.serverless:
                raise PlanError(
                    f"--hardware: {name!r} is neither an instance type nor a serverless "
                    f"backend of the prices file ({', '.join(prices.names)})"
                )
        if not (slo > 0 and math.isfinite(slo)):
            raise PlanError(f"--slo-p99-ms: must be > 0, got {slo * 1e3:g}")
        if cold_start_s is not None and not (cold_start_s >= 0 and math.isfinite(cold_start_s)):
            raise PlanError(f"--cold-start-s: must be >= 0, got {cold_start_s}")
        if max_replicas < 1:
            raise PlanError(f"--max-replicas: must be >= 1, got {max_replicas}")
        self.model = check_model(profiles, model)
        self.profiles = dict(profiles)
        self.prices = prices
        self.slo = slo
        self.limit = slo * (1 + 1e-9)
        """What meets the SLO: a latency is a difference of simulated times, which rounding
        can put a hair above a target it meets exactly."""
        self.traffic = traffic
        self.max_replicas = max_replicas
        self.cold_start = {}
        for name in profiles:
            if name in prices.serverless:
                figure = prices.serverless[name].cold_start_s
                chosen = cold_start_s if cold_start_s is not None else figure
                if chosen is None:
                    raise PlanError(
                        f"serverless.{name}.cold_start_s: the prices file has none; "
                        "give --cold-start-s"
                    )
                self.cold_start[name] = chosen
        self.days = prices.hours_per_month / HOURS
        self._requests: dict[float, Sequence[SimRequest]] = {}
        self._sims: dict[tuple[Any, ...], SimResult] = {}
        self._alone: dict[tuple[Any, ...], float] = {}
        self._variants: dict[tuple[str, int], StepProfile] = {}
        self._pools: dict[tuple[str, float], ServerlessRun] = {}
        self.notes: list[str] = []

    # -- the pieces ---------------------------------------------------------------------

    def requests(self, rate: float) -> Sequence[SimRequest]:
        if rate not in self._requests:
            reqs = self.traffic.requests_at(rate)
            if not reqs:
                raise PlanError("traffic: the trace gave no requests")
            self._requests[rate] = reqs
        return self._requests[rate]

    def variant(self, hw: str, divisor: int) -> StepProfile:
        """The profile with every cell type's max batch divided by ``divisor``."""
        key = (hw, divisor)
        if key not in self._variants:
            p = self.profiles[hw]
            specs = tuple(
                dataclasses.replace(s, max_batch=max(1, s.max_batch // divisor))
                for s in p.cell_types
            )
            self._variants[key] = dataclasses.replace(p, cell_types=specs)
        return self._variants[key]

    def live_limit(self, hw: str, cfg: _Config) -> int:
        """The admission limit a server deployed with ``cfg`` has by default."""
        return default_live_limit(
            s.max_batch for s in self.variant(hw, cfg.batch_divisor).cell_types
        )

    def sim(self, hw: str, cfg: _Config, replicas: int, rate: float) -> SimResult:
        key = (hw, cfg, replicas, rate)
        if key not in self._sims:
            profile = self.variant(hw, cfg.batch_divisor)
            config = SchedulerConfig(
                max_steps_per_plan=cfg.max_steps_per_plan,
                max_num_live_requests=cfg.max_live or self.live_limit(hw, cfg),
            )
            self._sims[key] = simulate(profile, self.requests(rate), config, replicas=replicas)
        return self._sims[key]

    def p99(self, hw: str, cfg: _Config, replicas: int, rate: float) -> float:
        """Always-on p99 at ``rate``; infinite if a request was refused."""
        result = self.sim(hw, cfg, replicas, rate)
        return math.inf if result.num_rejected else quantile([(result.latency, 1.0)])

    def alone(self, hw: str, request: SimRequest) -> float:
        """Seconds ``request`` takes alone on ``hw``'s profile, plans as long as allowed."""
        children = b"" if request.children is None else np.asarray(request.children).tobytes()
        key = (hw, len(request.tokens), request.output_length, children)
        if key not in self._alone:
            lone = dataclasses.replace(request, arrival=0.0)
            config = SchedulerConfig(max_steps_per_plan=max(STEPS_CHOICES))
            self._alone[key] = float(simulate(self.profiles[hw], [lone], config).latency[0])
        return self._alone[key]

    def work(self, hw: str, rate: float) -> float:
        """Device-seconds per request no configuration can beat: the window's cell-steps
        at each cell type's cheapest seconds per row-step (full batches, longest plans)."""
        p = self.profiles[hw]
        per_step = {}
        for spec in p.cell_types:
            g = p.costs[spec.name]
            per_step[spec.name] = p.host * min(
                g.seconds[i][j] / (r * s)
                for i, r in enumerate(g.rows)
                for j, s in enumerate(g.steps)
                if r <= spec.max_batch
            )
        u, reqs = p.unfold, self.requests(rate)
        total = sum(len(r.tokens) * per_step[u.cell] for r in reqs)
        if u.family == "seq2seq":
            total += sum(r.output_length * per_step[u.decoder] for r in reqs)
        return total / len(reqs)

    # -- options ------------------------------------------------------------------------

    def always_on(self, hw: str) -> tuple[PlanOption, _Config]:
        peak = self.traffic.peak_rate
        configs = [_Config(d, k) for d in BATCH_DIVISORS for k in STEPS_CHOICES]
        floor = quantile([(np.array([self.alone(hw, r) for r in self.requests(peak)]), 1.0)])
        # With no N able to meet the SLO, look for the N past which more replicas stop
        # helping, and report what it reaches.
        target = self.limit if floor <= self.limit else 1.05 * floor

        def best_at(n: int) -> tuple[float, _Config]:
            return min(((self.p99(hw, c, n, peak), c) for c in configs), key=lambda x: x[0])

        n = min(self.max_replicas, max(1, math.ceil(peak * self.work(hw, peak))))
        failed = n - 1
        p99, cfg = best_at(n)
        while p99 > target and n < self.max_replicas:
            failed, n = n, min(self.max_replicas, max(n + 1, math.ceil(1.25 * n)))
            p99, cfg = best_at(n)
        while n - failed > 1 and p99 <= target:  # the smallest N that meets the target
            mid = (n + failed) // 2
            p99_mid, cfg_mid = best_at(mid)
            if p99_mid <= target:
                n, p99, cfg = mid, p99_mid, cfg_mid
            else:
                failed = mid
        meets = p99 <= self.limit
        capacity = self.capacity(hw, cfg, n, peak) if meets else 0.0
        cost = self.prices.instance_cost(hw, n)
        option = PlanOption(
            kind="always-on",
            name=f"always-on {n} x {hw}",
            instance=hw,
            backend="",
            replicas=n,
            config=self.config_json(hw, cfg),
            p99_s=p99,
            meets_slo=meets,
            usd_per_month=cost,
            usd_per_million=self.per_million(cost),
            capacity_rps=capacity,
            headroom=capacity / peak,
        )
        if not meets:
            self.notes.append(
                f"{hw}: even alone, 1% of requests take over {floor * 1e3:.1f} ms on its "
                f"profile; the p99 reported is what {n} replicas reach"
                if floor > self.limit
                else f"{hw}: {self.max_replicas} replicas do not meet the SLO at the peak"
            )
        return option, cfg

    def capacity(self, hw: str, cfg: _Config, n: int, known: float) -> float:
        """The highest rate at which ``n`` replicas keep p99 within the SLO, given that
        they do at ``known``: doubling to a rate where they do not, then bisection. Never
        above the profile's best throughput (``work``): a bounded window that drains
        within the SLO shows a good p99 at any rate, but past that the queue grows
        without end."""
        ceiling = n / self.work(hw, known)
        lo, hi = known, min(2 * known, ceiling)
        while hi > lo and self.p99(hw, cfg, n, hi) <= self.limit:
            if hi >= ceiling:
                return ceiling
            lo, hi = hi, min(2 * hi, ceiling)
        while hi - lo > REL_TOL * lo:
            mid = (lo + hi) / 2
            if self.p99(hw, cfg, n, mid) <= self.limit:
                lo = mid
            else:
                hi = mid
        return lo

    def pool(self, backend: str, requests: Sequence[SimRequest]) -> ServerlessRun:
        """``requests`` on ``backend``'s pool, each served alone on its profile."""
        price = self.prices.serverless[backend]
        service = [self.alone(backend, r) + price.invocation_overhead_s for r in requests]
        arrivals = [r.arrival for r in requests]
        return simulate_serverless(arrivals, service, price, self.cold_start[backend])

    def pool_at(self, backend: str, rate: float) -> ServerlessRun:
        key = (backend, rate)
        if key not in self._pools:
            self._pools[key] = self.pool(backend, self.requests(rate))
        return self._pools[key]

    def serverless(self, backend: str, traffic: Traffic) -> PlanOption:
        price = self.prices.serverless[backend]
        hours = []
        for rate, n in traffic.per_hour():
            run = self.pool_at(backend, rate)
            k = len(run.latency)
            usd = price.cost(k, float(run.billed_s.sum())) / k
            hours.append(_Hourly(run.latency, n, usd, float(run.cold.mean())))
        cost = self.days * sum(h.requests * h.usd_per_request for h in hours)
        return PlanOption(
            kind="serverless",
            name=f"serverless {backend}",
            instance="",
            backend=backend,
            replicas=0,
            config={"memory_mb": price.memory_mb, "cold_start_s": self.cold_start[backend]},
            p99_s=self.daily_p99(hours),
            meets_slo=self.daily_p99(hours) <= self.limit,
            usd_per_month=cost,
            usd_per_million=self.per_million(cost, traffic),
            cold_fraction=self.daily_mean(hours, "cold"),
        )

    def mix(self, base: PlanOption, cfg: _Config, backend: str) -> PlanOption | None:
        """MArk: fewer instances than always-on needs, the overflow to ``backend``."""
        hw, peak = base.instance, self.traffic.peak_rate
        per_replica = (base.capacity_rps or 0.0) / base.replicas
        sized_for_mean = math.ceil(self.traffic.mean_rate / per_replica) if per_replica else 1
        candidates = sorted({max(1, sized_for_mean), base.replicas - 1} - {0})
        candidates = [n for n in candidates if n < base.replicas]
        best: PlanOption | None = None
        price = self.prices.serverless[backend]
        for n in candidates:
            # The admission limit: the largest power of two (up to the server's default)
            # whose admitted requests meet the SLO at the peak hour (admission only bites
            # when busy).
            limit, ceiling = 0, self.live_limit(hw, cfg)
            while limit < ceiling:
                wider = min(ceiling, max(1, 2 * limit))
                trial = _Config(cfg.batch_divisor, cfg.max_steps_per_plan, wider)
                if quantile([(self.sim(hw, trial, n, peak).latency, 1.0)]) > self.limit:
                    break
                limit = wider
            if limit == 0:
                continue
            admit = _Config(cfg.batch_divisor, cfg.max_steps_per_plan, limit)
            hours = []
            for rate, count in self.traffic.per_hour():
                result = self.sim(hw, admit, n, rate)
                reqs = self.requests(rate)
                spilled = [reqs[i] for i, r in enumerate(result.reasons) if r == "rejected"]
                latency, usd, cold = result.latency, 0.0, 0.0
                if spilled:
                    run = self.pool(backend, spilled)
                    latency = np.concatenate([latency, run.latency])
                    usd = price.cost(len(spilled), float(run.billed_s.sum())) / len(reqs)
                    cold = float(run.cold.sum()) / len(reqs)
                spill = len(spilled) / len(reqs)
                hours.append(_Hourly(latency, count, usd, cold, spill))
            p99 = self.daily_p99(hours)
            cost = self.prices.instance_cost(hw, n) + self.days * sum(
                h.requests * h.usd_per_request for h in hours
            )
            option = PlanOption(
                kind="mix",
                name=f"mix {n} x {hw} + {backend}",
                instance=hw,
                backend=backend,
                replicas=n,
                config={
                    **base.config,
                    "max_live": limit,
                    "memory_mb": price.memory_mb,
                    "cold_start_s": self.cold_start[backend],
                },
                p99_s=p99,
                meets_slo=p99 <= self.limit,
                usd_per_month=cost,
                usd_per_million=self.per_million(cost),
                cold_fraction=self.daily_mean(hours, "cold"),
                spill_fraction=self.daily_mean(hours, "spill"),
            )
            if best is None or _better(option, best):
                best = option
        return best

    # -- helpers ------------------------------------------------------------------------

    def config_json(self, hw: str, cfg: _Config) -> dict[str, Any]:
        specs = self.variant(hw, cfg.batch_divisor).cell_types
        return {
            "max_batch": {s.name: s.max_batch for s in specs},
            "max_steps_per_plan": cfg.max_steps_per_plan,
        }

    def per_million(self, usd_per_month: float, traffic: Traffic | None = None) -> float:
        per_month = (traffic or self.traffic).requests_per_day * self.days
        return usd_per_month / per_month * 1e6

    @staticmethod
    def daily_p99(hours: Sequence[_Hourly]) -> float:
        return quantile((h.latency, h.requests / max(1, len(h.latency))) for h in hours)

    @staticmethod
    def daily_mean(hours: Sequence[_Hourly], what: str) -> float:
        total = sum(h.requests for h in hours)
        return float(sum(h.requests * getattr(h, what) for h in hours) / total)

    def check_slo(self) -> None:
        """An SLO below the longest request's time alone on the fastest hardware can
        never be met: that is an input error, not an infeasible plan."""
        reqs = self.requests(self.traffic.peak_rate)
        longest = max(reqs, key=lambda r: len(r.tokens) + r.output_length)
        idle = {hw: self.alone(hw, longest) for hw in self.profiles}
        fastest = min(idle, key=idle.__getitem__)
        if self.slo < idle[fastest]:
            raise PlanError(
                f"--slo-p99-ms: {self.slo * 1e3:g} ms is below the idle latency of the "
                f"traffic's longest request ({len(longest.tokens)} tokens): "
                f"{idle[fastest] * 1e3:.1f} ms alone on the fastest profile ({fastest}); "
                "no deployment can meet it"
            )

    # -- the plan -----------------------------------------------------------------------

    def run(self, grid: Sequence[float] | None) -> PlanResult:
        self.check_slo()
        options: list[PlanOption] = []
        bases: list[tuple[PlanOption, _Config]] = []
        for hw in self.profiles:
            if hw in self.prices.instances:
                option, cfg = self.always_on(hw)
                options.append(option)
                bases.append((option, cfg))
        backends = [hw for hw in self.profiles if hw in self.prices.serverless]
        options += [self.serverless(b, self.traffic) for b in backends]
        for base, cfg in bases:
            for backend in backends:
                if not base.meets_slo or base.replicas < 2:
                    self.notes.append(
                        f"mix of {base.instance} + {backend}: not priced, always-on needs "
                        f"{'1 instance' if base.meets_slo else 'more than the SLO allows'}"
                    )
                    continue
                mixed = self.mix(base, cfg, backend)
                if mixed is not None:
                    options.append(mixed)
        meeting = [o for o in options if o.meets_slo]
        best = min(meeting, key=lambda o: (o.usd_per_month, o.p99_s)) if meeting else None
        lowest = min(options, key=lambda o: o.p99_s)
        return PlanResult(
            model=self.model,
            slo_p99_s=self.slo,
            requests_per_day=self.traffic.requests_per_day,
            mean_rps=self.traffic.mean_rate,
            peak_rps=self.traffic.peak_rate,
            hourly=self.traffic.hourly,
            options=tuple(options),
            best=best,
            best_p99_s=lowest.p99_s,
            best_p99_option=lowest.name,
            break_even=self.break_even(bases, backends, grid),
            notes=tuple(self.notes),
        )

    def break_even(
        self,
        bases: Sequence[tuple[PlanOption, _Config]],
        backends: Sequence[str],
        grid: Sequence[float] | None,
    ) -> BreakEven | None:
        """Instance against serverless over traffic, each simulated at every level. An
        instance type keeps the planned configuration; its replicas start from the
        planned capacity per replica and grow until the SLO holds at that level's peak
        (or ``max_replicas``)."""
        sized = [(o, c) for o, c in bases if o.capacity_rps]
        if not sized or not backends:
            return None
        if grid is None:
            grid = [10 ** (e / 2) for e in range(4, 17)]  # 100 to 100M requests a day
        points = []
        for rpd in grid:
            traffic = self.traffic.scaled(rpd)
            peak = traffic.peak_rate
            lines = []
            for o, cfg in sized:
                n = math.ceil(peak * o.replicas / (o.capacity_rps or 1))
                n = min(self.max_replicas, max(1, n))
                while n < self.max_replicas and self.p99(o.instance, cfg, n, peak) > self.limit:
                    n += 1
                usd = self.prices.instance_cost(o.instance, n)
                lines.append((usd, self.p99(o.instance, cfg, n, peak), f"{n} x {o.instance}"))
            usd, p99, name = min(lines)
            sls = min((self.serverless(b, traffic) for b in backends), key=_cost)
            points.append(
                BreakEvenPoint(rpd, name, usd, p99, sls.backend, sls.usd_per_month, sls.p99_s)
            )
        crossing = None
        for a, b in itertools.pairwise(points):
            da = a.serverless_usd_per_month - a.instance_usd_per_month
            db = b.serverless_usd_per_month - b.instance_usd_per_month
            if da < 0 <= db:
                crossing = a.requests_per_day + (b.requests_per_day - a.requests_per_day) * (
                    -da / (db - da)
                )
                break
        return BreakEven(tuple(points), crossing)


def _cost(o: PlanOption) -> float:
    return o.usd_per_month


def _better(a: PlanOption, b: PlanOption) -> bool:
    """Of options that meet the SLO the cheaper; of those that do not, the lower p99."""

    def key(o: PlanOption) -> tuple[bool, float, float]:
        if o.meets_slo:
            return (False, o.usd_per_month, o.p99_s)
        return (True, o.p99_s, o.usd_per_month)

    return key(a) < key(b)


def _finite(v: Any) -> Any:
    """JSON has no infinity: a p99 of requests that were refused is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
