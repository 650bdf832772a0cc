"""The SageMaker hosting contract, on a real ``batchmaker serve --sagemaker`` subprocess
started as the image's entrypoint starts it for ``docker run IMAGE serve``: the model
folder (``/opt/ml/model`` in the container) and SageMaker's port and settings come from
environment variables, here a temporary copy of the demo repository and a free port.

``/ping`` before and after the models load, JSON and JSON Lines (and text) invocations
answered as plain torch answers the request alone, bad bodies (400 with the reason),
an oversized one (413), ``/execution-parameters`` from SageMaker's variables, the
``protocol="sagemaker"`` metrics, and a SIGTERM while an invocation runs (it finishes).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transform_files import (
    REPO,
    assert_answer_is_plain_torch,
    batchmaker_cmd,
    subprocess_env,
)

from batchmaker.config import SageMakerConfig
from batchmaker.demos import DEMO_REPOSITORY

START_S = 90.0
JSONL = {"Content-Type": "application/jsonlines"}
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class SageMakerServer:
    """``batchmaker serve --sagemaker`` with ``repo`` as its model folder; ``pings`` are the
    statuses ``/ping`` gave from the moment the process started (``None``: no answer)."""

    def __init__(self, repo: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            batchmaker_cmd("serve", "--sagemaker"),
            env=subprocess_env(
                BATCHMAKER_MODEL_REPOSITORY=str(repo),
                BATCHMAKER_HOST="127.0.0.1",
                BATCHMAKER_PORT="0",
                BATCHMAKER_METRICS_PORT=str(self.metrics_port),
                SAGEMAKER_BIND_TO_PORT=str(self.port),
                **env,
            ),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pings: list[int | None] = []

    def ping(self) -> int | None:
        try:
            return http("GET", self.url + "/ping")[0]
        except OSError:
            return None

    def wait_ready(self) -> None:
        """Ping until 200, recording every answer (and every refused connection)."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            self.pings.append(self.ping())
            if self.pings[-1] == 200:
                return
            time.sleep(0.01)
        raise AssertionError(f"not ready in {START_S} s: {self.log.read_text()}")

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        return http("POST", self.url + "/invocations", body, headers)

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SageMakerServer]:
    """The demo models, with SageMaker's batch transform settings in the environment."""
    tmp = tmp_path_factory.mktemp("sagemaker")
    repo = tmp / "model"
    shutil.copytree(DEMO_REPOSITORY, repo)
    s = SageMakerServer(
        repo,
        tmp / "server.log",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="1",
        SAGEMAKER_BATCH_STRATEGY="SINGLE_RECORD",
        SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="2",
    )
    try:
        s.wait_ready()
        yield s
    finally:
        assert s.stop() == 0


def test_ping_is_503_until_the_models_are_ready_then_200(server: SageMakerServer) -> None:
    answered = [p for p in server.pings if p is not None]
    assert answered[-1] == 200
    assert set(answered[:-1]) <= {503}, server.pings
    assert server.ping() == 200


def test_ping_before_and_after_a_model_loads(tmp_path: Path) -> None:
    """An empty model folder serves no model: 503. Once a model is there and loaded
    (through the v2 repository API on the same port), 200; a text body then needs no
    ``model`` field, since one model is served."""
    repo = tmp_path / "model"
    repo.mkdir()
    s = SageMakerServer(repo, tmp_path / "log", BATCHMAKER_ALLOW_UNAUTHENTICATED_ADMIN="1")
    try:
        deadline = time.monotonic() + START_S
        while (status := s.ping()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # Bound, then loaded nothing: 503 for as long as nothing is served.
        while b"listening on" not in s.log.read_bytes():
            assert s.ping() == 503
            time.sleep(0.05)
        assert s.ping() == 503
        status, body = s.post(b"one two\n", {"Content-Type": "text/plain"})
        assert status == 200
        assert b"none yet" in body  # the record's error: no model to run it on
        shutil.copytree(DEMO_REPOSITORY / "counting-lm", repo / "counting-lm")
        load = http("POST", s.url + "/v2/repository/models/counting-lm/load")
        assert load[0] == 200, load
        assert s.ping() == 200
        status, body = s.post(
            b"twenty one , twenty two\n\none hundred\n", {"Content-Type": "text/plain"}
        )
        assert status == 200
        answers = [json.loads(line) for line in body.splitlines()]
        assert [a["line"] for a in answers] == [1, 3]
        for text, answer in zip(["twenty one , twenty two", "one hundred"], answers, strict=True):
            assert_answer_is_plain_torch({"text": text}, answer)
    finally:
        assert s.stop() == 0


def test_execution_parameters_follow_sagemakers_variables(server: SageMakerServer) -> None:
    status, body = http("GET", server.url + "/execution-parameters")
    assert status == 200
    assert json.loads(body) == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": 1,
    }


RECORDS: list[dict[str, Any]] = [
    {"id": "a", "model": "counting-lm", "text": "twenty one , twenty two , twenty", "top_k": 2},
    {"id": "b", "model": "words-to-digits", "text": "seven thousand three hundred forty two"},
    {"model": "arith-mod10", "tree": "(+ 3 (* 4 2))", "top_k": 3},
    {"model": "counting-lm", "tokens": [1, 2, 3], "return_vectors": True},
]


def test_json_invocation_answers_one_request(server: SageMakerServer) -> None:
    before = server.metric("batchmaker_request_success_total", protocol="sagemaker")
    for record in RECORDS:
        status, body = server.post(json.dumps(record).encode(), JSON)
        assert status == 200, body
        answer = json.loads(body)
        assert "line" not in answer
        assert answer.get("id") == record.get("id")
        assert_answer_is_plain_torch(record, answer)
    after = server.metric("batchmaker_request_success_total", protocol="sagemaker")
    assert after - before == len(RECORDS)


def test_jsonlines_invocation_answers_each_line_in_order(server: SageMakerServer) -> None:
    """Batch transform's MultiRecord, SplitType=Line: one answer line per record, a bad
    record answered with its error and the rest run."""
    lines = [json.dumps(r) for r in RECORDS]
    lines.insert(2, '{"model": "counting-lm", "tokens": [1, 500]}')
    lines.insert(1, "")
    status, body = server.post(("\n".join(lines) + "\n").encode(), JSONL)
    assert status == 200
    answers = [json.loads(line) for line in body.splitlines()]
    assert [a["line"] for a in answers] == [1, 3, 4, 5, 6]
    assert answers[2]["error"]["code"] == "INVALID_ARGUMENT"
    assert "token id 500" in answers[2]["error"]["message"]
    good = [a for a in answers if "error" not in a]
    for record, answer in zip(RECORDS, good, strict=True):
        assert_answer_is_plain_torch(record, answer)


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b'{"model": "counting-lm", "tokens": [1, 2', JSON, 400, "not valid JSON"),
        (b'[{"tokens": [1]}]', JSON, 400, "must be a JSON object"),
        (b'{"model": "counting-lm", "token": [1]}', JSON, 400, "token: not a field"),
        (b'{"tokens": [1]}', JSON, 400, "model: required, this endpoint serves 3 models"),
        (b"  \n", JSONL, 400, "request body: empty"),
        (
            b'{"model": "counting-lm", "tokens": [1]}',
            {"Content-Type": "image/png"},
            415,
            "image/png",
        ),
        (b'{"model": "counting-lm", "tokens": [1]}', {**JSON, "Accept": "text/csv"}, 406, "Accept"),
        (b'{"model": "nope", "tokens": [1]}', JSON, 404, "'nope'"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(
    server: SageMakerServer, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    got, answer = server.post(body, headers)
    assert got == status, answer
    assert reason in json.loads(answer)["error"]


def test_a_payload_over_the_limit_is_413(server: SageMakerServer) -> None:
    """SAGEMAKER_MAX_PAYLOAD_IN_MB=1: a body just under it runs, one over it is 413."""
    line = json.dumps({"model": "counting-lm", "tokens": [1] * 200}).encode() + b"\n"
    under = line * ((1 << 20) // len(line))
    status, body = server.post(under, JSONL)
    assert status == 200
    assert len(body.splitlines()) == under.count(b"\n")
    before = server.metric(
        "batchmaker_request_failure_total", protocol="sagemaker", reason="RESOURCE_EXHAUSTED"
    )
    status, body = server.post(under + line, JSONL)
    assert status == 413
    assert "larger than this endpoint's limit of 1 MB" in json.loads(body)["error"]
    after = server.metric(
        "batchmaker_request_failure_total", protocol="sagemaker", reason="RESOURCE_EXHAUSTED"
    )
    assert after - before == 1


def test_sigterm_during_an_invocation_lets_it_finish(tmp_path: Path) -> None:
    """SIGTERM while a JSON Lines invocation runs: new calls get 503 and /ping 503 at once,
    the invocation's records all finish and are answered, then the server exits 0."""
    repo = tmp_path / "model"
    shutil.copytree(DEMO_REPOSITORY / "counting-lm", repo / "counting-lm")
    # One row and one step per plan: the invocation takes seconds, not milliseconds. Room
    # for every record live (the default limit would be 4 x the max batch of 1), and no
    # more records than a call runs at once, so every one has started at the SIGTERM.
    s = SageMakerServer(
        repo,
        tmp_path / "log",
        BATCHMAKER_MAX_BATCH="1",
        BATCHMAKER_MAX_LIVE="256",
        BATCHMAKER_MAX_STEPS_PER_PLAN="1",
        BATCHMAKER_GRACE_S="60",
    )
    try:
        s.wait_ready()
        n = SageMakerConfig().max_records_in_flight
        records = [{"id": i, "tokens": [(i + j) % 31 for j in range(100)]} for i in range(n)]
        body = "\n".join(json.dumps(r) for r in records).encode()
        result: dict[str, Any] = {}
        call = threading.Thread(target=lambda: result.update(r=s.post(body, JSONL)))
        call.start()
        deadline = time.monotonic() + 60
        while (
            s.metric("batchmaker_num_requests_running")
            + s.metric("batchmaker_num_requests_waiting")
            < len(records) // 2
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        refused = None
        while s.proc.poll() is None and call.is_alive():
            if (ping := s.ping()) is not None and ping != 200:
                with contextlib.suppress(OSError):  # or it has closed the port already
                    refused = s.post(json.dumps(records[0]).encode(), JSON)[0]
                break
            time.sleep(0.01)
        call.join(120)
        status, answer = result["r"]
        assert status == 200, answer
        answers = [json.loads(line) for line in answer.splitlines()]
        assert [a["id"] for a in answers] == [r["id"] for r in records]
        assert all("error" not in a for a in answers)
        assert refused in (503, None)  # None: it drained before a second call could land
    finally:
        assert s.stop() == 0
