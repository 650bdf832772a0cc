"""SIGTERM against the real entry point: ``python server.py`` in a subprocess.

What an orchestrator sees when it scales a pod down: health flips to
NOT_SERVING, new calls are refused with UNAVAILABLE, the streams already
running finish (or, past the grace period, end with UNAVAILABLE), and the
process exits 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import GUARD_S

from batchmaker import UnavailableError
from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server_process(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``python server.py --port 0 --threads 1 <param>``: the real entry point."""
    entry = [sys.executable, str(ROOT / "server.py")]
    with ServerProcess(["--threads=1", *request.param], entry=entry) as proc:
        yield proc


def _wait_not_serving(address: str) -> None:
    """Follow the health Watch stream until it reports NOT_SERVING."""
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=GUARD_S
        )
        for resp in watch:
            if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                watch.cancel()
                return
    pytest.fail("health never reported NOT_SERVING")


@pytest.mark.parametrize(
    "server_process", [("--models", "lstm-lm", "--grace", "30")], indirect=True
)
def test_sigterm_drains_live_streams_refuses_new_ones_and_exits_zero(
    server_process: ServerProcess,
) -> None:
    # No BDP probing: the window stays small, so a stream the client has not read yet
    # holds its handler (and the drain) until the client reads it.
    client = Client(server_process.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        client.wait_until_serving(GUARD_S)
        inputs = [list(range(i, i + 600)) for i in range(3)]
        streams = [
            client.infer_stream("lstm-lm", x, return_vectors=True, timeout=GUARD_S) for x in inputs
        ]
        readers = [s.messages() for s in streams]
        firsts = [next(r) for r in readers]  # every stream is in flight
        server_process.terminate()
        _wait_not_serving(server_process.address)
        with pytest.raises(UnavailableError, match="shutting down"):
            client.infer("lstm-lm", [1, 2, 3], timeout=GUARD_S)
        assert server_process.proc.poll() is None, "exited before its streams finished"
        for first, reader, stream in zip(firsts, readers, streams, strict=True):
            steps = [s.step for s in first] + [s.step for m in reader for s in m]
            assert steps == list(range(600))
            assert stream.finish_reason == "completed"
    finally:
        client.close()
    returncode, err = server_process.wait()
    assert returncode == 0, err
    assert "signal received: draining" in err


@pytest.mark.parametrize(
    "server_process",
    [("--models", "lstm-512", "--grace", "0.2", "--max-steps-per-plan", "1")],
    indirect=True,
)
def test_sigterm_past_the_grace_period_ends_streams_with_unavailable(
    server_process: ServerProcess,
) -> None:
    """The benchmark model takes a few ms a step, so 500 steps, one per plan, outlast a
    0.2 s grace. With up to 32 steps per plan they can all finish inside it: a fresh-clone
    run did, and the stream ended cleanly instead of with UNAVAILABLE."""
    with Client(server_process.address) as client:
        client.wait_until_serving(GUARD_S)
        stream = client.infer_stream("lstm-512", list(range(500)), timeout=GUARD_S)
        steps = iter(stream)
        assert next(steps).step == 0
        server_process.terminate()
        with pytest.raises(UnavailableError, match="shut down before the request finished"):
            for _ in steps:
                pass
    returncode, err = server_process.wait()
    assert returncode == 0, err
    assert "grace period over with 1 live requests" in err
