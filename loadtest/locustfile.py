"""Locust load test of BatchMaker's streaming gRPC calls: ``InferStream`` (batchmaker.v1),
or KServe v2's ``ModelStreamInfer`` with ``--protocol v2``.

Run headless through ``loadtest/run.py`` (``make loadtest``), or with the web UI
against a running server (``loadtest/README.md``)::

    .venv/bin/locust -f loadtest/locustfile.py --host 127.0.0.1:50051 --web-host 127.0.0.1

It follows Locust's documented pattern for gRPC: gRPC is switched to gevent
before any channel exists, and a client interceptor (``loadtest/timing.py``)
fires Locust's ``request`` event for each call, twice for a stream: request
type ``ttft`` (time to the first output step) and ``full`` (time to the end of
the stream), both named after the model. A failure carries its gRPC status.

With ``--protocol v2`` each request is instead one ``ModelStreamInfer`` stream of its
own (our stubs, ``batchmaker.kserve``; never ``tritonclient``'s, which define the same
protobuf messages): the request written and the stream half-closed, so each request is
timed and cancelled on its own as a v1 call is, with ``INPUT_IDS`` (or ``INPUT``, or
``CHILDREN``) as raw little-endian bytes, as tritonclient sends them. The user times it
itself (``v2.v2_stream``): the same two request types, named ``v2:<model>`` so Locust's
table keeps the protocols apart; an in-band ``error_message`` is a failure with the
status it names.

Every v1 stream is checked as it is read (``timing.StepCheck``): each step once, in order,
its own request id, and as many steps as its input asks for; a wrong stream fails as
``WRONG_STEPS``. ``--slow-share`` and ``--cancel-share`` make some clients slow readers
or cancel mid-stream (``loadtest/readers.py``), reported as ``slow:<model>`` and
``cancel:<model>``. The channel is ``batchmaker.client``'s own: with a host that names
several replicas (``ipv4:127.0.0.1:A,127.0.0.1:B``), ``--load-balancing round_robin``
and ``--retry-attempts N`` give it the client's balancing and ``RetryPolicy``.

The scenario flags (``--scenario``, ``--rate``, ...; ``loadtest/options.py``)
appear in the web UI too. Every user sends its share of one open-loop arrival
process (``loadtest/arrivals.py``) with requests from ``loadtest/workload.py``.
Loopback only: a host that is not the local machine is refused.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

# Locust puts this file's folder on sys.path; the shared modules are imported as the
# ``loadtest`` package, as the runner and the tests import them.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from batchmaker.client import RetryPolicy  # noqa: E402
from batchmaker.client.channel import DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, open_channel  # noqa: E402
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc  # noqa: E402
from batchmaker.v1 import inference_pb2 as pb  # noqa: E402
from batchmaker.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402
from loadtest.arrivals import ConstantRate, OnOffRate, Pacer, RateSchedule  # noqa: E402
from loadtest.options import (  # noqa: E402
    add_scenario_arguments,
    check_loopback,
    parse_duration,
    resolve,
)
from loadtest.readers import NORMAL, Clock, ReaderMix, expected_steps, stream_as  # noqa: E402
from loadtest.report import (  # noqa: E402
    FULL,
    REQUESTS_CSV_COLUMNS,
    TTFT,
    StatRow,
    Thresholds,
    check_thresholds,
    exit_code,
)
from loadtest.timing import (  # noqa: E402
    StreamTimingInterceptor,
)
from loadtest.v2 import v2_stream  # noqa: E402
from loadtest.workload import ModelSpec, RequestFactory, parse_mix  # noqa: E402

# Before any channel: gRPC's I/O then yields to gevent instead of blocking the process.
grpc_gevent.init_gevent()

log = logging.getLogger("batchmaker.loadtest")

METADATA_TIMEOUT_S = 10.0
DEFAULT_HOST = "127.0.0.1:50051"
"""Where ``make serve`` listens."""
MAX_IN_FLIGHT_PER_USER = 256
"""Requests one user has outstanding at most; a send past it waits (and counts late)."""


# ---- command line ----------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_scenario_arguments(parser, include_in_web_ui=True)
    for flag, about in (
        ("--max-fail-ratio", "quit with status 1 when the full requests' failure ratio is over"),
        ("--max-p99-ms", "quit with status 3 when a model's full p99 (ms) is over"),
        ("--max-ttft-p99-ms", "quit with status 3 when a model's ttft p99 (ms) is over"),
    ):
        parser.add_argument(flag, type=float, default=-1.0, help=f"{about} (< 0: no limit)")


# ---- the test plan: built once per test start ------------------------------------------------


@dataclass
class Plan:
    """What every user of one test run shares."""

    host: str
    scenario: str
    arrival: str
    lengths: str
    models: list[tuple[ModelSpec, float]]
    schedule: RateSchedule
    start: float
    """``time.monotonic()`` at the test start: the schedule's time 0."""
    seed: int
    seq_len: int
    top_k: int
    request_timeout: float
    protocol: str = "v1"
    """``v1`` (``InferStream``) or ``v2`` (``ModelStreamInfer``, a stream per request)."""
    readers: ReaderMix = field(default_factory=ReaderMix)
    """Shares of slow and cancelling readers."""
    retry: RetryPolicy | None = None
    """``batchmaker.client``'s retry policy for the users' channels, if any."""
    load_balancing: str | None = None
    """gRPC's load balancing policy over a host that names several replicas."""


_plan: Plan | None = None
_user_ids = itertools.count()
_sends = {"sent": 0, "late": 0, "unrecorded": 0, "cancelled": 0, "finished_before_cancel": 0}


def _horizon(environment: Environment) -> float:
    """Seconds the on/off pattern must cover before it repeats: the run time, if set."""
    run_time = getattr(environment.parsed_options, "run_time", None)
    if isinstance(run_time, int | float) and run_time > 0:
        return float(run_time)
    if isinstance(run_time, str) and run_time:
        return parse_duration(run_time)
    return 600.0


def build_plan(environment: Environment) -> Plan:
    """Resolve the scenario and ask the server which models it serves and their limits."""
    opts = environment.parsed_options
    if opts is None:
        raise ValueError("Locust gave no options (run the locustfile with the locust command)")
    scenario = resolve(opts)
    host = check_loopback(environment.host or InferenceUser.host or DEFAULT_HOST)
    with grpc.insecure_channel(host) as channel:
        stub = pb_grpc.InferenceStub(channel)
        server = stub.ServerMetadata(
            pb.ServerMetadataRequest(), timeout=METADATA_TIMEOUT_S, wait_for_ready=True
        )
        served = [m.name for m in server.models]
        if not served:
            raise ValueError(f"the server at {host} serves no model")
        if scenario.mix:
            wanted = parse_mix(opts.mix) if opts.mix else [(n, 1.0) for n in served]
        else:
            wanted = [(opts.model or served[0], 1.0)]
        unknown = [n for n, _ in wanted if n not in served]
        if unknown:
            raise ValueError(f"the server does not serve {unknown}; it serves {served}")
        models = [
            (
                ModelSpec.from_metadata(
                    stub.ModelMetadata(pb.ModelMetadataRequest(name=n), timeout=METADATA_TIMEOUT_S)
                ),
                w,
            )
            for n, w in wanted
            if w > 0
        ]
    attempts = int(getattr(opts, "retry_attempts", 0))
    schedule: RateSchedule
    if scenario.arrival == "mmpp":
        schedule = OnOffRate.draw(
            scenario.rate,
            burst_ratio=float(opts.burst_ratio),
            mean_period_s=float(opts.burst_period),
            horizon_s=_horizon(environment),
            seed=int(opts.seed),
        )
    else:
        schedule = ConstantRate(scenario.rate)
    return Plan(
        host=host,
        scenario=scenario.name,
        arrival=scenario.arrival,
        lengths=scenario.lengths,
        models=models,
        schedule=schedule,
        start=time.monotonic(),
        seed=int(opts.seed),
        seq_len=int(opts.seq_len),
        top_k=int(opts.top_k),
        request_timeout=float(opts.request_timeout),
        protocol=str(getattr(opts, "protocol", "v1")),
        readers=ReaderMix(
            slow_share=float(getattr(opts, "slow_share", 0.0)),
            cancel_share=float(getattr(opts, "cancel_share", 0.0)),
            slow_read_s=float(getattr(opts, "slow_read_ms", 50.0)) / 1000,
            slow_vectors=bool(int(getattr(opts, "slow_vectors", 1))),
            cancel_within_s=float(getattr(opts, "cancel_within_ms", 200.0)) / 1000,
        ),
        retry=RetryPolicy(max_attempts=attempts) if attempts else None,
        load_balancing=str(getattr(opts, "load_balancing", "")) or None,
    )


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    global _plan, _recording
    _plan = None
    _sends.update(sent=0, late=0, unrecorded=0, cancelled=0, finished_before_cancel=0)
    _records.clear()
    _recording = bool(getattr(environment.parsed_options, "requests_csv", ""))
    environment.process_exit_code = None
    try:
        _plan = build_plan(environment)
    except (ValueError, grpc.RpcError) as e:
        reason = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        log.error("cannot start the load test: %s", reason)
        environment.process_exit_code = 1
        runner = environment.runner
        if runner is not None:  # headless: quit; web UI: stop, so the form can be fixed
            headless = getattr(environment.parsed_options, "headless", False)
            gevent.spawn_later(0, runner.quit if headless else runner.stop)
        return
    p = _plan
    rate = f"{p.schedule.mean_rate:g} req/s"
    if isinstance(p.schedule, OnOffRate):
        rate += f" (on {p.schedule.high:.3g}, off {p.schedule.low:.3g})"
    log.info(
        "scenario %s over %s: %s arrivals at %s, %s lengths; models %s",
        p.scenario,
        p.protocol,
        p.arrival,
        rate,
        p.lengths,
        ", ".join(f"{m.describe()} x{w:g}" for m, w in p.models),
    )


# ---- the user ----------------------------------------------------------------------------------


class InferenceUser(User):
    """One client: its own channel, its own seeded requests, its share of the arrivals.

    Unlike Locust's usual user it does not wait for an answer before its next send:
    each request streams in a greenlet of its own (``in_flight``), so the arrivals
    stay open-loop and a slow server builds a queue instead of slowing the load.
    """

    host = DEFAULT_HOST

    def on_start(self) -> None:
        self.plan = _plan
        if self.plan is None:  # the test start failed and said why; the task stops the user
            return
        self.user_id = next(_user_ids)
        self.num_sent = 0
        # batchmaker.client's channel: its message limit (vectors), balancing and retries.
        self.raw_channel = open_channel(
            grpc,
            self.plan.host,
            None,
            DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
            (),
            None,
            retry=self.plan.retry,
            load_balancing=self.plan.load_balancing,
        )
        self.specs = {m.name: m for m, _ in self.plan.models}
        fire = self.environment.events.request.fire
        expect = lambda r: expected_steps(r, self.specs.get(r.model_name))  # noqa: E731
        self.channel = grpc.intercept_channel(
            self.raw_channel, StreamTimingInterceptor(fire, expect=expect)
        )
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.raw_stub = pb_grpc.InferenceStub(self.raw_channel)
        self.v2_stub = kpb_grpc.GRPCInferenceServiceStub(self.channel)
        self.send = self._v2_stream if self.plan.protocol == "v2" else self._stream
        self.in_flight = gevent.pool.Pool(MAX_IN_FLIGHT_PER_USER)
        seed = self.plan.seed * 1_000_003 + self.user_id
        self.requests = RequestFactory(
            self.plan.models,
            lengths=self.plan.lengths,
            seq_len=self.plan.seq_len,
            top_k=self.plan.top_k,
            seed=seed,
        )
        self.pacer = Pacer(
            self.plan.schedule, random.Random(seed), poisson=self.plan.arrival != "constant"
        )
        self.reader_rng = random.Random(seed + 1)
        self.wait()  # the first send is paced too

    def on_stop(self) -> None:
        # Locust stops a waiting user at once; its requests still in flight get to
        # finish (their deadline bounds them), then whatever is left is cancelled.
        in_flight = getattr(self, "in_flight", None)
        if in_flight is not None and self.plan is not None:
            in_flight.join(timeout=self.plan.request_timeout + 1)
            in_flight.kill(block=True, timeout=1)
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()

    def wait_time(self) -> float:
        if self.plan is None:
            return 0.0
        runner = self.environment.runner
        num_users = runner.target_user_count if runner is not None else 1
        before = self.pacer.num_late
        delay = self.pacer.wait(time.monotonic() - self.plan.start, num_users)
        _sends["late"] += self.pacer.num_late - before
        return delay

    @task
    def infer_stream(self) -> None:
        """Send the next request without waiting for earlier ones: an open loop."""
        if self.plan is None:
            raise StopUser()
        if self.in_flight.full():  # bounded: the send waits for a free place, then gives up
            _sends["late"] += 1
            if not self.in_flight.wait_available(timeout=self.plan.request_timeout):
                return
        _sends["sent"] += 1
        request = self.requests.next()
        self.num_sent += 1
        request.id = f"u{self.user_id}-{self.num_sent}"  # unique: the servers' logs name it
        self.in_flight.spawn(self.send, request, self.plan.request_timeout)

    def _stream(self, request: pb.InferRequest, timeout: float) -> None:
        assert self.plan is not None
        reader = self.plan.readers.draw(self.reader_rng)
        if reader == NORMAL:
            for _ in self.stub.InferStream(request, timeout=timeout):
                pass  # the interceptor times and checks the stream; a failure is fired
            return
        fire = self.environment.events.request.fire
        expected = expected_steps(request, self.specs.get(request.model_name))
        outcome = stream_as(
            reader, self.raw_stub, request, timeout, fire, self.plan.readers, self.reader_rng,
            expected, Clock(gevent.sleep, gevent.spawn_later),
        )  # fmt: skip
        if outcome in _sends:
            _sends[outcome] += 1

    def _v2_stream(self, request: pb.InferRequest, timeout: float) -> None:
        v2_stream(self.v2_stub, request, timeout, self.environment.events.request.fire)


# ---- results -----------------------------------------------------------------------------------

MAX_RECORDS = 5_000_000
"""Events ``--requests-csv`` keeps at most (about an hour at 700 requests/s); later ones
are counted, not kept."""

_records: list[tuple[float, str, str, float, int, int, str, str]] = []
_recording = False


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: Exception | None = None,
    start_time: float | None = None,
    context: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    if not _recording or request_type not in (TTFT, FULL):
        return
    if len(_records) >= MAX_RECORDS:
        _sends["unrecorded"] = _sends["unrecorded"] + 1
        return
    error = ""
    if exception is not None:
        code = getattr(exception, "code", None)
        error = code.name if isinstance(code, grpc.StatusCode) else type(exception).__name__
    _records.append(
        (
            start_time if start_time is not None else time.time() - response_time / 1000,
            request_type,
            name,
            round(response_time, 3),
            response_length,
            int(exception is None),
            error,
            str((context or {}).get("request_id", "")),
        )
    )


def _stat_rows(environment: Environment) -> list[StatRow]:
    return [
        StatRow(
            request_type=e.method or "",
            name=e.name,
            count=e.num_requests,
            failures=e.num_failures,
            p50=e.get_response_time_percentile(0.5) or 0.0,
            p99=e.get_response_time_percentile(0.99) or 0.0,
            max=e.max_response_time,
            rps=e.total_rps,
        )
        for e in environment.stats.entries.values()
    ]


def write_final_stats(environment: Environment, path: str) -> None:
    """Locust's stats table, in its own CSV format, as it stands when Locust quits.

    Locust rewrites ``<prefix>_stats.csv`` once a second from a greenlet and does not
    write it again at the end, so that file can miss the last second, and with it the
    requests that finished during ``--stop-timeout``. This one is complete.
    """
    with open(path, "w", newline="") as f:
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(f))


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    prefix = getattr(opts, "csv_prefix", None) if opts is not None else None
    if prefix:
        write_final_stats(environment, f"{prefix}_stats_final.csv")
    path = getattr(opts, "requests_csv", "") if opts is not None else ""
    if path:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(REQUESTS_CSV_COLUMNS)
            writer.writerows(_records)
        info = {
            "scenario": _plan.scenario if _plan else None,
            "arrival": _plan.arrival if _plan else None,
            "lengths": _plan.lengths if _plan else None,
            "models": {m.name: w for m, w in _plan.models} if _plan else {},
            "mean_rate": _plan.schedule.mean_rate if _plan else None,
            "peak_rate": _plan.schedule.peak_rate if _plan else None,
            "sends": _sends["sent"],
            "late_sends": _sends["late"],
            "unrecorded_events": _sends["unrecorded"],
            "cancelled": _sends["cancelled"],
            "finished_before_cancel": _sends["finished_before_cancel"],
        }
        Path(path).with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    if _sends["late"]:
        log.warning(
            "%d of %d sends were late (Locust's process could not keep up, or a user had "
            "%d requests in flight): the offered rate fell short",
            _sends["late"],
            _sends["sent"],
            MAX_IN_FLIGHT_PER_USER,
        )
    if opts is None or _plan is None:
        return

    def limit(name: str) -> float | None:
        value = getattr(opts, name, -1.0)
        return None if value is None or value < 0 else float(value)

    limits = Thresholds(limit("max_fail_ratio"), limit("max_p99_ms"), limit("max_ttft_p99_ms"))
    if limits == Thresholds():
        return
    violations = check_thresholds(_stat_rows(environment), limits)
    for v in violations:
        log.error("threshold: %s", v.message)
    environment.process_exit_code = int(exit_code(violations))
