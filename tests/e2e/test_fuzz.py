"""Fuzzing the wire: random and malformed requests get a clean answer, and the server is unhurt.

Hypothesis builds ``InferRequest`` messages that are anything from valid to
absurd (junk model names and versions, token ids across all of int64, vectors of
any width holding NaN, Inf or huge values, no input, limits anywhere in int32,
ids longer than allowed), plus raw byte strings that may or may not parse. Each
goes to the live server, and the answer is judged against the proto's contract
alone (``verdict``): a valid request succeeds with well-formed output (equal to
plain torch where no overflow can blur the comparison); an invalid one fails
with INVALID_ARGUMENT, one naming a model or version the server lacks with
NOT_FOUND. Never INTERNAL, UNKNOWN or a hang for a message that parses.
Afterwards the server still serves correctly, no request is live and every state
slot is back.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from harness import make_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from live_server import LiveServer, e2e_models
from reference import assert_matches_alone

from batchmaker import SequenceModel
from batchmaker.client import Client
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc
from batchmaker.wire import v1 as wire

MODELS: dict[str, dict[int, SequenceModel]] = {}
for _m in e2e_models():
    MODELS.setdefault(_m.name, {})[_m.version] = _m

CALL_TIMEOUT_S = 5.0
"""Deadline of each fuzzed call: a valid request runs in milliseconds, so hitting it is a hang."""
GARBAGE_STATUS = grpc.StatusCode.UNKNOWN
"""What grpc.aio answers for a body that does not parse (the handler never runs)."""
INFER_STREAM = "/batchmaker.v1.Inference/InferStream"
INFER = "/batchmaker.v1.Inference/Infer"

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e300, 1e-45, -0.0]


# ---- strategies ---------------------------------------------------------------------
#
# Each field has a sane strategy (what a correct client sends) and a wild one. A "tame"
# example takes every field sane but for the odd one, so about half of those are valid
# requests and many of the rest have exactly one thing wrong; a wild example takes any
# field from either, so most of them are wrong in several ways at once.

SANE = {
    "model_name": st.sampled_from(sorted(MODELS)),
    "model_version": st.sampled_from(["", "1"]),
    "id": st.one_of(st.just(""), st.text(max_size=wire.MAX_REQUEST_ID_LEN)),
    "max_output_length": st.one_of(st.just(0), st.integers(0, 64)),
    "top_k": st.one_of(st.none(), st.integers(0, 11)),
}
WILD = {
    "model_name": st.one_of(
        st.sampled_from(["", "LSTM", "lstm ", "lstm@1", "vec/1", "gru\x00", "nope"]),
        st.text(max_size=30),
    ),
    "model_version": st.one_of(
        st.sampled_from(["0", "2", "3", "7", "01", "-1", "+1", " 1", "1.0", "abc", "\u0661"]),
        st.sampled_from(["\u00b2", "9" * 40, "9" * 5000, "0" * 30 + "1"]),
        st.integers(0, 10**40).map(str),
        st.text(max_size=12),
    ),
    "id": st.one_of(st.text(max_size=200), st.text("x", min_size=127, max_size=130)),
    "max_output_length": st.one_of(st.integers(-2, 70), INT32),
    "top_k": st.one_of(st.integers(-2, 55), INT32),
}
SANE_TOKEN_IDS = st.lists(st.integers(0, 49), min_size=1, max_size=64)
WILD_TOKEN_IDS = st.lists(st.one_of(st.integers(-3, 60), INT64), max_size=70)


def _field(draw: st.DrawFn, name: str, tame: bool) -> Any:
    sane = draw(st.integers(0, 9), label=f"{name}_sane") > 0 if tame else draw(st.booleans())
    return draw(SANE[name] if sane else WILD[name], label=name)


@st.composite
def vector_sequences(draw: st.DrawFn, tame: bool = False) -> pb.VectorSequence:
    """``[T, 6]`` normal vectors when tame; otherwise any ``dim`` and count of values, at any
    scale, with NaN, Inf, huge or tiny ones dropped in at random places."""
    if tame:
        dim, n, scale = 6, 6 * draw(st.integers(1, 64), label="rows"), 1.0
    else:
        dim = draw(st.one_of(st.just(6), st.integers(-3, 9), INT32), label="dim")
        if 1 <= dim <= 9 and draw(st.booleans(), label="whole_rows"):
            n = draw(st.integers(0, 70), label="rows") * dim
        else:
            n = draw(st.integers(0, 80), label="num_values")
        scale = draw(st.sampled_from([1.0, 1e3, 1e30]), label="scale")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    values = (np.random.default_rng(seed).standard_normal(n) * scale).tolist()
    if n and not tame:
        specials = st.tuples(st.integers(0, n - 1), st.sampled_from(SPECIAL_FLOATS))
        for i, v in draw(st.lists(specials, max_size=3), label="specials"):
            values[i] = v
    return pb.VectorSequence(dim=dim, values=values)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.InferRequest:
    """Any ``InferRequest``, valid or wrong in one or many ways."""
    tame = draw(st.booleans(), label="tame")
    msg = pb.InferRequest(
        model_name=_field(draw, "model_name", tame),
        model_version=_field(draw, "model_version", tame),
        id=_field(draw, "id", tame),
        max_output_length=_field(draw, "max_output_length", tame),
        priority=draw(INT32, label="priority"),
        return_vectors=draw(st.booleans(), label="return_vectors"),
    )
    top_k = _field(draw, "top_k", tame)
    if top_k is not None:
        msg.top_k = top_k
    versions = MODELS.get(msg.model_name)
    matching = next(iter(versions.values())).cell.input_kind if versions else "tokens"
    sane_input = draw(st.integers(0, 9), label="input_sane") > 0 if tame else False
    kind = matching if sane_input else draw(st.sampled_from(["tokens", "vectors", None]))
    if kind == "tokens":
        msg.tokens.ids.extend(draw(SANE_TOKEN_IDS if sane_input else WILD_TOKEN_IDS))
    elif kind == "vectors":
        msg.vectors.CopyFrom(draw(vector_sequences(tame=sane_input), label="vectors"))
    return msg


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, or a serialized request cut short, with a byte changed, or with bytes
    spliced in: some parse and some do not."""
    if draw(st.booleans(), label="from_scratch"):
        return draw(st.binary(max_size=64), label="bytes")
    body = bytearray(draw(infer_requests(), label="request").SerializeToString())
    at = draw(st.integers(0, len(body)), label="at")
    how = draw(st.sampled_from(["truncate", "flip", "splice"]), label="mutation")
    if how == "truncate":
        del body[at:]
    elif how == "flip" and at < len(body):
        body[at] ^= draw(st.integers(1, 255), label="xor")
    else:
        body[at:at] = draw(st.binary(min_size=1, max_size=8), label="spliced")
    return bytes(body)


# ---- the contract ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the contract says of a request: served by ``model``, or failing with a code in
    ``codes``."""

    model: SequenceModel | None
    codes: frozenset[grpc.StatusCode]


ABSURD_VERSION = sys.maxsize
"""Stands for any version of more digits than int64 holds (no ``int()``: Python refuses to
parse over 4300 digits, and this process is the server's too)."""


def _version(text: str) -> int | bool | None:
    """``None`` for the latest, the number, or ``False`` when it is not a version number."""
    if not text:
        return None
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit() and digits):
        return False
    return int(digits) if len(digits) <= 18 else ABSURD_VERSION


def _input_fits(msg: pb.InferRequest, model: SequenceModel) -> bool:
    cell = model.cell
    which = msg.WhichOneof("input")
    if which == "tokens":
        ids = list(msg.tokens.ids)
        return (
            cell.input_kind == "tokens"
            and 1 <= len(ids) <= model.max_input_len
            and all(0 <= i < cell.input_dim for i in ids)
        )
    values = np.array(msg.vectors.values, dtype=np.float32)
    return (
        cell.input_kind == "vectors"
        and msg.vectors.dim == cell.input_dim
        and 1 <= len(values) // cell.input_dim <= model.max_input_len
        and bool(np.isfinite(values).all())
    )


def verdict(msg: pb.InferRequest) -> Verdict:
    """The outcome the proto promises for ``msg``, from the message and the served models.

    Where a request is both malformed and names a model the server lacks, either code keeps
    the contract (it does not say which check comes first).
    """
    invalid = False
    missing = False
    version = _version(msg.model_version)
    invalid |= version is False or not msg.model_name or len(msg.id) > wire.MAX_REQUEST_ID_LEN
    which = msg.WhichOneof("input")
    if which is None:
        invalid = True
    elif which == "vectors":
        dim = msg.vectors.dim
        invalid |= dim < 1 or len(msg.vectors.values) % dim != 0
    top_k = msg.top_k if msg.HasField("top_k") else wire.DEFAULT_TOP_K
    invalid |= msg.max_output_length < 0 or top_k < 0
    model = None
    versions = MODELS.get(msg.model_name)
    if msg.model_name and versions is None:
        missing = True
    elif versions is not None and version is not False:
        model = versions[max(versions)] if version is None else versions.get(version)
        missing = model is None
    if model is not None and not invalid:
        invalid = (
            not _input_fits(msg, model)
            or top_k > model.cell.output_dim
            or msg.max_output_length > model.signature.max_output_length
        )
    if not (invalid or missing):
        return Verdict(model, frozenset())
    codes = set()
    if version == ABSURD_VERSION:  # no such version, or no version number it accepts: either
        codes.add(grpc.StatusCode.INVALID_ARGUMENT)
    if invalid:
        codes.add(grpc.StatusCode.INVALID_ARGUMENT)
    if missing:
        codes.add(grpc.StatusCode.NOT_FOUND)
    return Verdict(None, frozenset(codes))


def check_served(
    msg: pb.InferRequest, model: SequenceModel, replies: list[pb.InferResponse]
) -> None:
    """A served request's replies: every step once, in order, each as asked for, equal to plain
    torch when the inputs are tame; the finish reason on the last message only."""
    cell = model.cell
    if msg.WhichOneof("input") == "tokens":
        inputs: Any = np.array(msg.tokens.ids, dtype=np.int64)
    else:
        inputs = np.array(msg.vectors.values, dtype=np.float32).reshape(-1, cell.input_dim)
    cap = msg.max_output_length
    n = min(len(inputs), cap) if cap else len(inputs)
    steps = [s for r in replies for s in r.steps]
    assert [s.index for s in steps] == list(range(n))
    want_finish = (
        pb.FINISH_REASON_LENGTH if cap and cap < len(inputs) else pb.FINISH_REASON_COMPLETED
    )
    assert [r.finish_reason for r in replies] == [pb.FINISH_REASON_UNSPECIFIED] * (
        len(replies) - 1
    ) + [want_finish]
    for r in replies:
        assert (r.model_name, r.model_version) == (model.name, str(model.version))
        assert r.id, "the server assigns an id when the client sends none"
        assert r.id == (msg.id or r.id)
    k = msg.top_k if msg.HasField("top_k") else wire.DEFAULT_TOP_K
    for s in steps:
        assert len(s.top_ids) == len(s.top_scores) == k
        assert len(set(s.top_ids)) == k
        assert all(0 <= i < cell.output_dim for i in s.top_ids)
        assert len(s.vector) == (cell.output_dim if msg.return_vectors else 0)
    if np.all(np.abs(inputs) <= 100):  # tokens, or vectors that no overflow could make NaN
        assert_matches_alone(model, inputs[:n], [wire.step_from_pb(s) for s in steps])


def check_failed(exc: grpc.RpcError, codes: frozenset[grpc.StatusCode]) -> None:
    assert codes, f"a valid request failed: {exc.code()} {exc.details()!r}"
    assert exc.code() in codes, f"{exc.code()} {exc.details()!r}, expected one of {set(codes)}"


# ---- the server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(live: LiveServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live.address) as ch:
        yield ch


def assert_unhurt(live: LiveServer, client: Client, before: dict[str, int]) -> None:
    """No request is live, every slot is back, and a valid request equals plain torch."""
    live.wait_idle()
    assert live.num_live() == 0
    assert live.free_slots() == before
    rng = np.random.default_rng(3)
    for name, version in [("lstm", 1), ("lstm", 2), ("vec", 1)]:
        model = MODELS[name][version]
        inputs = make_inputs(model, rng, 20)
        stream = client.infer_stream(
            name, inputs, version=version, top_k=3, return_vectors=True, timeout=CALL_TIMEOUT_S
        )
        assert_matches_alone(model, inputs, list(stream))
        result = client.infer(
            name, inputs, version=version, return_vectors=True, timeout=CALL_TIMEOUT_S
        )
        assert_matches_alone(model, inputs, result.steps)


def test_the_verdict_itself() -> None:
    """The oracle the fuzzing trusts, on cases whose answer is known."""
    ok = pb.InferRequest(model_name="gru", tokens=pb.TokenSequence(ids=[1, 2]))
    assert verdict(ok) == Verdict(MODELS["gru"][1], frozenset())
    assert verdict(pb.InferRequest(model_name="lstm", model_version="1", tokens=ok.tokens)).model
    for bad in [
        pb.InferRequest(model_name="gru"),
        pb.InferRequest(model_name="gru", tokens=pb.TokenSequence(ids=[50])),
        pb.InferRequest(model_name="vec", vectors=pb.VectorSequence(dim=6, values=[math.nan] * 6)),
        pb.InferRequest(model_name="gru", top_k=51, tokens=ok.tokens),
        pb.InferRequest(model_name="gru", model_version="0", tokens=ok.tokens),
    ]:
        assert verdict(bad).codes == {grpc.StatusCode.INVALID_ARGUMENT}, bad
    missing = pb.InferRequest(model_name="gru", model_version="2", tokens=ok.tokens)
    assert verdict(missing).codes == {grpc.StatusCode.NOT_FOUND}
    both = pb.InferRequest(model_name="nope", id="x" * 129, tokens=ok.tokens)
    assert verdict(both).codes == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def test_fuzzed_requests_get_a_clean_answer(live: LiveServer, channel: grpc.Channel) -> None:
    """Streaming always, unary for some: success as the contract says, or its error code."""
    stub = pb_grpc.InferenceStub(channel)
    client = live.client()
    live.wait_idle()
    before = live.free_slots()
    outcomes: Counter[str] = Counter()

    @settings(max_examples=800, deadline=None)
    @given(msg=infer_requests(), unary=st.booleans())
    def send(msg: pb.InferRequest, unary: bool) -> None:
        expect = verdict(msg)
        try:
            replies = list(stub.InferStream(msg, timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            check_failed(exc, expect.codes)
            outcomes[exc.code().name] += 1
        else:
            assert expect.model is not None, f"served, but expected {set(expect.codes)}"
            check_served(msg, expect.model, replies)
            outcomes["served"] += 1
        if not unary:
            return
        try:
            reply = stub.Infer(msg, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            check_failed(exc, expect.codes)
        else:
            assert expect.model is not None, f"served, but expected {set(expect.codes)}"
            check_served(msg, expect.model, [reply])

    send()
    # The strategies still reach every outcome (about a third of the requests are served).
    assert outcomes["served"] >= 50, outcomes
    assert outcomes["INVALID_ARGUMENT"] >= 50, outcomes
    assert outcomes["NOT_FOUND"] >= 10, outcomes
    assert_unhurt(live, client, before)


def test_fuzzed_bytes_get_a_clean_answer(live: LiveServer, channel: grpc.Channel) -> None:
    """Raw bodies: what does not parse fails with gRPC's status for that; what parses is
    answered as that request."""
    client = live.client()
    live.wait_idle()
    before = live.free_slots()
    stream_raw = channel.unary_stream(INFER_STREAM)
    unary_raw = channel.unary_unary(INFER)
    outcomes: Counter[str] = Counter()

    @settings(max_examples=500, deadline=None)
    @given(body=raw_bodies(), unary=st.booleans())
    def send(body: bytes, unary: bool) -> None:
        try:
            msg: pb.InferRequest | None = pb.InferRequest.FromString(body)
        except DecodeError:
            msg = None
        expect = verdict(msg) if msg is not None else Verdict(None, frozenset({GARBAGE_STATUS}))
        outcomes["parsed" if msg is not None else "unparsable"] += 1
        call = unary_raw if unary else stream_raw
        try:
            reply = call(body, timeout=CALL_TIMEOUT_S)
            replies = [pb.InferResponse.FromString(b) for b in ([reply] if unary else reply)]
        except grpc.RpcError as exc:
            check_failed(exc, expect.codes)
        else:
            assert msg is not None, "served, but the body does not parse"
            assert expect.model is not None, f"served, but expected {set(expect.codes)}"
            check_served(msg, expect.model, replies)

    send()
    assert outcomes["parsed"] >= 50, outcomes
    assert outcomes["unparsable"] >= 50, outcomes
    assert_unhurt(live, client, before)
