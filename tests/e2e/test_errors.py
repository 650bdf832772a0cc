"""Every bad request gets its status and a message naming the field, and nothing else is lost.

The proto's error contract, checked over a real channel: each kind of malformed
input ends with INVALID_ARGUMENT, an unknown model or version with NOT_FOUND,
an oversized message with RESOURCE_EXHAUSTED, on the streaming and the unary
path alike, and the client raises the matching typed error. A rejected request
must cost the server nothing: after each one it still serves a valid request
exactly as plain torch computes it, every state slot is back, and streams that
were in flight when the bad request arrived complete untouched.

Requests the client refuses to build (vectors that do not fill rows, no input at
all) go through the raw generated stub; bytes that are not a protobuf go through
a raw channel method with no serializer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from harness import make_inputs
from live_server import LiveServer, e2e_models
from reference import assert_matches_alone

from batchmaker.client import Client
from batchmaker.config import ServerConfig
from batchmaker.errors import (
    AdmissionRejectedError,
    BatchMakerError,
    Code,
    InvalidRequestError,
    ModelNotFoundError,
)
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc

MODELS = {(m.name, m.version): m for m in e2e_models()}
CALL_TIMEOUT_S = 10.0
"""Deadline of every call here: a server that never answers fails the test, not the run."""

PATHS = ["stream", "unary"]
TYPED: dict[Code, type[BatchMakerError]] = {
    Code.INVALID_ARGUMENT: InvalidRequestError,
    Code.NOT_FOUND: ModelNotFoundError,
    Code.RESOURCE_EXHAUSTED: AdmissionRejectedError,
}
GARBAGE_STATUS = grpc.StatusCode.UNKNOWN
"""What grpc.aio answers for a request body that does not parse as the method's message:
the handler never runs, and the server reports the DecodeError as UNKNOWN."""


# ---- helpers ----------------------------------------------------------------------


def names_field(details: str, field: str) -> bool:
    """The status message names ``field`` as the servicer writes it: ``"field: why"``."""
    return re.search(rf"(?<![\w.]){re.escape(field)}:", details) is not None


def assert_serves(client: Client, seed: int = 0) -> None:
    """A valid stream and a valid unary call both return what plain torch computes."""
    rng = np.random.default_rng(seed)
    lstm, vec = MODELS["lstm", 1], MODELS["vec", 1]
    tokens = make_inputs(lstm, rng, 12)
    stream = client.infer_stream(
        "lstm", tokens, version=1, top_k=3, return_vectors=True, timeout=CALL_TIMEOUT_S
    )
    assert_matches_alone(lstm, tokens, list(stream))
    assert stream.finish_reason == "completed"
    vectors = make_inputs(vec, rng, 9)
    result = client.infer("vec", vectors, top_k=2, return_vectors=True, timeout=CALL_TIMEOUT_S)
    assert (result.model, result.version, result.finish_reason) == ("vec", "1", "completed")
    assert_matches_alone(vec, vectors, result.steps)


@contextmanager
def unharmed(live: LiveServer, client: Client) -> Iterator[None]:
    """Around bad requests: afterwards the server serves correctly, no slot leaked and no
    request is live."""
    live.wait_idle()
    before = live.free_slots()
    yield
    assert_serves(client)
    live.wait_idle()
    assert live.free_slots() == before
    assert live.num_live() == 0


@dataclass(frozen=True)
class Bad:
    """One malformed request: through the client, or as a raw message when ``raw`` is set."""

    field: str
    """What the INVALID_ARGUMENT message must name."""
    model: str = "gru"
    inputs: Any = (1, 2, 3)
    options: tuple[tuple[str, Any], ...] = ()
    raw: pb.InferRequest | None = None


def bad(field: str, model: str, inputs: Any, **options: Any) -> Bad:
    return Bad(field, model, inputs, tuple(options.items()))


def raw(field: str, **fields: Any) -> Bad:
    return Bad(field, raw=pb.InferRequest(**fields))


def vectors(
    rows: int, dim: int = 6, *, at: tuple[int, int] | None = None, value: float = 0.0
) -> np.ndarray:
    """``[rows, dim]`` float32 vectors, with ``value`` at ``at``."""
    x = np.random.default_rng(rows).standard_normal((rows, dim)).astype(np.float32)
    if at is not None:
        x[at] = value
    return x


INVALID: dict[str, Bad] = {
    "empty-sequence": bad("inputs", "gru", []),
    "token-id-too-big": bad("inputs", "gru", [1, 2, 50]),
    "token-id-negative": bad("inputs", "lstm", [-1, 2, 3]),
    "token-id-int64-max": bad("inputs", "lstm", [2**63 - 1]),
    "sequence-over-limit": bad("inputs", "lstm", [1] * 65),
    "vectors-of-width-5": bad("inputs", "vec", vectors(3, 5)),
    "tokens-to-vector-model": bad("inputs", "vec", [1, 2, 3]),
    "vectors-to-token-model": bad("inputs", "lstm", vectors(3)),
    "vector-with-nan": bad("inputs", "vec", vectors(4, at=(2, 3), value=np.nan)),
    "vector-with-inf": bad("inputs", "vec", vectors(4, at=(0, 0), value=np.inf)),
    "vector-with-minus-inf": bad("inputs", "vec", vectors(4, at=(3, 5), value=-np.inf)),
    "values-not-a-multiple-of-dim": raw(
        "vectors.values", model_name="vec", vectors=pb.VectorSequence(dim=6, values=[0.5] * 7)
    ),
    "dim-zero": raw("vectors.dim", model_name="vec", vectors=pb.VectorSequence(dim=0)),
    "dim-negative": raw(
        "vectors.dim", model_name="vec", vectors=pb.VectorSequence(dim=-6, values=[0.5] * 6)
    ),
    "no-input": raw("input", model_name="gru"),
    "negative-max-output-length": bad("max_output_length", "gru", [1, 2], max_output_length=-1),
    "absurd-max-output-length": bad("max_output_length", "gru", [1, 2], max_output_length=10**6),
    "int32-max-output-length": bad("max_output_length", "gru", [1, 2], max_output_length=2**31 - 1),
    "negative-top-k": bad("top_k", "gru", [1, 2], top_k=-1),
    "top-k-over-output-size": bad("top_k", "gru", [1, 2], top_k=51),
    "top-k-over-vector-output-size": bad("top_k", "vec", vectors(2), top_k=12),
    "non-numeric-version": bad("model_version", "lstm", [1, 2], version="abc"),
    "zero-version": bad("model_version", "lstm", [1, 2], version="0"),
    "negative-version": bad("model_version", "lstm", [1, 2], version="-1"),
    "non-ascii-digit-version": bad("model_version", "lstm", [1, 2], version="\u0661"),
    "empty-model-name": bad("model_name", "", [1, 2]),
    "id-of-129-characters": bad("id", "gru", [1, 2], request_id="x" * 129),
}

NOT_FOUND: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # case: (model, version, what the message must mention)
    "unknown-model": ("nope", "", ("'nope'",)),
    "unknown-model-pinned": ("nope", "1", ("'nope'",)),
    "unknown-version": ("lstm", "7", ("'lstm'", "7")),
    "unknown-version-of-single-version-model": ("gru", "2", ("'gru'", "2")),
    "version-of-thirty-digits": ("gru", "9" * 30, ("'gru'", "9" * 30)),
}


def send_raw(stub: Any, msg: pb.InferRequest, path: str) -> Any:
    """``msg`` through the generated stub, every reply read."""
    if path == "stream":
        return list(stub.InferStream(msg, timeout=CALL_TIMEOUT_S))
    return stub.Infer(msg, timeout=CALL_TIMEOUT_S)


def send(client: Client, case: Bad, path: str) -> Any:
    """``case`` through the client, every step read."""
    options = dict(case.options)
    if path == "stream":
        return list(client.infer_stream(case.model, case.inputs, timeout=CALL_TIMEOUT_S, **options))
    return client.infer(case.model, case.inputs, timeout=CALL_TIMEOUT_S, **options)


def fail(client: Client, stub: Any, case: Bad, path: str) -> tuple[grpc.StatusCode, str]:
    """Send ``case`` on ``path``; the status it failed with and the status message.

    Through the client, also checks that the error is the typed one for its code.
    """
    if case.raw is not None:
        with pytest.raises(grpc.RpcError) as rpc:
            send_raw(stub, case.raw, path)
        return rpc.value.code(), rpc.value.details()
    with pytest.raises(BatchMakerError) as info:
        send(client, case, path)
    exc = info.value
    assert type(exc) is TYPED.get(exc.code, BatchMakerError), f"{type(exc)} for {exc.code}"
    return grpc.StatusCode[exc.code.value], exc.message


@pytest.fixture(scope="module")
def channel(live: LiveServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return pb_grpc.InferenceStub(channel)


# ---- INVALID_ARGUMENT ---------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_malformed_request_is_invalid_argument_naming_the_field(
    live: LiveServer, client: Client, stub: Any, case: Bad, path: str
) -> None:
    with unharmed(live, client):
        code, details = fail(client, stub, case, path)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert names_field(details, case.field), details


def test_client_raises_typed_errors_with_their_code(client: Client) -> None:
    """One catchable hierarchy: the same classes the engine raises in-process."""
    with pytest.raises(InvalidRequestError) as invalid:
        client.infer("gru", [99], timeout=CALL_TIMEOUT_S)
    assert invalid.value.code is Code.INVALID_ARGUMENT
    assert str(invalid.value).startswith("INVALID_ARGUMENT: inputs:")
    with pytest.raises(ModelNotFoundError) as missing:
        list(client.infer_stream("nope", [1], timeout=CALL_TIMEOUT_S))
    assert missing.value.code is Code.NOT_FOUND
    assert isinstance(missing.value, BatchMakerError)
    assert not isinstance(missing.value, InvalidRequestError)


@pytest.mark.parametrize("path", PATHS)
def test_limits_in_the_metadata_are_the_ones_enforced(
    live: LiveServer, client: Client, path: str
) -> None:
    """At each limit the request is served; one past it is INVALID_ARGUMENT."""
    limits = client.model_metadata("gru").limits
    model = MODELS["gru", 1]
    at_limit = make_inputs(model, np.random.default_rng(1), limits.max_input_length)
    with unharmed(live, client):
        for inputs, options, field in [
            ([*at_limit, 1], {}, "inputs"),
            ([1, 2], {"max_output_length": limits.max_output_length + 1}, "max_output_length"),
            ([1, 2], {"top_k": limits.max_top_k + 1}, "top_k"),
            ([limits.vocab_size], {}, "inputs"),
        ]:
            code, details = fail(client, None, bad(field, "gru", inputs, **options), path)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert names_field(details, field), details
        options: dict[str, Any] = {
            "max_output_length": limits.max_output_length,
            "top_k": limits.max_top_k,
            "return_vectors": True,
            "timeout": CALL_TIMEOUT_S,
        }
        if path == "stream":
            stream = client.infer_stream("gru", at_limit, **options)
            steps, finish = list(stream), stream.finish_reason
        else:
            result = client.infer("gru", at_limit, **options)
            steps, finish = result.steps, result.finish_reason
        assert finish == "completed"
        assert all(s.top_ids is not None and len(s.top_ids) == limits.max_top_k for s in steps)
        assert_matches_alone(model, at_limit, steps)


# ---- NOT_FOUND ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", NOT_FOUND.values(), ids=NOT_FOUND.keys())
def test_unknown_model_or_version_is_not_found(
    live: LiveServer, client: Client, case: tuple[str, str, tuple[str, ...]], path: str
) -> None:
    model, version, mentions = case
    with unharmed(live, client):
        code, details = fail(client, None, bad("", model, [1, 2], version=version or None), path)
        assert code == grpc.StatusCode.NOT_FOUND, details
        for m in mentions:
            assert m in details, details


@pytest.mark.parametrize(
    ("name", "version", "error", "mention"),
    [
        ("nope", "", ModelNotFoundError, "'nope'"),
        ("lstm", "7", ModelNotFoundError, "7"),
        ("", "", InvalidRequestError, "name:"),
        ("lstm", "abc", InvalidRequestError, "version:"),
        ("lstm", "0", InvalidRequestError, "version:"),
    ],
)
def test_model_metadata_errors(
    live: LiveServer,
    client: Client,
    name: str,
    version: str,
    error: type[BatchMakerError],
    mention: str,
) -> None:
    with unharmed(live, client), pytest.raises(error) as info:
        client.model_metadata(name, version or None, timeout=CALL_TIMEOUT_S)
    assert info.value.code is error.code
    assert mention in info.value.message


# ---- messages gRPC itself refuses -------------------------------------------------------

VALID_BYTES = pb.InferRequest(model_name="gru", tokens=pb.TokenSequence(ids=[1, 2, 3]))
GARBAGE = {
    "not-protobuf": b"\xff\xff\xff\xff",
    "truncated": VALID_BYTES.SerializeToString()[:-1],
    "model-name-not-utf8": b"\x0a\x02\xff\xfe",
}


def send_bytes(channel: grpc.Channel, rpc: str, payload: bytes) -> Any:
    """``payload`` as the body of a call to ``rpc``, serialized by nobody; every reply read."""
    path = f"/batchmaker.v1.Inference/{rpc}"
    if rpc == "InferStream":
        return list(channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT_S))
    return channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize("rpc", ["InferStream", "Infer", "ModelMetadata"])
def test_a_version_of_thousands_of_digits_is_refused_cleanly(
    live: LiveServer, client: Client, channel: grpc.Channel, rpc: str
) -> None:
    """Not a version the server has, whatever it is: INVALID_ARGUMENT or NOT_FOUND."""
    version = "9" * 5000
    body = (
        pb.ModelMetadataRequest(name="gru", version=version)
        if rpc == "ModelMetadata"
        else pb.InferRequest(model_name="gru", model_version=version, tokens={"ids": [1]})
    )
    with unharmed(live, client):
        with pytest.raises(grpc.RpcError) as info:
            send_bytes(channel, rpc, body.SerializeToString())
        codes = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
        assert info.value.code() in codes, info.value.details()


@pytest.mark.parametrize("rpc", ["InferStream", "Infer", "ModelMetadata"])
@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_bytes_that_do_not_parse_fail_and_the_channel_still_serves(
    live: LiveServer, client: Client, channel: grpc.Channel, stub: Any, payload: bytes, rpc: str
) -> None:
    with unharmed(live, client):
        with pytest.raises(grpc.RpcError) as info:
            send_bytes(channel, rpc, payload)
        assert info.value.code() == GARBAGE_STATUS, info.value.details()
        # The same channel carries the next, valid request.
        good = stub.Infer(VALID_BYTES, timeout=CALL_TIMEOUT_S)
        assert [s.index for s in good.steps] == [0, 1, 2]
        assert good.finish_reason == pb.FINISH_REASON_COMPLETED


def test_a_request_over_the_receive_limit_is_resource_exhausted() -> None:
    """gRPC refuses the message before the servicer sees it; one just under the limit reaches
    the model's own checks."""
    limit = 64 * 1024
    with LiveServer(
        server_config=ServerConfig(port=0, warmup=False, max_receive_message_bytes=limit)
    ) as small:
        client = small.client()
        assert client.server_metadata().max_receive_message_bytes == limit
        huge = [1] * 100_000  # one byte per id: about 100 kB
        with unharmed(small, client):
            for path in PATHS:
                code, details = fail(client, None, bad("", "gru", huge), path)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            under = [1] * 60_000
            code, details = fail(client, None, bad("inputs", "gru", under), "stream")
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert names_field(details, "inputs"), details


# ---- nothing else is lost ----------------------------------------------------------------


def test_bad_requests_leave_streams_in_flight_untouched() -> None:
    """Streams are mid-request (the step gate closed) while every kind of bad request arrives
    on both paths; each bad one fails with its status, takes no slot, and the streams then
    complete exactly as plain torch computes them."""
    with LiveServer(gated=True) as live:
        gate = live.gate
        assert gate is not None
        client = live.client()
        idle_slots = live.free_slots()
        rng = np.random.default_rng(7)
        requests = [
            (model, make_inputs(model, rng, int(rng.integers(8, 40))))
            for model in list(MODELS.values()) * 2
        ]
        streams = [
            client.infer_stream(
                m.name, x, version=m.version, top_k=3, return_vectors=True, timeout=60
            )
            for m, x in requests
        ]
        engine = live.server.engine
        live.wait_until(lambda: engine.num_live == len(requests))
        live.run(gate.step())
        live.run(gate.step())
        busy_slots = live.free_slots()
        assert busy_slots != idle_slots

        with grpc.insecure_channel(live.address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            for path in PATHS:
                for case in INVALID.values():
                    code, details = fail(client, stub, case, path)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
                for model, version, _ in NOT_FOUND.values():
                    code, _ = fail(client, None, bad("", model, [1], version=version), path)
                    assert code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as garbage:
                send_bytes(channel, "InferStream", GARBAGE["not-protobuf"])
            assert garbage.value.code() == GARBAGE_STATUS

        assert live.num_live() == len(requests)
        assert live.free_slots() == busy_slots
        assert len(gate.steps) == 2, "a bad request ran a step"
        gate.open()
        for (model, inputs), stream in zip(requests, streams, strict=True):
            assert_matches_alone(model, inputs, list(stream))
            assert stream.finish_reason == "completed"
        assert_serves(client)
        live.wait_idle()
        assert live.free_slots() == idle_slots
