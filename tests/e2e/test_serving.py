"""End to end over a real channel: outputs, streaming, metadata and the standard services.

The headline check: many concurrent streams of different lengths over gRPC
give, request for request, what the in-process engine gives, and both equal
plain torch run on each request alone.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import GUARD_S, collect, make_inputs
from live_server import LiveServer, e2e_config, e2e_models
from reference import TOL, assert_matches_alone, max_abs_diff

from batchmaker import Engine, InferRequest, SequenceModel, StepOutput, recurrent_model
from batchmaker.client import AsyncClient, Client
from batchmaker.v1 import inference_pb2 as pb


def _requests(seed: int, n: int) -> list[tuple[SequenceModel, list[int] | np.ndarray]]:
    """``n`` requests over every served model and version, lengths 1..64."""
    rng = np.random.default_rng(seed)
    models = e2e_models()
    out = []
    for i in range(n):
        model = models[i % len(models)]
        length = int(rng.integers(1, model.max_input_len + 1))
        out.append((model, make_inputs(model, rng, length)))
    return out


async def _over_grpc(
    address: str, requests: list[tuple[SequenceModel, list[int] | np.ndarray]]
) -> list[list[StepOutput]]:
    async with AsyncClient(address) as client:

        async def one(model: SequenceModel, inputs: list[int] | np.ndarray) -> list[StepOutput]:
            stream = client.infer_stream(
                model.name, inputs, version=model.version, top_k=3, return_vectors=True
            )
            return [s async for s in stream]

        return await asyncio.gather(*(one(m, x) for m, x in requests))


async def _in_process(
    requests: list[tuple[SequenceModel, list[int] | np.ndarray]],
) -> list[list[StepOutput]]:
    async with Engine(e2e_config(), e2e_models()) as engine:
        streams = [
            engine.submit(InferRequest(m.name, x, version=m.version, top_k=3)) for m, x in requests
        ]
        return list(await asyncio.gather(*(collect(s) for s in streams)))


def test_concurrent_streams_equal_the_in_process_engine_and_plain_torch(live: LiveServer) -> None:
    requests = _requests(seed=0, n=32)
    before = live.free_slots()
    remote = asyncio.run(_over_grpc(live.address, requests))
    local = asyncio.run(_in_process(requests))
    for (model, inputs), got, want in zip(requests, remote, local, strict=True):
        assert [s.step for s in got] == [s.step for s in want]
        assert (
            max_abs_diff(np.stack([s.vector for s in got]), np.stack([s.vector for s in want]))
            < TOL
        )
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.top_ids, w.top_ids)
        assert_matches_alone(model, inputs, got)
    live.wait_idle()
    assert live.free_slots() == before


def test_unary_equals_stream(client: Client) -> None:
    model = e2e_models()[2]  # gru
    inputs = [3, 1, 4, 1, 5, 9, 2, 6]
    result = client.infer("gru", inputs, top_k=2, return_vectors=True)
    assert result.finish_reason == "completed"
    assert (result.model, result.version) == ("gru", "1")
    assert_matches_alone(model, inputs, result.steps)
    streamed = list(client.infer_stream("gru", inputs, top_k=2, return_vectors=True))
    for a, b in zip(result.steps, streamed, strict=True):
        np.testing.assert_array_equal(a.vector, b.vector)
        np.testing.assert_array_equal(a.top_ids, b.top_ids)


def test_vector_model_over_the_wire(client: Client) -> None:
    model = e2e_models()[3]
    inputs = np.random.default_rng(5).standard_normal((9, 6)).astype(np.float32)
    assert_matches_alone(model, inputs, client.infer("vec", inputs, return_vectors=True).steps)


def test_default_top_k_is_one_and_vectors_are_opt_in(client: Client) -> None:
    steps = client.infer("lstm", [1, 2, 3]).steps
    assert all(s.vector is None and s.top_ids is not None and len(s.top_ids) == 1 for s in steps)
    only_vectors = client.infer("lstm", [1, 2, 3], top_k=0, return_vectors=True).steps
    assert all(s.top_ids is None and s.vector is not None for s in only_vectors)


def test_versions_latest_and_pinned(client: Client) -> None:
    v1, v2 = e2e_models()[:2]
    inputs = [7, 8, 9, 10]
    latest = client.infer_stream("lstm", inputs, return_vectors=True)
    steps = list(latest)
    assert latest.version == "2"
    assert_matches_alone(v2, inputs, steps)
    pinned = client.infer("lstm", inputs, version=1, return_vectors=True)
    assert pinned.version == "1"
    assert_matches_alone(v1, inputs, pinned.steps)


def test_max_output_length_caps_the_stream(client: Client) -> None:
    model = e2e_models()[2]
    inputs = list(range(10))
    stream = client.infer_stream("gru", inputs, max_output_length=4, return_vectors=True)
    steps = list(stream)
    assert stream.finish_reason == "length"
    assert_matches_alone(model, inputs[:4], steps)
    whole = client.infer_stream("gru", inputs[:4], max_output_length=4)
    assert len(list(whole)) == 4
    assert whole.finish_reason == "completed"  # the cap did not cut anything


def test_request_id_is_echoed_or_assigned(client: Client) -> None:
    mine = client.infer_stream("gru", [1, 2], request_id="client-42")
    list(mine)
    assert mine.id == "client-42"
    # Two clients may pick the same id: ids are the client's, not the engine's key.
    a = client.infer_stream("gru", list(range(30)), request_id="same")
    b = client.infer_stream("gru", list(range(30)), request_id="same")
    assert len(list(a)) == len(list(b)) == 30
    assigned = client.infer("gru", [1, 2])
    assert assigned.id not in ("", "client-42")


def test_a_slow_reader_gets_several_steps_per_message() -> None:
    """A client that stops reading fills its flow-control window; the handler's write then
    waits, the engine runs on regardless, and the backlog leaves in fewer, larger messages.
    Every step arrives, in order, once."""
    wide = recurrent_model("wide", "gru", vocab_size=20_000, hidden_size=8, seed=9)
    num_steps = 60  # 80 kB of scores per step: 4.8 MB in all, far beyond any window
    with LiveServer([wide]) as live:
        # No BDP probing: the client's window stays at its initial 64 kB instead of growing
        # to take the whole stream, so the handler's writes must wait for the reader.
        client = live.client(options=[("grpc.http2.bdp_probe", 0)])
        stream = client.infer_stream(
            "wide", list(range(num_steps)), top_k=0, return_vectors=True, timeout=GUARD_S
        )
        messages = stream.messages()
        first = next(messages)
        live.wait_until(lambda: live.server.engine.num_live == 0)  # ran to the end unread
        sizes = [len(first)] + [len(m) for m in messages]
        assert sum(sizes) == num_steps
        # At most a few messages fit the window before the engine finished; the rest of the
        # backlog left in messages of up to the 1 MiB budget (13 steps of 80 kB).
        assert len(sizes) <= 10, f"the backlog was not coalesced: {sizes}"
        assert max(sizes) <= (1024 * 1024) // (4 * 20_000)
        assert stream.finish_reason == "completed"


def test_stream_messages_stay_under_the_message_budget() -> None:
    """Full vectors are large: however the steps group, no message exceeds the server's
    per-message budget by more than one step, and every step arrives once, in order."""
    from batchmaker.config import ServerConfig

    budget = 2048
    cfg = ServerConfig(port=0, warmup=False, max_stream_message_bytes=budget)
    with LiveServer(gated=True, server_config=cfg) as live:
        gate = live.gate
        assert gate is not None
        stream = live.client().infer_stream(
            "vec", np.zeros((60, 6), np.float32), return_vectors=True, timeout=GUARD_S
        )
        gate.allow(60)
        live.run(gate.wait_done(60))
        live.wait_until(lambda: live.server.engine.num_live == 0)
        raw = list(stream._call)  # the proto messages themselves
        assert [s.index for m in raw for s in m.steps] == list(range(60))
        one_step = raw[0].steps[0].ByteSize()
        assert max(m.ByteSize() for m in raw) <= budget + one_step


def test_model_and_server_metadata(client: Client) -> None:
    meta = client.model_metadata("lstm")
    assert (meta.name, meta.version, list(meta.versions)) == ("lstm", "2", ["1", "2"])
    assert meta.family == "lstm"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("tokens", "INT64", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("scores", "FP32", [50])]
    assert meta.limits.max_input_length == 64
    assert meta.limits.max_output_length == 64
    assert meta.limits.vocab_size == 50
    assert [(c.name, c.max_batch) for c in meta.cell_types] == [("step", 8)]
    assert client.model_metadata("lstm", 1).version == "1"
    vec = client.model_metadata("vec")
    assert [(t.name, t.datatype, list(t.shape)) for t in vec.inputs] == [
        ("vectors", "FP32", [-1, 6])
    ]
    assert vec.limits.vocab_size == 0

    server = client.server_metadata()
    assert server.name == "batchmaker"
    assert server.batching_mode == "cellular"
    assert list(server.devices) == ["cpu"]
    assert {m.name: list(m.versions) for m in server.models} == {
        "gru": ["1"],
        "lstm": ["1", "2"],
        "vec": ["1"],
    }


def test_health_and_reflection_for_stock_tools(live: LiveServer) -> None:
    with grpc.insecure_channel(live.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "batchmaker.v1.Inference"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        (resp,) = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in resp.list_services_response.service}
        assert {"batchmaker.v1.Inference", "grpc.health.v1.Health"} <= names
        (resp,) = reflect.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="batchmaker.v1.Inference"
                    )
                ]
            ),
            timeout=5,
        )
        assert resp.file_descriptor_response.file_descriptor_proto, "no descriptor for grpcurl"


def test_async_client_unary_stream_and_metadata(live: LiveServer) -> None:
    model = e2e_models()[2]

    async def main() -> None:
        async with AsyncClient(live.address) as client:
            assert await client.is_serving()
            result = await client.infer("gru", [1, 2, 3], return_vectors=True)
            assert_matches_alone(model, [1, 2, 3], result.steps)
            stream = client.infer_stream("gru", [1, 2, 3], return_vectors=True)
            assert_matches_alone(model, [1, 2, 3], (await stream.collect()).steps)
            assert stream.finish_reason == "completed"
            assert (await client.model_metadata("gru")).family == "gru"
            assert (await client.server_metadata()).name == "batchmaker"

    asyncio.run(main())


@pytest.mark.parametrize("reason", ["completed", "length"])
def test_finish_reason_sits_on_the_last_message_only(client: Client, reason: str) -> None:
    stream = client.infer_stream(
        "gru", list(range(6)), max_output_length=3 if reason == "length" else 0
    )
    raw = list(stream._call)  # the proto messages themselves
    assert raw[-1].finish_reason == (
        pb.FINISH_REASON_LENGTH if reason == "length" else pb.FINISH_REASON_COMPLETED
    )
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in raw[:-1])
