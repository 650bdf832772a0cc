"""The free-slot check reads the server's gauges from its Prometheus text."""

from __future__ import annotations

import pytest

from loadtest.scrape import ServerLoad, parse, wait_until_idle

EXPOSITION = """\
# HELP batchmaker_free_slots State slots free.
# TYPE batchmaker_free_slots gauge
batchmaker_free_slots{device="cpu",pool="state"} %(free)s
batchmaker_free_slots{device="cpu",pool="tokens"} 64.0
# HELP batchmaker_slots_capacity State slots in all.
# TYPE batchmaker_slots_capacity gauge
batchmaker_slots_capacity{device="cpu",pool="state"} 1024.0
batchmaker_slots_capacity{device="cpu",pool="tokens"} 64.0
# HELP batchmaker_num_requests_running Requests in flight.
# TYPE batchmaker_num_requests_running gauge
batchmaker_num_requests_running{device="cpu"} %(running)s
# HELP batchmaker_num_requests_waiting Requests admitted, not started.
# TYPE batchmaker_num_requests_waiting gauge
batchmaker_num_requests_waiting{device="cpu"} 0.0
# HELP batchmaker_request_success_total Requests.
# TYPE batchmaker_request_success_total counter
batchmaker_request_success_total{model="m",version="1"} 12.0
"""


def text(free: float = 1024, running: float = 0) -> str:
    return EXPOSITION % {"free": free, "running": running}


def test_an_idle_server() -> None:
    load = parse(text())
    assert load.free_slots == load.capacity == {("cpu", "state"): 1024, ("cpu", "tokens"): 64}
    assert load.idle
    assert "cpu/state 1024 of 1024 free" in load.describe()


@pytest.mark.parametrize(("free", "running"), [(1023, 0), (1024, 1)])
def test_a_held_slot_or_a_running_request_is_not_idle(free: float, running: float) -> None:
    assert not parse(text(free, running)).idle


def test_no_slot_gauges_is_not_idle() -> None:
    """A server without the gauges must not pass the check vacuously."""
    assert not ServerLoad({}, {}, 0, 0).idle


def test_waiting_until_idle_is_bounded() -> None:
    loads = iter([parse(text(1000, 3)), parse(text(1020, 1)), parse(text())])
    idle, load = wait_until_idle("x", timeout=5, interval=0.001, read=lambda _: next(loads))
    assert idle
    assert load.idle
    idle, load = wait_until_idle("x", timeout=0.05, interval=0.01, read=lambda _: parse(text(3)))
    assert not idle
    assert load.free_slots[("cpu", "state")] == 3
