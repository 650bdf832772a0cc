"""Prometheus metrics: what operators scrape, on a port of its own.

Names and labels follow Triton's and vLLM's conventions, so their dashboards and
alerts carry over by renaming the prefix (``docs/metrics.md`` has the mapping):
``model`` and ``version`` label per-request metrics, as Triton's do, and ``protocol``
the front door (``v1``, ``v2-grpc``, ``v2-http``); latencies
are histograms in seconds, as vLLM's are; counters end in ``_total``.

Two kinds of source, two paths, so serving pays as little as possible:

- *per request* (success/failure counts, end-to-end latency, time to first output,
  queue time): observed on the event loop by the gRPC service when a call ends,
  one histogram update per request, never per step;
- *per device* (cell executions, batch sizes, busy time, live and waiting requests,
  ready-queue depth, free slots): read at scrape time, on the HTTP server's thread,
  from counts the device worker and its scheduler keep as plain ints anyway. The
  step loop never calls into this module and never waits for a scrape.

Each server has its own registry, so several servers (tests) can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from batchmaker.runtime.worker import BATCH_SIZE_BUCKETS, STEPS_PER_PLAN_BUCKETS
from scheduler import SloController

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from batchmaker.runtime.engine import Engine

# ``*_created`` series double every counter and histogram for a timestamp no dashboard
# uses (vLLM turns them off too). Process-wide: prometheus_client has no per-registry switch.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "batchmaker_"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Seconds. Finer than vLLM's at the low end: a recurrent model's request takes
milliseconds, not an LLM's seconds."""

UNKNOWN_MODEL = ""
"""The ``model`` label of a request for a model the server does not serve: the name a
client sent must not become a label, or any client could grow the series without bound."""


_BUCKET_LABELS = (*map(str, BATCH_SIZE_BUCKETS), "+Inf")
_PLAN_BUCKET_LABELS = (*map(str, STEPS_PER_PLAN_BUCKETS), "+Inf")


def split_qualified(name: str) -> tuple[str, str, str]:
    """``model@version/local`` (the engine's name of a cell type or pool) -> its three parts."""
    key, _, local = name.rpartition("/")
    model, _, version = key.rpartition("@")
    return model, version, local


@dataclass(slots=True)
class RequestObservation:
    """One inference call, as the service sees it; recorded once, when the call ends."""

    start: float
    request_id: str = ""
    protocol: str = "v1"
    """The front door: ``v1`` (batchmaker.v1), ``v2-grpc`` or ``v2-http`` (KServe v2)."""
    model: str = UNKNOWN_MODEL
    version: str = ""
    status: str | None = None
    """The gRPC status code's name when the call failed, set where the error is mapped."""
    first_output: float | None = None
    queue_time: float | None = None
    num_steps: int = 0
    end: float | None = None
    """When the call was recorded (monotonic); set once, so it is recorded only once."""


class ServerMetrics:
    """The server's metrics registry: request metrics plus the engine's, read on scrape."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version", "protocol")
        self.success = Counter(
            PREFIX + "request_success",
            "Inference calls that finished without error (Triton: nv_inference_request_success).",
            labels,
            registry=self.registry,
        )
        self.failure = Counter(
            PREFIX + "request_failure",
            "Inference calls that ended with an error, by gRPC status code: RESOURCE_EXHAUSTED "
            "is a rejection at admission, CANCELLED a client that went away "
            "(Triton: nv_inference_request_failure).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.latency = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Successful calls, from arrival to the last output "
            "(vLLM: e2e_request_latency_seconds).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_output = Histogram(
            PREFIX + "time_to_first_output_seconds",
            "From a call's arrival to its first output step (vLLM: time_to_first_token_seconds; "
            "Triton: nv_inference_first_response_histogram_ms).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            PREFIX + "request_queue_time_seconds",
            "From admission to the first cell execution that includes the request "
            "(vLLM: request_queue_time_seconds; Triton: nv_inference_queue_duration_us).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))
        self._http: WSGIServer | None = None

    # ---- per request, on the event loop -----------------------------------------------

    def refused(self, status: str, protocol: str = "v1") -> None:
        """A call refused before any handler ran (authentication): no model is known."""
        self.failure.labels(UNKNOWN_MODEL, "", protocol, status).inc()

    def record(self, obs: RequestObservation, end: float) -> None:
        """Count one finished call and observe its latencies (``end``: monotonic time)."""
        labels = (obs.model, obs.version, obs.protocol)
        if obs.status is not None:
            self.failure.labels(*labels, obs.status).inc()
        else:
            self.success.labels(*labels).inc()
            self.latency.labels(*labels).observe(end - obs.start)
        if obs.first_output is not None:
            self.first_output.labels(*labels).observe(obs.first_output - obs.start)
        if obs.queue_time is not None:
            self.queue_time.labels(*labels).observe(obs.queue_time)

    # ---- the HTTP endpoint --------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Expose ``/metrics`` on ``host:port`` (0 picks a free port); returns the port."""
        self._http, _ = prometheus_client.start_http_server(
            port, addr=host.strip("[]"), registry=self.registry
        )
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class EngineCollector(Collector):
    """The engine's per-device state, read when Prometheus scrapes (on its thread)."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        engine = self._engine()
        dev, cell = ["device"], ["device", "model", "version", "cell_type"]
        pool = ["device", "model", "version", "pool"]
        info = GaugeMetricFamily(
            PREFIX + "server_info", "Always 1; the labels describe the server.", labels=["mode"]
        )
        executions = CounterMetricFamily(
            PREFIX + "cell_executions",
            "Batched cell executions (plans of one or several steps) per cell type "
            "(Triton: nv_inference_exec_count).",
            labels=cell,
        )
        timesteps = CounterMetricFamily(
            PREFIX + "cell_timesteps",
            "Timesteps the batched cell executions ran (a plan of K steps counts K): "
            "cell_steps over this is the mean batch per step.",
            labels=cell,
        )
        steps_per_plan = HistogramMetricFamily(
            PREFIX + "cell_steps_per_plan",
            "Timesteps per cell execution: several when a plan runs a fused multi-step "
            "batch (vLLM: multi-step scheduling).",
            labels=cell,
        )
        steps = CounterMetricFamily(
            PREFIX + "cell_steps",
            "Cell-steps of requested work: rows of executed batches, padding excluded "
            "(Triton: nv_inference_count).",
            labels=cell,
        )
        padding = CounterMetricFamily(
            PREFIX + "cell_padding_steps",
            "Padding rows executed (request-level batching modes only).",
            labels=cell,
        )
        batch_size = HistogramMetricFamily(
            PREFIX + "cell_batch_size",
            "Real rows per cell execution (vLLM: iteration_tokens_total).",
            labels=cell,
        )
        busy = CounterMetricFamily(
            PREFIX + "executor_busy_seconds",
            "Seconds the device's executor spent running steps; its rate is utilisation.",
            labels=dev,
        )
        failed_steps = CounterMetricFamily(
            PREFIX + "executor_failed_steps",
            "Cell executions that raised (their requests ended with INTERNAL).",
            labels=dev,
        )
        running = GaugeMetricFamily(
            PREFIX + "num_requests_running",
            "Admitted requests with at least one cell executed, not finished "
            "(vLLM: num_requests_running).",
            labels=dev,
        )
        waiting = GaugeMetricFamily(
            PREFIX + "num_requests_waiting",
            "Admitted requests none of whose cells has run yet "
            "(vLLM: num_requests_waiting; Triton: nv_inference_pending_request_count).",
            labels=dev,
        )
        depth = GaugeMetricFamily(
            PREFIX + "ready_queue_depth",
            "Ready cell nodes waiting for a batch, per cell type.",
            labels=cell,
        )
        limit = GaugeMetricFamily(
            PREFIX + "admission_limit",
            "Live requests a device admits before RESOURCE_EXHAUSTED: --max-live, or what "
            "the SLO controller set.",
            labels=dev,
        )
        headroom = GaugeMetricFamily(
            PREFIX + "admission_headroom",
            "Requests a device would still admit now (admission_limit minus live requests): "
            "what an autoscaler scales on, e.g. add a replica when the sum nears zero.",
            labels=dev,
        )
        free = GaugeMetricFamily(
            PREFIX + "free_slots",
            "Free state slots per pool (a live request holds one; a tree, one per leaf).",
            labels=pool,
        )
        capacity = GaugeMetricFamily(
            PREFIX + "slots_capacity", "State slots per pool, free or not.", labels=pool
        )
        families: list[Metric] = [info, executions, timesteps, steps_per_plan, steps, padding]
        families += [batch_size, busy]
        families += [failed_steps, running, waiting, limit, headroom, depth, free, capacity]
        if engine is None:
            yield from families
            return
        info.add_metric([engine.config.mode], 1)
        for worker in engine.workers:
            d = worker.device
            stats = worker.stats
            busy.add_metric([d], stats.busy_seconds)
            failed_steps.add_metric([d], stats.num_failed_steps)
            for name, cts in list(stats.per_cell_type.items()):
                labels = [d, *split_qualified(name)]
                executions.add_metric(labels, cts.num_plans)
                timesteps.add_metric(labels, cts.num_steps)
                steps.add_metric(labels, cts.num_rows)
                padding.add_metric(labels, cts.num_padding_rows)
                batch_size.add_metric(
                    labels,
                    _cumulative(_BUCKET_LABELS, cts.batch_size_counts),
                    sum_value=cts.num_batch_rows,
                )
                steps_per_plan.add_metric(
                    labels,
                    _cumulative(_PLAN_BUCKET_LABELS, cts.steps_per_plan_counts),
                    sum_value=cts.num_steps,
                )
            snap = worker.snapshot()
            running.add_metric([d], snap.num_live - snap.num_queued)
            waiting.add_metric([d], snap.num_queued)
            admits = engine.live_limit
            limit.add_metric([d], admits)
            headroom.add_metric([d], max(0, admits - snap.num_live))
            for name, n in snap.queue_depths.items():
                depth.add_metric([d, *split_qualified(name)], n)
            for name, n in snap.free_slots.items():
                free.add_metric([d, *split_qualified(name)], n)
            for name, n in snap.slot_capacity.items():
                capacity.add_metric([d, *split_qualified(name)], n)
        yield from families
        if engine is not None and engine.slo is not None:
            yield from _slo_families(engine.slo)


def _slo_families(slo: SloController) -> list[Metric]:
    """The SLO controller's target, what it measures and what it decided (only when the
    server runs with ``--slo-p99-ms``)."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    table: list[tuple[Callable[..., Metric], str, str, float]] = [
        (gauge, "slo_target_seconds", "The p99 latency target.", slo.config.p99_s),
        (
            gauge,
            "slo_p99_seconds",
            "The rolling p99 latency the controller last judged by (completed requests "
            "admitted under the current limits, and live ones already past the aim).",
            slo.p99_s,
        ),
        (
            gauge,
            "slo_live_limit",
            "Admission limit per device the controller set (live requests; beyond it, "
            "RESOURCE_EXHAUSTED).",
            slo.live_limit,
        ),
        (
            gauge,
            "slo_max_steps_per_plan",
            "Most steps per plan the controller allows (a plan may take a tenth of the target).",
            slo.max_steps_per_plan,
        ),
        (counter, "slo_completed", "Requests completed under the controller.", slo.num_finished),
        (
            counter,
            "slo_over",
            "Completed requests whose latency was over the target; over slo_completed, the "
            "fraction that missed it.",
            slo.num_over,
        ),
        (
            counter,
            "slo_rejected",
            "Requests refused at admission (RESOURCE_EXHAUSTED) while the controller ran.",
            slo.num_rejected,
        ),
        (
            counter,
            "slo_changes",
            "Changes the controller made to its knobs (each is logged with its reason).",
            slo.num_changes,
        ),
    ]
    return [kind(PREFIX + name, doc, value=value) for kind, name, doc, value in table]


def _cumulative(bounds: tuple[str, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative ``(le, count)`` pairs."""
    cumulative, buckets = 0, []
    for bound, count in zip(bounds, list(counts), strict=True):
        cumulative += count
        buckets.append((bound, float(cumulative)))
    return buckets
