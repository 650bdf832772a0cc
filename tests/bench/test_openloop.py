"""The open-loop replay against fake senders: what it counts, when it stops early, and
that every request it stops is closed. Requests that must not finish wait on an event
that is never set, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np

from batchmaker.bench.openloop import Replay, replay, warm_up
from batchmaker.errors import AdmissionRejectedError, ExecutionFailedError
from batchmaker.types import StepOutput


def _steps(i: int, n: int) -> list[StepOutput]:
    return [
        StepOutput(step=k, vector=None, top_ids=np.array([i]), top_scores=np.array([0.0]))
        for k in range(n)
    ]


class FakeServer:
    """Answers request ``i`` with ``i % 3 + 1`` steps in two chunks, except the requests in
    ``hang`` (never answered), ``reject`` (refused) and ``fail`` (failed mid-stream)."""

    def __init__(
        self,
        *,
        hang: set[int] = frozenset(),
        reject: set[int] = frozenset(),
        fail: set[int] = frozenset(),
    ) -> None:
        self.hang, self.reject, self.fail = hang, reject, fail
        self.opened: set[int] = set()
        self.closed: set[int] = set()
        self.never = asyncio.Event()

    async def send(self, i: int) -> AsyncGenerator[list[StepOutput], None]:
        self.opened.add(i)
        try:
            if i in self.reject:
                raise AdmissionRejectedError("full")
            steps = _steps(i, i % 3 + 1)
            yield steps[:1]
            if i in self.hang:
                await self.never.wait()
            if i in self.fail:
                raise ExecutionFailedError("boom")
            await asyncio.sleep(0)
            yield steps[1:]
        finally:
            self.closed.add(i)


def run(server: FakeServer, n: int, *, rate: float = 1000.0, slo: float | None = None) -> Replay:
    arrivals = np.arange(n) / rate
    return asyncio.run(replay(server.send, arrivals, rate=rate, slo=slo, lead_s=0.0))


def test_every_request_is_sent_once_and_its_outputs_kept() -> None:
    server = FakeServer()
    r = run(server, 12)
    assert (r.num_sent, r.num_completed, r.num_failed, r.overloaded) == (12, 12, 0, False)
    assert server.opened == server.closed == set(range(12))
    for i, steps in enumerate(r.outputs):
        assert steps is not None
        assert [s.step for s in steps] == list(range(i % 3 + 1))
        assert int(steps[0].top_ids[0]) == i
    assert np.all(r.latency_s >= r.ttft_s)
    assert np.all(r.ttft_s >= 0)
    assert r.throughput_rps > 0
    p50, p99 = r.percentiles((50, 99))
    assert 0 <= p50 <= p99


def test_refusals_and_failures_are_counted_apart_from_completions() -> None:
    server = FakeServer(reject={2}, fail={5, 7})
    r = run(server, 10)
    assert (r.num_completed, r.num_rejected, r.num_failed) == (7, 1, 3)  # no SLO: refusals fail
    assert r.outputs[2] is None
    assert r.outputs[5] is None
    assert np.isnan(r.latency_s[5])
    assert len(r.latencies()) == 7


def test_an_overloaded_point_stops_early_and_closes_what_it_stopped() -> None:
    hang = set(range(3, 400))
    server = FakeServer(hang=hang)
    r = run(server, 400, rate=200.0, slo=0.02)  # 400 arrivals would span 2 s
    assert r.overloaded
    assert r.num_sent < 400
    assert r.num_completed == 3
    assert r.num_failed == 0  # stopped requests are neither completed nor failed
    assert server.closed == server.opened  # every stopped request's generator was closed
    assert r.percentiles((99,)) != [float("inf")]


def test_a_refusal_under_an_slo_marks_the_point_overloaded() -> None:
    server = FakeServer(reject={1})
    r = run(server, 50, rate=100.0, slo=10.0)
    assert r.overloaded
    assert (r.num_rejected, r.num_failed) == (1, 0)


def test_no_completions_give_the_empty_value() -> None:
    r = Replay(rate=1.0, num_requests=2, latency_s=np.full(2, np.nan), ttft_s=np.full(2, np.nan))
    assert r.percentiles((50, 99)) == [float("inf")] * 2
    assert r.percentiles((50,), empty=0.0, first_output=True) == [0.0]
    assert r.throughput_rps == 0.0


def test_warm_up_runs_one_request_down_each_path() -> None:
    a, b = FakeServer(), FakeServer()
    asyncio.run(warm_up({"a": a.send, "b": b.send}))
    assert a.opened == a.closed == {0}
    assert b.opened == b.closed == {0}
