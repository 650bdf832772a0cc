"""The online SLO controller: keeps a rolling p99 latency under a target, and serves as
much as it can under it.

Pure, like the rest of this package: it reads only the times it is handed, so the engine
runs it on its event loop under the monotonic clock and the simulator on simulated time,
and tests drive it with made-up latencies.

What it turns, and why these:

- **Admission: live requests per device.** The knob that bounds latency. In cellular
  batching each live request runs in every step of its cell type (up to the max batch),
  so a request's latency is its steps times the step time at the live count, plus waits
  for a seat beyond the max batch. While the offered load is one the device can serve
  within the target, the limit never binds. Above it, the limit holds the live count
  where the target holds, and the excess gets RESOURCE_EXHAUSTED at once instead of
  queueing without bound. The limit is set by feedback on the measured p99, the way TCP
  and Netflix's concurrency limiters set a window, sized by a model where one is known:
  - *when to cut*: Little's law says the crowd now live will be over the aim (a margin
    under the target for the feedback's delay; the mean live count over the completion
    rate is the latency of what is being served, and after a step up in load it rises
    within a second or two, long before slow requests complete); or the limit refuses
    many of the requests (an overload) and the measured p99 (live requests already
    older than the aim counted at their age) is over the aim; or, where it refuses few
    or none, the latencies measured hold more at or over the target than a p99 held at
    the target would show but rarely. There a p99 between the aim and the target
    breaks no promise and is not cut: at half of capacity on this project's CPU it sat
    there, and cutting on it refused 2-5% of a load served within the target;
  - *how far*: in a crowd (the device saturated), to Little's live count at the aim,
    the completion rate times the latency the aim allows; at a steady load, to the
    largest live count the measured step costs predict holds the aim (latency scales
    with the step time at the live count, seat waits included); with no costs yet, by
    the p99's ratio to the aim and Little's law. Where even one live request would be
    over the aim at a steady load, the latency is the requests' own length, and
    refusing others would not shorten it: the limit stays, and says so;
  - *when to raise*: the limit held requests back, and its longest requests have had
    time to complete since it was set (until then its samples lean to short requests);
    if it refuses few of the last seconds' requests (``few_refused``), from anywhere
    under the aim, by a tenth, or up to a half where the p99 is well under the target
    and the costs predict the aim still holds; if it refuses many (an overload), by a
    tenth, from well under the target.
  Each limit is judged only by the requests admitted under it, so a cut is not repeated
  while the slow requests admitted before it drain.
- **Steps per plan.** The cap on the plan length that the slowest requests finish
  soonest with, by the plans' measured costs at the batch now running
  (``scheduler/cost.py``). A request waits for the plan in progress before its first
  step, and then runs its steps in plans of up to K: a request of S steps (the p99 of
  the completed requests' longest runs) takes about ``C(K) * (1 + ceil(S / K))``. Short
  plans shorten the wait; long ones pay a plan's fixed cost (the host's work, a fused
  kernel's set-up, the first layer's table) over more steps. Which wins is the device's
  and the model's. This knob's first rule, a plan may take a tenth of the target, held
  on a fast host; on a slower one, where a plan of the benchmark model at a few rows
  cost 15 ms for 2 steps and 20 ms for 16, it cut plans to 2-4 steps, made every long
  request slower and late, and the admission limit then refused half of a load the
  server could serve. Costs are compared only within the lengths measured: outside
  them the estimate is a guess (``PlanCosts.estimate``). Under the cap the
  scheduler still shortens plans that arriving requests would wait for
  (``scheduler/cellular.py``).
- **Max batch: not turned.** With the two knobs above, it changes neither the tail nor
  the throughput: in the simulator, on this project's CPU profile at 1.5 x capacity, max
  batches of 16, 32 and 64 served 194, 193 and 195 requests/s with 1.0-1.5% late
  (docs/slo.md; under the first plan-length rule). Without the controller a smaller
  batch does shorten the tail on a CPU, where a row costs about the same in any batch
  past 16; the plan-length cap shortens plans instead where that helps the slowest
  requests, which keeps the wide batch a GPU needs.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

_RATE_SPAN_S = 2.0
"""Seconds over which the completion rate and the mean live count are measured."""

_CROWD = 1.25
"""The look-ahead counts when the mean live count is this many times Little's count of
the requests completing (their rate times their mean latency)."""


_P99_SHARE = 0.01
"""The share of latencies a p99 target allows over it."""


@functools.lru_cache(maxsize=4096)
def _over_share(n: int, alpha: float) -> int:
    """The fewest of ``n`` latencies at or over the target that a p99 held at the target
    (each over with probability ``_P99_SHARE``) shows with probability at most ``alpha``:
    the binomial tail, summed in logs so that a large ``n`` does not underflow."""
    if n < 1:
        return 1
    p = _P99_SHARE
    log_pmf, step = n * math.log1p(-p), math.log(p / (1 - p))
    tail, k = 1.0, 0  # P(K >= k)
    while k <= n and tail > alpha * (1 + 1e-9):
        tail -= math.exp(log_pmf)
        log_pmf += math.log((n - k) / (k + 1)) + step if k < n else -math.inf
        k += 1
    return k


@dataclass(frozen=True, slots=True)
class SloConfig:
    """The target and how the controller pursues it."""

    p99_s: float
    """The target: the p99 of completed requests' latency (admission to last output)."""
    window_s: float = 10.0
    """The rolling window of completions the p99 is measured over."""
    interval_s: float = 0.25
    """How often the controller decides."""
    aim: float = 0.8
    """The p99 it steers to, as a share of the target: the margin absorbs the feedback's
    delay (a cut acts only on the requests admitted after it)."""
    raise_below: float = 0.6
    """It raises a binding limit only while the p99 is under this share of the target."""
    plan_margin: float = 0.1
    """The plan length changes only for a predicted p99 this much shorter than the current
    length's: the costs are noisy running means, and a cap that flips every update would
    keep the scheduler from learning either length's cost."""
    few_refused: float = 0.1
    """The share of the requests of the last seconds a binding limit may refuse and still
    count as holding back only bursts of a load that mostly fits: such a limit is cut
    only as one that does not bind is (on a share over the target), and raised from
    anywhere under the aim. One that refuses more holds back an overload: it steers to
    the aim, and rises by a tenth from under ``raise_below``. At half of capacity on this
    project's CPU, after an overload had cut the limit, the p99 sat between
    ``raise_below`` and the aim, and a limit raised only under ``raise_below`` and cut
    on every p99 over the aim kept refusing 4-10% of the load."""
    min_samples: int = 20
    """Latencies needed (since the last change) before the p99 is trusted."""
    cut_alpha: float = 0.01
    """Without a crowd ahead, a cut needs more latencies at or over the target than a p99
    held at the target (1% of them over) would show with this probability: a p99 over a
    few dozen latencies is their largest, and at half of capacity on this project's CPU,
    where 0.5% of requests were over the target and 2% over the aim, cutting on it refused
    2-5% of a load the server held within the target."""

    def __post_init__(self) -> None:
        if not self.p99_s > 0 or not math.isfinite(self.p99_s):
            raise ValueError(f"slo p99 must be a positive number of seconds, got {self.p99_s}")
        if not self.window_s > 0 or not self.interval_s > 0:
            raise ValueError("slo window and interval must be positive")
        if not 0 < self.raise_below < self.aim <= 1:
            raise ValueError(
                f"slo shares must satisfy 0 < raise_below < aim <= 1, got "
                f"{self.raise_below} and {self.aim}"
            )
        if not 0 <= self.plan_margin < 1:
            raise ValueError(f"slo plan_margin must be in [0, 1), got {self.plan_margin}")
        if self.min_samples < 1:
            raise ValueError(f"slo min_samples must be >= 1, got {self.min_samples}")
        if not 0 <= self.few_refused < 1:
            raise ValueError(f"slo few_refused must be in [0, 1), got {self.few_refused}")
        if not 0 < self.cut_alpha < 1:
            raise ValueError(f"slo cut_alpha must be in (0, 1), got {self.cut_alpha}")


@dataclass(frozen=True, slots=True)
class SloDecision:
    """The knobs after one update, and what it saw."""

    live_limit: int
    max_steps_per_plan: int
    p99_s: float
    """The rolling p99 it judged by (completions and late live requests); NaN with no data."""
    samples: int
    """How many latencies that p99 is over."""
    changes: tuple[str, ...] = ()
    """What changed and why, one line per knob, for the log; empty when nothing did."""


class SloController:
    """Admission limit and plan length, from measured latencies (see the module docstring).

    The owner calls ``admitted`` / ``rejected`` / ``finished`` as requests come and go,
    and ``update`` every ``interval_s``; it applies the returned knobs itself.
    """

    def __init__(
        self, config: SloConfig, *, live_limit: int, max_steps_per_plan: int, now: float = 0.0
    ) -> None:
        if live_limit < 1 or max_steps_per_plan < 1:
            raise ValueError("live_limit and max_steps_per_plan must be >= 1")
        self.config = config
        self.max_live_limit = live_limit
        """The configured limit: the controller never admits more."""
        self.max_steps_cap = max_steps_per_plan
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget every latency and count, and go back to the configured limits (the
        server's load changed in a way its past says nothing about: a warm-up burst)."""
        self.live_limit = self.max_live_limit
        self.max_steps_per_plan = self.max_steps_cap
        self.p99_s = math.nan
        self.num_finished = 0
        self.num_over = 0
        """Completed requests whose latency was over the target."""
        self.num_rejected = 0
        self.num_changes = 0
        self.out_of_reach = ""
        """Why the p99 is over the aim but cutting admission would not help; empty when it
        would (or the p99 is under the aim)."""
        self._done: deque[tuple[float, float, int]] = deque()
        """(arrival, latency, longest run) of completions, oldest first (run 0: not told)."""
        self._changed_at = -math.inf
        self._last_update = now
        self._started = now
        self._peak_live = 0
        self._rejected_since = 0
        self._live_history: deque[tuple[float, int]] = deque()
        """(time, live count) at each update over the last ``_RATE_SPAN_S``."""
        self._bound = False
        """Whether the limit held a request back (or was reached) since it was set."""
        self._admitted_since = 0
        self._arrivals: deque[tuple[float, int, int]] = deque()
        """(time, admitted, refused) between updates over the last ``_RATE_SPAN_S``."""

    # ---- what happened -----------------------------------------------------------

    def admitted(self, live: int) -> None:
        """A request was admitted; ``live`` requests are now on its device."""
        self._admitted_since += 1
        if live > self._peak_live:
            self._peak_live = live
        if live >= self.live_limit:
            self._bound = True

    def rejected(self) -> None:
        """A request was refused by the limit."""
        self.num_rejected += 1
        self._rejected_since += 1
        self._bound = True

    def finished(self, arrival: float, now: float, run: int = 0) -> None:
        """A request admitted at ``arrival`` completed at ``now``. ``run``: the most steps
        one plan could have run of it (``RequestGraph.longest_run``), which sizes the plan
        length; 0 when the owner does not say (the plan length is then left alone)."""
        latency = now - arrival
        self._done.append((arrival, latency, run))
        self.num_finished += 1
        if latency > self.config.p99_s:
            self.num_over += 1

    # ---- deciding ---------------------------------------------------------------

    def due(self, now: float) -> bool:
        return now - self._last_update >= self.config.interval_s

    def update(
        self,
        now: float,
        *,
        live_arrivals: Iterable[float] = (),
        live: int | None = None,
        plan_cost: Callable[[int], float | None] | None = None,
        step_cost: Callable[[int], float | None] | None = None,
    ) -> SloDecision:
        """Decide the knobs at ``now``.

        ``live_arrivals``: admission times of the requests still live (the late ones count
        as samples at their age). ``live``: how many are live now (by default, as many as
        ``live_arrivals``). ``plan_cost(k)``: the measured seconds of a k-step plan at the
        batch now running, or ``None`` when not known yet. ``step_cost(n)``: the measured
        seconds a request's step takes with ``n`` live (``Scheduler.step_seconds``).
        """
        cfg = self.config
        target = cfg.p99_s
        arrivals = list(live_arrivals)
        peak = max(self._peak_live, len(arrivals) if live is None else live)
        done = self._done
        while done and done[0][0] < now - cfg.window_s:
            done.popleft()
        since = max(self._changed_at, now - cfg.window_s)
        samples = [lat for arr, lat, _ in done if arr >= since]
        late = [now - a for a in arrivals if a >= since and now - a > cfg.aim * target]
        samples += late
        p99 = float(np.percentile(samples, 99)) if samples else math.nan
        self.p99_s = p99
        changes: list[str] = []
        trusted = len(samples) >= cfg.min_samples or any(a > target for a in late)
        limit = self.live_limit
        # Little's law looks ahead: the mean live count over the last seconds, over the
        # completions per second in them, is the mean latency of the requests being
        # served now, and their p99 that times the p99's share of the mean. After a step
        # up in load the live count says so within a second or two; the measured p99
        # only once the requests admitted into the crowd complete.
        n_live = len(arrivals) if live is None else live
        history = self._live_history
        history.append((now, n_live))
        while history[0][0] < now - _RATE_SPAN_S:
            history.popleft()
        sampled_live = sum(n for _, n in history) / len(history)
        rate, recent_mean, recent, busy = self._recent(now, arrivals)
        # The time-weighted live count, from every request's own times, when they were
        # given: sampled four times a second, the count swings with each plan's
        # completions, and at a steady load one update in ten read a crowd of 1.28 or more
        # (a 20 s run at half of capacity on this project's CPU).
        mean_live = busy if arrivals or not n_live else sampled_live
        signal, at = p99, -1
        if trusted and recent >= cfg.min_samples and recent_mean > 0:
            # Only a crowd well past Little's count of what completed counts (the same
            # seconds' completions, their rate and mean latency), and only with enough of
            # them to count by: at a steady load the two agree, and a few completions are
            # too few to read smaller differences from (the p99's share of the mean
            # multiplies the noise).
            crowd = mean_live / (rate * recent_mean)
            if crowd > _CROWD:
                signal, at = p99 * crowd, max(1, round(sampled_live))
        mean = float(np.mean(samples)) if samples else 0.0
        # The live count the samples were served at: the crowd's, or Little's.
        served = at if at >= 0 else max(1, round(min(float(peak), rate * mean)))
        aim = cfg.aim * target
        # Few refused over the last seconds (bursts of a load that mostly fits) against
        # many (a load past what the limit holds, which pins the live count at it). Ahead
        # (a crowd), and where the limit holds back an overload, admission is what holds
        # the load, and it steers the p99 to the aim: the requests a crowd will make late
        # are admitted already. Elsewhere the offered load is what it is, and a cut would
        # start refusing it: only a share at or over the target that a p99 held there
        # would rarely show (``cut_alpha``) cuts. A p99 between the aim and the target
        # breaks no promise, and over a few dozen latencies it is their largest, which
        # noise alone puts over the aim.
        arrivals_ = self._arrivals
        arrivals_.append((now, self._admitted_since, self._rejected_since))
        while arrivals_[0][0] < now - _RATE_SPAN_S:
            arrivals_.popleft()
        refused = sum(r for _, _, r in arrivals_)
        offered = refused + sum(a for _, a, _ in arrivals_)
        few = refused <= cfg.few_refused * offered
        binds = self._bound or peak >= limit
        if at >= 0 or (not few and binds):
            cut = signal > aim
        else:
            at_risk = sum(1 for x in samples if x >= target)
            cut = at_risk >= _over_share(len(samples), cfg.cut_alpha)
        if trusted and cut:
            base = max(1, min(limit, peak))
            new, why, futile = self._cut(
                base, signal, p99, mean, rate, served, at >= 0, step_cost, bursts=few
            )
            if new < limit:
                seen = f"p99 {1e3 * p99:.0f} ms" + (
                    f", {1e3 * signal:.0f} ms ahead with {at} live at {rate:.0f}/s"
                    if at >= 0
                    else ""
                )
                changes.append(
                    f"live limit {limit} -> {new}: {seen}, over the aim {1e3 * aim:.0f} ms "
                    f"({len(samples)} samples, {peak} live; {why})"
                )
                limit = new
            if futile and not self.out_of_reach:
                changes.append(f"live limit kept at {limit}: p99 {1e3 * p99:.0f} ms, {why}")
            self.out_of_reach = why if futile else ""
        else:
            self.out_of_reach = ""
        # A limit's p99 is known once its longest requests could have completed: until
        # then its samples lean to the short ones.
        settle = min(target, float(np.percentile([d[1] for d in done], 99)) if done else target)
        # A limit that refused few may be raised boldly, and from anywhere under the aim;
        # one that refused many only by a tenth, from well under it.
        if (
            trusted
            and now - self._changed_at >= settle
            and limit < self.max_live_limit
            and binds
            and (signal < cfg.raise_below * target or (few and at < 0 and signal < aim))
        ):
            bold = few and signal < cfg.raise_below * target
            new = self._raise(limit, p99, served, step_cost if bold else None)
            share = refused / max(1, offered)
            changes.append(
                f"live limit {limit} -> {new}: p99 {1e3 * p99:.0f} ms under "
                f"{1e3 * (cfg.raise_below * target if not few else aim):.0f} ms and the "
                f"limit binds ({self._rejected_since} rejected since the last update, "
                f"{100 * share:.1f}% over the last {_RATE_SPAN_S:.0f} s)"
            )
            limit = new
        if limit != self.live_limit:
            self.live_limit = limit
            self._changed_at = now
            self._bound = False
        plan = self._plan_length(plan_cost, [run for _, _, run in done if run > 0])
        if plan is not None:
            steps, why = plan
            changes.append(f"steps per plan {self.max_steps_per_plan} -> {steps}: {why}")
            self.max_steps_per_plan = steps
        self.num_changes += len(changes)
        self._last_update = now
        self._peak_live = live if live is not None else len(arrivals)
        self._rejected_since = self._admitted_since = 0
        return SloDecision(limit, self.max_steps_per_plan, p99, len(samples), tuple(changes))

    def _cut(
        self,
        base: int,
        signal: float,
        p99: float,
        mean: float,
        rate: float,
        served: int,
        crowd: bool,
        step_cost: Callable[[int], float | None] | None,
        *,
        bursts: bool = True,
    ) -> tuple[int, str, bool]:
        """The live limit that brings ``signal`` (the p99 now or ahead) to the aim, cutting
        from ``base`` (the live count); how it was chosen; whether cutting is futile.
        ``bursts``: whether the live count varies under the limit (``_fit``), or the limit
        refused many and pins it there."""
        aim = self.config.aim * self.config.p99_s
        # Little's live count at the aim: the completion rate times the latency the aim
        # allows at the p99's measured share of the mean.
        little = rate * aim * mean / p99 if p99 > 0 else 0.0
        if crowd:
            # The device is saturated, its completion rate is what it serves, and latency
            # grows with the live count (Little's law: mean latency = live / rate), not with
            # the step time. At most to a quarter at once: the rate is a few seconds'.
            new = max(0.25 * base, min(0.9 * base, little))
            return max(1, math.floor(new)), f"by Little's law, {rate:.0f}/s completing", False
        fit = self._fit(signal, served, base, step_cost=step_cost, bursts=bursts)
        if fit is None:
            # No costs yet: by the p99's ratio to the aim, or to Little's count if lower;
            # at most by half.
            factor = min(0.9, max(0.5, aim / signal))
            new = max(0.5 * base, min(base * factor, little))
            return max(1, math.floor(new)), "by the p99's ratio and Little's law", False
        if fit == 0:
            return (
                self.live_limit,
                "out of reach by admission: steps alone, at one live request, would take "
                "the p99 over the aim",
                True,
            )
        return max(fit, math.ceil(0.5 * base)), f"by step costs, from {served} live", False

    def _raise(
        self, limit: int, p99: float, served: int, step_cost: Callable[[int], float | None] | None
    ) -> int:
        """A binding limit with room under the target: a tenth more; up to a half more
        where the step costs predict the aim still holds, so that a limit cut in a burst
        recovers in a few steps. (Not more: the costs do not see a crowd's queueing
        between cell types, and a limit that overshoots admits requests that will be
        late.)"""
        new = limit + max(1, math.ceil(0.1 * limit))
        fit = self._fit(p99, served, 2 * limit, step_cost=step_cost)
        if fit:
            new = max(new, min(math.floor(1.5 * limit), fit))
        return min(self.max_live_limit, new)

    def _fit(
        self,
        p99: float,
        served: int,
        upto: int,
        *,
        step_cost: Callable[[int], float | None] | None,
        bursts: bool = True,
    ) -> int | None:
        """The largest live limit, up to ``upto``, predicted to hold the p99 at the aim,
        given ``p99`` measured with ``served`` live; 0 when not even one live request
        would; ``None`` without step costs.

        A request's latency is its steps times the step time, which the measured costs
        give at each live count (``Scheduler.step_seconds``: the batch it makes, and the
        rounds of waiting for a seat beyond the max batch), so the p99 scales with it.
        The fit is a mean live count, which at a steady load varies around its mean
        (about Poisson: two standard deviations cover the bursts), so the limit is the
        fit plus that, or it would refuse every burst; unless ``bursts`` is false: a limit
        that refuses many requests holds the live count at itself. Where even one live
        request is predicted over the aim, the latency is the requests' own length, not the load:
        cutting would refuse requests for nothing (and, the completion rate falling with
        each cut, cut again). (A crowd is Little's law's, not this.)
        """
        if step_cost is None:
            return None
        at_cost = step_cost(served)
        if at_cost is None or not at_cost > 0:
            return None
        aim = self.config.aim * self.config.p99_s

        def fits(n: int) -> bool:
            cost = step_cost(n)
            return cost is not None and p99 * cost / at_cost <= aim

        if not fits(1):
            return 0
        lo, hi = 1, max(1, upto)  # fits(lo); the largest n that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo + math.ceil(2 * math.sqrt(lo)) if bursts else lo

    def _recent(self, now: float, live_arrivals: list[float]) -> tuple[float, float, int, float]:
        """Completions per second over the last ``_RATE_SPAN_S`` seconds (or since the
        start, if that is shorter: a rate over time not yet served would read low), their
        mean latency, how many, and the mean live count over the same seconds: the time
        each request, completed or still live (``live_arrivals``), spent live in them."""
        span = min(_RATE_SPAN_S, now - self._started)
        if span < 0.5 * _RATE_SPAN_S:
            return 0.0, 0.0, 0, 0.0
        start = now - span
        n, total, busy = 0, 0.0, 0.0
        for arrival, latency, _ in reversed(self._done):  # newest completion first
            end = arrival + latency
            if end < start:
                break
            n += 1
            total += latency
            busy += end - max(arrival, start)
        busy += sum(now - max(a, start) for a in live_arrivals)
        return n / span, total / n if n else 0.0, n, busy / span

    def _plan_length(
        self, plan_cost: Callable[[int], float | None] | None, runs: list[int]
    ) -> tuple[int, str] | None:
        """A new cap on the plan length and why, or ``None`` to keep it: the length (a power
        of two, or the p99 run) that minimises the predicted latency of a request of the
        p99 of ``runs`` steps, ``C(K) * (1 + ceil(S / K))`` (the module docstring), when
        that beats the current length's by ``plan_margin``. Kept while the current
        length's cost is not measured or no completed request said its run; a length
        whose cost is not measured is not a candidate."""
        if plan_cost is None or not runs:
            return None
        longest = min(self.max_steps_cap, max(1, math.ceil(float(np.percentile(runs, 99)))))
        current = min(self.max_steps_per_plan, longest)

        def predicted(k: int) -> float | None:
            cost = plan_cost(k)
            return None if cost is None else cost * (1 + math.ceil(longest / k))

        now_s = predicted(current)
        if now_s is None:
            return None
        best, best_s = current, now_s
        lengths = [1 << i for i in range(longest.bit_length()) if 1 << i < longest]
        for k in [*lengths, longest]:
            k_s = predicted(k)
            if k_s is not None and k_s < best_s:
                best, best_s = k, k_s
        if best == current or best_s > (1 - self.config.plan_margin) * now_s:
            return None
        return best, (
            f"a request of {longest} steps (the p99 of the runs) predicted "
            f"{1e3 * best_s:.0f} ms, against {1e3 * now_s:.0f} ms at {current} steps"
        )
