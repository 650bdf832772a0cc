"""A running server's Prometheus metrics, sampled over time from the client's side.

The benchmark's view of what a server in another process did during a run: how full
its batches were (cell-steps over cell executions, per interval and per run) and how
much work waited (ready nodes, requests admitted but not started, requests running).
It reads ``/metrics`` over HTTP, as Prometheus would, so it measures the real server
and needs nothing from it but the endpoint.

Scrapes run on a thread of their own: the replay's event loop never waits for one.
Nothing here imports torch or gRPC.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "batchmaker_"

_COUNTERS = {
    "cell_executions": "executions",
    "cell_steps": "steps",
    "cell_padding_steps": "padding_steps",
}
"""Counter family (as the parser names it, without ``_total``) -> ``MetricsSample`` field."""

_GAUGES = {
    "ready_queue_depth": "ready_queue_depth",
    "num_requests_waiting": "requests_waiting",
    "num_requests_running": "requests_running",
}


@dataclass(frozen=True)
class MetricsSample:
    """One scrape: counters per local cell type (summed over devices and models), gauges
    summed over everything."""

    t: float
    """``time.monotonic()`` when the scrape's answer was read."""
    executions: dict[str, float] = field(default_factory=dict)
    """Cell executions (batches run) so far, per local cell type (``step``, ``decoder``)."""
    steps: dict[str, float] = field(default_factory=dict)
    """Cell-steps of real work so far (rows of those batches, padding excluded)."""
    padding_steps: dict[str, float] = field(default_factory=dict)
    """Padding rows run so far (request-level batching modes)."""
    ready_queue_depth: float = 0.0
    """Ready cell nodes waiting for a batch, now."""
    requests_waiting: float = 0.0
    """Admitted requests none of whose cells has run yet, now."""
    requests_running: float = 0.0
    """Admitted requests that have started and not finished, now."""


def parse_metrics(text: str, t: float) -> MetricsSample:
    """The sample in a Prometheus text exposition read at time ``t``."""
    counters: dict[str, dict[str, float]] = {f: {} for f in _COUNTERS.values()}
    gauges = dict.fromkeys(_GAUGES.values(), 0.0)
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix(PREFIX)
        if not family.name.startswith(PREFIX):
            continue
        if name in _COUNTERS:
            per_cell = counters[_COUNTERS[name]]
            for s in family.samples:
                if s.name.endswith("_total"):  # not ``_created``
                    cell = s.labels.get("cell_type", "")
                    per_cell[cell] = per_cell.get(cell, 0.0) + s.value
        elif name in _GAUGES:
            gauges[_GAUGES[name]] += sum(s.value for s in family.samples)
    return MetricsSample(
        t=t,
        executions=counters["executions"],
        steps=counters["steps"],
        padding_steps=counters["padding_steps"],
        ready_queue_depth=gauges["ready_queue_depth"],
        requests_waiting=gauges["requests_waiting"],
        requests_running=gauges["requests_running"],
    )


def scrape(url: str, *, timeout: float = 5.0) -> MetricsSample:
    """One HTTP GET of ``url``, parsed."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    return parse_metrics(text, time.monotonic())


def mean_batch(a: MetricsSample, b: MetricsSample, *, padded: bool = False) -> dict[str, float]:
    """Rows per cell execution between two samples, per cell type that ran meanwhile;
    ``padded``: counting padding rows too."""
    out = {}
    for cell, n in b.executions.items():
        runs = n - a.executions.get(cell, 0.0)
        if runs > 0:
            rows = b.steps.get(cell, 0.0) - a.steps.get(cell, 0.0)
            if padded:
                rows += b.padding_steps.get(cell, 0.0) - a.padding_steps.get(cell, 0.0)
            out[cell] = rows / runs
    return out


def totals(a: MetricsSample, b: MetricsSample) -> tuple[float, float, float]:
    """Executions, real rows and padding rows between two samples, over every cell type."""

    def delta(name: str) -> float:
        before, after = getattr(a, name), getattr(b, name)
        return float(sum(v - before.get(c, 0.0) for c, v in after.items()))

    return delta("executions"), delta("steps"), delta("padding_steps")


def series(samples: Sequence[MetricsSample], t0: float) -> list[dict[str, float]]:
    """One row per interval between consecutive samples, timed at its end from ``t0``:
    the mean batch in it (NaN when nothing ran), executions per second, and the gauges
    read at its end."""
    rows = []
    for a, b in itertools.pairwise(samples):
        runs, real, padding = totals(a, b)
        dt = b.t - a.t
        rows.append(
            {
                "t_s": b.t - t0,
                "mean_batch": real / runs if runs > 0 else math.nan,
                "mean_padded_batch": (real + padding) / runs if runs > 0 else math.nan,
                "executions_per_s": runs / dt if dt > 0 else math.nan,
                "ready_queue_depth": b.ready_queue_depth,
                "requests_waiting": b.requests_waiting,
                "requests_running": b.requests_running,
            }
        )
    return rows


class MetricsSampler:
    """Scrapes ``url`` every ``interval_s`` on a thread, between ``start`` and ``stop``.

    The first scrape happens in ``start`` and the last in ``stop``, so ``samples`` always
    brackets the run: its first and last give the run's totals. ``interval_s=None``:
    those two only (no thread), for runs that need totals but no time series.
    """

    def __init__(self, url: str, *, interval_s: float | None = 0.1) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[MetricsSample] = []
        self.num_errors = 0
        """Scrapes that failed (an overloaded server may answer late); the run goes on."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = [scrape(self.url)]
        if self.interval_s is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[MetricsSample]:
        """Ends the thread, takes the last sample, and returns them all, oldest first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.samples.append(scrape(self.url))
        return self.samples

    def _run(self) -> None:
        # A periodic sampler, not a wait for a condition: wait() doubles as the stop signal.
        # Scrapes keep to a fixed schedule, so their own time does not stretch the period.
        assert self.interval_s is not None
        due = time.monotonic()
        while True:
            due += self.interval_s
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.samples.append(scrape(self.url))
            except OSError:
                self.num_errors += 1
