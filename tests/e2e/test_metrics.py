"""The Prometheus endpoint, scraped over HTTP while a real server serves over gRPC.

Each metric is checked against what the test can count independently: the calls it
made and how they ended, the steps the gated executor logged (rows per step, and
so the batch-size histogram), and the requests it holds in flight at a known step
boundary (running, waiting, ready-queue depth, free slots).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest
from harness import small_model
from live_server import LiveServer, e2e_config
from prometheus_client.parser import text_string_to_metric_families

from batchmaker.bench.launcher import ServerProcess
from batchmaker.config import ServerConfig
from batchmaker.errors import (
    AdmissionRejectedError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
)
from batchmaker.runtime.worker import BATCH_SIZE_BUCKETS
from batchmaker.server.metrics import RequestObservation, ServerMetrics

CALL_TIMEOUT_S = 10.0
FAILED = "batchmaker_request_failure_total"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly these labels; 0 when it is absent (a
    counter never incremented has no series)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def metrics_server(**kwargs: object) -> LiveServer:
    return LiveServer(server_config=ServerConfig(port=0, warmup=False, metrics_port=0), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with metrics_server() as server:
        yield server


def test_calls_are_counted_by_model_version_and_status(live: LiveServer) -> None:
    url = live.server.metrics_url
    assert url is not None
    before = scrape(url)
    client = live.client()
    for _ in range(3):
        steps = client.infer_stream("lstm", [1, 2, 3], timeout=CALL_TIMEOUT_S).collect().steps
        assert len(steps) == 3
    client.infer("lstm", [4, 5], version="1", timeout=CALL_TIMEOUT_S)
    with pytest.raises(ModelNotFoundError):
        client.infer("no-such-model", [1], timeout=CALL_TIMEOUT_S)
    with pytest.raises(InvalidRequestError):
        client.infer("gru", [10**9], timeout=CALL_TIMEOUT_S)
    live.wait_idle()
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = "batchmaker_request_success_total"
    assert delta(ok, model="lstm", version="2", protocol="v1") == 3  # the latest version
    assert delta(ok, model="lstm", version="1", protocol="v1") == 1
    failed = FAILED
    # An unknown name is not a label: clients must not be able to mint series.
    assert delta(failed, model="", version="", protocol="v1", reason="NOT_FOUND") == 1
    assert delta(failed, model="gru", version="", protocol="v1", reason="INVALID_ARGUMENT") == 1
    assert not any("no-such-model" in str(labels) for _, labels in after)
    for hist in (
        "batchmaker_e2e_request_latency_seconds",
        "batchmaker_time_to_first_output_seconds",
        "batchmaker_request_queue_time_seconds",
    ):
        assert delta(f"{hist}_count", model="lstm", version="2", protocol="v1") == 3, hist
        assert delta(f"{hist}_count", model="lstm", version="1", protocol="v1") == 1, hist
        assert delta(f"{hist}_sum", model="lstm", version="2", protocol="v1") > 0, hist
        inf = value(after, f"{hist}_bucket", model="lstm", version="2", protocol="v1", le="+Inf")
        assert inf == value(after, f"{hist}_count", model="lstm", version="2", protocol="v1"), hist
    # Failed calls have no latency: a fast rejection must not flatter the histogram.
    assert (
        value(
            after,
            "batchmaker_e2e_request_latency_seconds_count",
            model="gru",
            version="",
            protocol="v1",
        )
        == 0
    )
    assert value(after, "batchmaker_server_info", mode="cellular") == 1


def test_a_failed_call_is_counted_before_its_client_sees_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that scrapes right after its error must find it counted. Recording is made
    slow here, so that a server which sent the status first (as one did, and CI's
    dashboard check once scraped too early) fails every time rather than now and then."""
    record = ServerMetrics.record

    def slow_record(self: ServerMetrics, obs: RequestObservation, end: float) -> None:
        time.sleep(0.3)
        record(self, obs, end)

    monkeypatch.setattr(ServerMetrics, "record", slow_record)
    with metrics_server(models=[small_model("gru", name="g", seed=1)]) as live:
        url = live.server.metrics_url
        assert url is not None
        client = live.client()
        with pytest.raises(ModelNotFoundError):
            client.infer_stream("no-such-model", [1], timeout=CALL_TIMEOUT_S).collect()
        assert (
            value(scrape(url), FAILED, model="", version="", protocol="v1", reason="NOT_FOUND") == 1
        )
        with pytest.raises(InvalidRequestError):
            client.infer("g", [10**9], timeout=CALL_TIMEOUT_S)
        assert (
            value(
                scrape(url), FAILED, model="g", version="", protocol="v1", reason="INVALID_ARGUMENT"
            )
            == 1
        )


def test_gauges_show_requests_in_flight_and_every_slot_back_after() -> None:
    """Three requests, max batch 2, the gate closed: at the second step boundary two run
    and one waits (its first node queued); afterwards everything is back to idle."""
    model = small_model("lstm", name="m", seed=7)
    config = e2e_config(max_batch=2, num_slots=16)
    with metrics_server(models=[model], config=config, gated=True) as live:
        url = live.server.metrics_url
        assert url is not None
        assert live.gate is not None
        client = live.client()
        streams = [client.infer_stream("m", [1, 2, 3, 4], timeout=CALL_TIMEOUT_S) for _ in range(3)]
        live.wait_until(lambda: live.server.engine.num_live == 3)
        live.call(lambda: live.gate.allow(1))  # type: ignore[union-attr]
        live.run(live.gate.wait_entered(2))
        held = scrape(url)
        dev = {"device": "cpu"}
        cell = {**dev, "model": "m", "version": "1", "cell_type": "step"}
        pool = {**dev, "model": "m", "version": "1", "pool": "state"}
        assert value(held, "batchmaker_num_requests_running", **dev) == 2
        assert value(held, "batchmaker_num_requests_waiting", **dev) == 1
        assert value(held, "batchmaker_ready_queue_depth", **cell) == 1
        assert value(held, "batchmaker_slots_capacity", **pool) == 16
        assert value(held, "batchmaker_free_slots", **pool) == 13
        limit = config.max_num_live_requests
        assert value(held, "batchmaker_admission_limit", **dev) == limit
        assert value(held, "batchmaker_admission_headroom", **dev) == limit - 3

        live.call(live.gate.open)
        for s in streams:
            assert len(s.collect().steps) == 4
        live.wait_idle()
        done = scrape(url)
        assert value(done, "batchmaker_num_requests_running", **dev) == 0
        assert value(done, "batchmaker_num_requests_waiting", **dev) == 0
        assert value(done, "batchmaker_ready_queue_depth", **cell) == 0
        assert value(done, "batchmaker_free_slots", **pool) == 16
        assert value(done, "batchmaker_admission_headroom", **dev) == limit

        # Executions, rows and the batch-size histogram match the executor's own log.
        sizes = [len(s.request_ids) for s in live.call(lambda: list(live.gate.steps))]  # type: ignore[union-attr]
        assert sum(sizes) == 12
        assert value(done, "batchmaker_cell_executions_total", **cell) == len(sizes)
        # One step per plan (the gated server's): as many timesteps as executions.
        assert value(done, "batchmaker_cell_timesteps_total", **cell) == len(sizes)
        assert value(done, "batchmaker_cell_steps_per_plan_sum", **cell) == len(sizes)
        assert value(done, "batchmaker_cell_steps_per_plan_bucket", **cell, le="1") == len(sizes)
        assert value(done, "batchmaker_cell_steps_total", **cell) == 12
        assert value(done, "batchmaker_cell_padding_steps_total", **cell) == 0
        assert value(done, "batchmaker_cell_batch_size_count", **cell) == len(sizes)
        assert value(done, "batchmaker_cell_batch_size_sum", **cell) == 12
        for bound in BATCH_SIZE_BUCKETS:
            got = value(done, "batchmaker_cell_batch_size_bucket", **cell, le=str(bound))
            assert got == sum(1 for n in sizes if n <= bound), bound
        assert value(done, "batchmaker_executor_busy_seconds_total", **dev) > 0


def test_padding_rows_are_counted_apart_in_request_level_batching() -> None:
    """Lengths 2 and 5 in one padded batch, through the fused kernel at once: one execution
    of 5 timesteps of 2 rows, 7 real cell-steps and 3 padding."""
    model = small_model("lstm", name="m", seed=7)
    config = e2e_config(mode="padded", max_batch=2, padded_max_batch=2, padded_timeout_s=30.0)
    with metrics_server(models=[model], config=config) as live:
        url = live.server.metrics_url
        assert url is not None
        client = live.client()
        a = client.infer_stream("m", [1, 2], timeout=CALL_TIMEOUT_S)
        b = client.infer_stream("m", [1, 2, 3, 4, 5], timeout=CALL_TIMEOUT_S)
        assert len(a.collect().steps) == 2
        assert len(b.collect().steps) == 5
        live.wait_idle()
        got = scrape(url)
        cell = {"device": "cpu", "model": "m", "version": "1", "cell_type": "step"}
        assert value(got, "batchmaker_cell_executions_total", **cell) == 1
        assert value(got, "batchmaker_cell_timesteps_total", **cell) == 5
        assert value(got, "batchmaker_cell_steps_per_plan_count", **cell) == 1
        assert value(got, "batchmaker_cell_steps_per_plan_sum", **cell) == 5
        assert value(got, "batchmaker_cell_steps_per_plan_bucket", **cell, le="4") == 0
        assert value(got, "batchmaker_cell_steps_per_plan_bucket", **cell, le="8") == 1
        assert value(got, "batchmaker_cell_steps_total", **cell) == 7
        assert value(got, "batchmaker_cell_padding_steps_total", **cell) == 3
        assert value(got, "batchmaker_cell_batch_size_sum", **cell) == 2
        assert value(got, "batchmaker_server_info", mode="padded") == 1


def test_rejections_cancellations_and_deadlines_are_failures_with_their_status() -> None:
    model = small_model("lstm", name="m", seed=7)
    config = e2e_config(max_num_live_requests=1)
    with metrics_server(models=[model], config=config, gated=True) as live:
        url = live.server.metrics_url
        assert url is not None
        client = live.client()
        held = client.infer_stream("m", [1, 2, 3], timeout=CALL_TIMEOUT_S)
        live.wait_until(lambda: live.server.engine.num_live == 1)
        with pytest.raises(AdmissionRejectedError):
            client.infer("m", [1], timeout=CALL_TIMEOUT_S)
        held.cancel()
        # The handler ends at once; the request leaves the engine once a step may run.
        live.wait_until(lambda: live.server.gate.num_active == 0)
        live.call(live.gate.open)
        live.wait_idle()
        live.call(live.gate.close)
        with pytest.raises(DeadlineExceededError):
            # A deadline that passes while the gate holds the request.
            client.infer_stream("m", [1, 2], timeout=0.3).collect()
        live.wait_until(lambda: live.server.gate.num_active == 0)
        live.call(live.gate.open)
        live.wait_idle()
        got = scrape(url)
        failed = Counter(
            {
                dict(labels)["reason"]: v
                for (name, labels), v in got.items()
                if name == "batchmaker_request_failure_total"
            }
        )
        assert failed == {"RESOURCE_EXHAUSTED": 1, "CANCELLED": 1, "DEADLINE_EXCEEDED": 1}
        assert total(got, "batchmaker_request_success_total") == 0
        pool = {"device": "cpu", "model": "m", "version": "1", "pool": "state"}
        assert value(got, "batchmaker_free_slots", **pool) == value(
            got, "batchmaker_slots_capacity", **pool
        )


def test_no_endpoint_unless_asked_and_it_closes_with_the_server() -> None:
    with LiveServer(models=[small_model("gru", name="g", seed=1)]) as plain:
        assert plain.server.metrics_url is None
    live = metrics_server(models=[small_model("gru", name="g", seed=1)])
    with live:
        url = live.server.metrics_url
        assert url is not None
        assert value(scrape(url), "batchmaker_server_info", mode="cellular") == 1
    with pytest.raises(urllib.error.URLError):
        scrape(url)


def test_serve_flag_prints_the_metrics_url_and_the_endpoint_answers() -> None:
    """The real entry point in a subprocess: the banner's second line is the URL."""
    with ServerProcess(["--models=lstm-lm", "--model-repository=none", "--metrics-port=0"]) as proc:
        assert proc.metrics_url is not None
        assert proc.metrics_url.startswith("http://127.0.0.1:")
        got = scrape(proc.metrics_url)
        pool = {"device": "cpu", "model": "lstm-lm", "version": "1", "pool": "state"}
        assert value(got, "batchmaker_slots_capacity", **pool) > 0
        assert proc.stop() == 0
