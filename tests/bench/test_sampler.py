"""Reading a server's metrics as the end-to-end benchmark does: the Prometheus text of
the families it needs (as ``batchmaker.server.metrics`` exposes them), summed over devices,
and turned into batch sizes and time series; then over real HTTP."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchmaker.bench.sampler import (
    MetricsSample,
    MetricsSampler,
    mean_batch,
    parse_metrics,
    series,
    totals,
)

CELL = ["device", "model", "version", "cell_type"]


class FakeServer(Collector):
    """Two devices running ``step`` cells; ``advance`` runs more batches on each."""

    def __init__(self) -> None:
        self.executions = 0
        self.rows = 0
        self.padding = 0

    def advance(self, executions: int, rows: int, padding: int = 0) -> None:
        self.executions += executions
        self.rows += rows
        self.padding += padding

    def collect(self) -> Iterable[Metric]:
        fams = {
            "cell_executions": (CounterMetricFamily, self.executions),
            "cell_steps": (CounterMetricFamily, self.rows),
            "cell_padding_steps": (CounterMetricFamily, self.padding),
            "ready_queue_depth": (GaugeMetricFamily, 3),
        }
        for name, (kind, value) in fams.items():
            fam = kind(f"batchmaker_{name}", name, labels=CELL)
            for dev in ("cpu", "cuda:0"):
                fam.add_metric([dev, "lstm-512", "1", "step"], value)
            yield fam
        for name, value in (("num_requests_waiting", 2), ("num_requests_running", 5)):
            fam = GaugeMetricFamily(f"batchmaker_{name}", name, labels=["device"])
            fam.add_metric(["cpu"], value)
            yield fam
        other = CounterMetricFamily("other_cell_steps", "not ours", labels=["cell_type"])
        other.add_metric(["step"], 1e6)
        yield other


@pytest.fixture
def server() -> tuple[FakeServer, CollectorRegistry]:
    registry = CollectorRegistry()
    fake = FakeServer()
    registry.register(fake)
    return fake, registry


def text(registry: CollectorRegistry) -> str:
    return prometheus_client.generate_latest(registry).decode()


def test_parse_sums_devices_and_keeps_cell_types(
    server: tuple[FakeServer, CollectorRegistry],
) -> None:
    fake, registry = server
    fake.advance(10, 150, 40)
    s = parse_metrics(text(registry), t=7.0)
    assert s.t == 7.0
    assert s.executions == {"step": 20.0}  # two devices
    assert s.steps == {"step": 300.0}
    assert s.padding_steps == {"step": 80.0}
    assert (s.ready_queue_depth, s.requests_waiting, s.requests_running) == (6.0, 2.0, 5.0)


def test_batch_sizes_between_samples(server: tuple[FakeServer, CollectorRegistry]) -> None:
    fake, registry = server
    a = parse_metrics(text(registry), t=0.0)
    fake.advance(4, 100, 28)
    b = parse_metrics(text(registry), t=0.5)
    assert totals(a, b) == (8.0, 200.0, 56.0)
    assert mean_batch(a, b) == {"step": 25.0}
    assert mean_batch(a, b, padded=True) == {"step": 32.0}
    assert mean_batch(b, b) == {}  # nothing ran: no batch size rather than 0/0


def test_series_has_one_row_per_interval() -> None:
    samples = [
        MetricsSample(t=10.0, executions={"step": 0}, steps={"step": 0}),
        MetricsSample(t=10.1, executions={"step": 5}, steps={"step": 40}, requests_waiting=3),
        MetricsSample(t=10.2, executions={"step": 5}, steps={"step": 40}),
    ]
    rows = series(samples, t0=10.0)
    assert len(rows) == 2
    assert rows[0]["t_s"] == pytest.approx(0.1)
    assert rows[0]["mean_batch"] == 8.0
    assert rows[0]["executions_per_s"] == pytest.approx(50.0)
    assert rows[0]["requests_waiting"] == 3
    assert math.isnan(rows[1]["mean_batch"])


@pytest.fixture
def endpoint(server: tuple[FakeServer, CollectorRegistry]) -> Iterator[tuple[FakeServer, str]]:
    fake, registry = server
    http, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield fake, f"http://127.0.0.1:{http.server_port}/metrics"
    finally:
        http.shutdown()
        http.server_close()
        thread.join()


def test_sampler_brackets_a_run_over_http(endpoint: tuple[FakeServer, str]) -> None:
    fake, url = endpoint
    sampler = MetricsSampler(url, interval_s=None)  # start and stop only: no thread
    sampler.start()
    fake.advance(3, 30)
    samples = sampler.stop()
    assert len(samples) == 2
    assert mean_batch(samples[0], samples[-1]) == {"step": 10.0}


def test_sampler_samples_on_its_thread(endpoint: tuple[FakeServer, str]) -> None:
    _, url = endpoint
    sampler = MetricsSampler(url, interval_s=0.01)
    sampler.start()
    while len(sampler.samples) < 4:  # the thread appends; poll for it, however slow
        time.sleep(0.005)
    samples = sampler.stop()
    assert len(samples) >= 5
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    assert sampler.num_errors == 0
