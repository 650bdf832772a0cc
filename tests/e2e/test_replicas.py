"""Several replicas behind one client channel: a replica that drains or dies costs nothing
that had not started, and never duplicates anything that had.

Three ``batchmaker serve`` processes on loopback, one ``Client`` over all three
(``round_robin`` over a static address list, ``RetryPolicy`` for UNAVAILABLE), and
workers streaming requests through it without pause:

- one replica is drained (SIGTERM): its health goes NOT_SERVING, so the balancer's
  client-side health checking sends new calls to the others at once (a call that races
  that is refused with UNAVAILABLE and retried elsewhere), and no request fails;
- another is killed (SIGKILL): a request that had not received any step is retried and
  completes; one that had already streamed steps fails with UNAVAILABLE rather than be
  run again; every completed request carries each of its steps once, equal to a replica's
  answer for the same input.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client, RetryPolicy
from batchmaker.errors import BatchMakerError, Code

MODEL = "lstm-lm"
ARGS = ["--threads=1", "--models", MODEL, "--max-steps-per-plan", "1", "--grace", "10"]
ENV = {"BATCHMAKER_LOG_LEVEL": "INFO"}
"""INFO: the access log, where the drained replica's refusals show."""
LENGTH = 60
CALL_TIMEOUT_S = 30.0
RNG = np.random.default_rng(5)
INPUTS = [RNG.integers(0, 1000, LENGTH).tolist() for _ in range(8)]
HOLDER = RNG.integers(0, 1000, 1000).tolist()


@dataclass
class Tally:
    """What the workers saw, request by request."""

    completed: int = 0
    failed_after_output: list[str] = field(default_factory=list)
    failed_before_output: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def replicas() -> Iterator[list[ServerProcess]]:
    with ThreadPoolExecutor(3) as pool:
        procs = list(pool.map(lambda _: ServerProcess(ARGS, env=ENV), range(3)))
    try:
        yield procs
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()


def _stream(
    client: Client, i: int, want: list[list[int]], tally: Tally, stop: threading.Event
) -> None:
    """Stream request after request until ``stop``; tally how each one ended."""
    while not stop.is_set():
        k = i % len(INPUTS)
        i += 1
        steps: list[int] = []
        try:
            for out in client.infer_stream(MODEL, INPUTS[k], top_k=1, timeout=CALL_TIMEOUT_S):
                assert out.top_ids is not None
                if out.step != len(steps):  # a step twice, or one missing
                    with tally.lock:
                        tally.wrong.append(f"request {k}: step {out.step} after {len(steps)}")
                steps.append(int(out.top_ids[0]))
        except BatchMakerError as exc:
            where = tally.failed_after_output if steps else tally.failed_before_output
            with tally.lock:
                where.append(f"{exc.code.value}: {exc.message}")
            continue
        with tally.lock:
            if steps != want[k]:
                tally.wrong.append(f"request {k}: outputs differ")
            tally.completed += 1


def test_a_drained_and_a_killed_replica_lose_nothing_unstarted(
    replicas: list[ServerProcess],
) -> None:
    drained, killed, survivor = replicas
    # Every replica serves the same weights: each answers the same for the same input.
    want = []
    for x in INPUTS:
        answers = []
        for p in replicas:
            with Client(p.address) as c:
                answers.append([int(s.top_ids[0]) for s in c.infer(MODEL, x, top_k=1).steps])
        assert answers[0] == answers[1] == answers[2]
        want.append(answers[0])

    address = "ipv4:" + ",".join(p.address for p in replicas)
    tally = Tally()
    stop = threading.Event()
    with Client(address, load_balancing="round_robin", retry=RetryPolicy(max_attempts=5)) as c:
        workers = [
            threading.Thread(target=_stream, args=(c, n, want, tally, stop)) for n in range(6)
        ]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)
            # A long stream on the replica to drain keeps its drain open for a while (the
            # drain lets it finish): meanwhile its new calls get UNAVAILABLE.
            with Client(drained.address) as direct:
                call = direct.infer_stream(MODEL, HOLDER, top_k=1, timeout=CALL_TIMEOUT_S)
                holder = iter(call)
                held = [next(holder)]
                drained.proc.send_signal(signal.SIGTERM)
                held += list(holder)
            assert [s.step for s in held] == list(range(len(HOLDER)))  # it finished
            assert drained.wait(timeout=30)[0] == 0  # and the replica exited cleanly
            phase_one = (tally.completed, list(tally.failed_before_output))
            killed.proc.send_signal(signal.SIGKILL)  # dies mid-stream
            time.sleep(1.5)
        finally:
            stop.set()
            for w in workers:
                w.join(CALL_TIMEOUT_S)
    assert survivor.proc.poll() is None

    assert tally.wrong == [], tally  # nothing duplicated, nothing wrong
    assert phase_one[1] == [], tally  # the drain failed nobody
    assert tally.failed_before_output == [], tally  # with no step yet: always retried
    # A stream that had delivered steps when its replica died is not run again: it fails
    # with UNAVAILABLE (there may be none, if no stream was mid-way on that replica then).
    assert all(f.startswith(Code.UNAVAILABLE.value) for f in tally.failed_after_output), tally
    assert tally.completed > 20, tally
    print(
        f"replicas: {tally.completed} completed, {len(tally.failed_after_output)} failed mid-stream"
    )
    # Client-side health checking steered new calls away from the draining replica as its
    # health went NOT_SERVING; a call that raced it was refused and retried elsewhere.
    refused = [line for line in drained.log_lines() if "InferStream UNAVAILABLE" in line]
    served = [line for line in drained.log_lines() if "InferStream OK" in line]
    assert served, "the drained replica served nothing: round robin did not use it"
    assert len(refused) <= 6, refused
