"""Structured logs: the real server's stderr, one JSON object per line, with request ids.

The server runs as a subprocess with ``--log-format json --log-level INFO``, as a
container would; every line it writes must parse, the access log must have one line
per call with its id, model, status and timings, and no request payload may appear.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from batchmaker.bench.launcher import ServerProcess
from batchmaker.client import Client
from batchmaker.errors import InvalidRequestError, ModelNotFoundError
from batchmaker.server import logs

CALL_TIMEOUT_S = 10.0
PAYLOAD = [937, 281, 746, 593]
"""Distinctive token ids: they must not show up in any log line."""


def test_json_logs_have_one_access_line_per_call_and_no_payloads() -> None:
    args = ["--models=lstm-lm", "--model-repository=none", "--log-level=INFO"]
    with ServerProcess([*args, "--log-format=json"]) as proc:
        with Client(proc.address) as client:
            client.infer_stream("lstm-lm", PAYLOAD, request_id="client-id-1").collect()
            client.infer("lstm-lm", PAYLOAD[:2], timeout=CALL_TIMEOUT_S)
            with pytest.raises(InvalidRequestError):
                client.infer("lstm-lm", [10**9], request_id="bad-1", timeout=CALL_TIMEOUT_S)
            with pytest.raises(ModelNotFoundError):
                client.infer("nope", PAYLOAD, timeout=CALL_TIMEOUT_S)
        proc.terminate()
        returncode, err = proc.wait()
    assert returncode == 0
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, "the server logged nothing at INFO"
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r)
        assert r["ts"].endswith("+00:00")
    access = [r for r in records if r["logger"] == "batchmaker.access"]
    assert len(access) == 4
    first, unary, bad, unknown = access
    assert first["method"] == "InferStream"
    assert first["request_id"] == "client-id-1"
    assert (first["model"], first["version"], first["status"]) == ("lstm-lm", "1", "OK")
    assert first["steps"] == len(PAYLOAD)
    assert first["duration_ms"] >= first["ttfo_ms"] >= first["queue_ms"] >= 0
    # The server assigned an id, and logged it.
    assert unary["method"] == "Infer"
    assert unary["request_id"]
    assert unary["steps"] == 2
    assert (bad["request_id"], bad["status"]) == ("bad-1", "INVALID_ARGUMENT")
    assert unknown["status"] == "NOT_FOUND"
    assert "model" not in unknown  # an unknown name is neither a label nor a log field
    text = err
    for payload in (str(PAYLOAD), " ".join(map(str, PAYLOAD)), str(PAYLOAD[:2])):
        assert payload not in text


def test_records_inside_a_call_carry_its_request_id() -> None:
    """In-process: the filter stamps whatever a call's task logs, and nothing outside."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("batchmaker.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        token = logs.request_id.set("req-42")
        logger.info("inside %s", "a call", extra={"steps": 3})
        logs.request_id.reset(token)
        logger.info("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    inside, outside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["msg"] == "inside a call"
    assert inside["request_id"] == "req-42"
    assert inside["steps"] == 3
    assert "request_id" not in outside
    assert "ValueError: boom" in failed["exc"]


def test_text_format_is_one_line_with_fields() -> None:
    record = logging.LogRecord("batchmaker.access", logging.INFO, "", 0, "Infer %s", ("OK",), None)
    record.request_id = "r1"
    record.steps = 2
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO batchmaker.access: Infer OK request_id=r1 steps=2")
    with pytest.raises(ValueError, match="log format"):
        logs.configure(logging.INFO, "xml")
