"""The client's ``RetryPolicy``: gRPC retries a call the server refused before sending
anything, and never one that has already streamed a step.

Driven against one live server whose gate refuses the first calls with UNAVAILABLE (as a
replica that is starting or draining does), counting the attempts that reach it. The
multi-replica behaviour, with a replica drained and one killed, is test_replicas.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from live_server import LiveServer

from batchmaker.client import Client, RetryPolicy
from batchmaker.errors import UnavailableError
from batchmaker.server.calls import CallGate

CALL_TIMEOUT_S = 20.0
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


def refusing(gate: CallGate, refusals: int) -> list[str]:
    """Make ``gate`` refuse its next ``refusals`` calls with UNAVAILABLE; returns the list
    every attempt is logged in."""
    real: Callable[..., Any] = CallGate.begin.__get__(gate)
    attempts: list[str] = []

    def begin(obs: Any, model_name: str, num_steps: int) -> Any:
        attempts.append(model_name)
        if len(attempts) <= refusals:
            raise UnavailableError("the server is starting; its models are not loaded yet")
        return real(obs, model_name, num_steps)

    gate.begin = begin  # type: ignore[method-assign]
    return attempts


def test_a_call_refused_before_any_output_is_retried() -> None:
    with LiveServer() as live:
        gate = live.server.gate
        attempts = refusing(gate, 2)
        with Client(live.address, retry=FAST) as client:
            steps = list(client.infer_stream("gru", [1, 2, 3], timeout=CALL_TIMEOUT_S))
            assert [s.step for s in steps] == [0, 1, 2]
            assert len(attempts) == 3  # two refused, the third served
            attempts = refusing(gate, 3)  # one more refusal than attempts allowed
            with pytest.raises(UnavailableError):
                client.infer("gru", [1, 2, 3], timeout=CALL_TIMEOUT_S)
            assert len(attempts) == 3
        attempts = refusing(gate, 1)
        with Client(live.address) as plain, pytest.raises(UnavailableError):
            plain.infer("gru", [1, 2, 3], timeout=CALL_TIMEOUT_S)  # no policy: no retry
        assert len(attempts) == 1


def test_a_stream_that_delivered_a_step_is_not_retried() -> None:
    with LiveServer(gated=True) as live:
        attempts = refusing(live.server.gate, 0)
        with Client(live.address, retry=FAST) as client:
            stream = iter(client.infer_stream("gru", list(range(10)), timeout=CALL_TIMEOUT_S))
            assert live.gate is not None
            live.gate.allow(2)  # a step's outputs reach the loop as the next one launches
            assert next(stream).step == 0
            # Shut the engine down under it (it ends with UNAVAILABLE at the next step
            # boundary), then let the held step go: once the worker has been told to stop,
            # or the remaining steps may all run first (it failed about one run in ten).
            done = live.submit(live.server.engine.shutdown(grace=0))
            deadline = time.monotonic() + CALL_TIMEOUT_S
            while not all(w.stopping for w in live.server.engine.workers):
                assert time.monotonic() < deadline, "the engine never stopped its workers"
                time.sleep(0.001)
            live.gate.open()
            with pytest.raises(UnavailableError, match="shut down before the request finished"):
                list(stream)
            done.result(CALL_TIMEOUT_S)
        assert len(attempts) == 1  # committed by its first step: never sent again


def test_the_policy_is_checked() -> None:
    for bad in (
        {"max_attempts": 1},
        {"max_attempts": 6},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 2.0, "max_backoff_s": 1.0},
        {"backoff_multiplier": 0.5},
        {"codes": ("NOT_A_CODE",)},
        {"codes": ()},
    ):
        with pytest.raises(ValueError, match="must"):
            RetryPolicy(**bad)
