"""KServe v2 over gRPC, end to end: the stock Triton client, and the protocol's edges.

The stock client (``tritonclient.grpc``) runs in a subprocess (``kserve_grpc_client.py``):
its stubs and ours share the ``inference`` message names. Through it, every family's
outputs equal what ``batchmaker.v1`` returns for the same request and what plain torch
computes for the request alone, whole (``ModelInfer``) and step by step on one shared
decoupled stream (``ModelStreamInfer``), with a bad request among them that fails alone.

The edges (bad input, admission, deadlines, cancellation, tokens, metrics, the final
response flags) are driven in this process with our own stubs, as any gRPC client would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from live_server import LiveServer, e2e_config, every_family
from reference import (
    assert_matches_alone,
    assert_seq2seq_matches_alone,
    assert_tree_matches_alone,
)
from v2_outputs import assert_same_as_v1, steps_from, tokens_job

from batchmaker.client import Client
from batchmaker.config import AuthConfig, ServerConfig
from batchmaker.errors import InvalidRequestError
from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc
from batchmaker.types import StepOutput, TreeInput
from batchmaker.wire.kserve import param_to_pb

CLIENT = Path(__file__).with_name("kserve_grpc_client.py")
CALL_TIMEOUT_S = 20.0


MODELS = {(m.name, m.version): m for m in every_family()}
LSTM, GRU, VEC = MODELS[("lstm", 2)], MODELS[("gru", 1)], MODELS[("vec", 1)]
S2S, TREE = MODELS[("s2s", 1)], MODELS[("tree", 1)]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server_config = ServerConfig(port=0, warmup=False, metrics_port=0)
    with LiveServer(every_family, e2e_config(num_slots=128), server_config=server_config) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Client:
    return live.client()


@pytest.fixture(scope="module")
def stub(live: LiveServer) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(live.address) as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def stock_client(job: dict[str, Any]) -> dict[str, Any]:
    """Run the stock Triton client on ``job`` in a fresh interpreter; its JSON answer."""
    done = subprocess.run(
        [sys.executable, str(CLIENT)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# ---- requests as the stock client sends them ---------------------------------------------


def vectors_job(rid: str, x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "model": "vec",
        "inputs": [{"name": "INPUT", "datatype": "FP32", "data": x.tolist()}],
        **extra,
    }


def tree_job(rid: str, tree: TreeInput, **extra: Any) -> dict[str, Any]:
    children = [list(c) + [-1] * (2 - len(c)) for c in tree.children]
    return {
        "id": rid,
        "model": "tree",
        "inputs": [
            {"name": "INPUT_IDS", "datatype": "INT64", "data": list(tree.tokens)},
            {
                "name": "CHILDREN",
                "datatype": "INT64",
                "data": children,
                "shape": [len(children), 2],
            },
        ],
        **extra,
    }


def steps_of(responses: Sequence[dict[str, Any]]) -> list[StepOutput]:
    """A request's responses, in order, as the ``StepOutput``s they carry; checks that
    each starts where the previous one ended."""
    steps: list[StepOutput] = []
    for r in responses:
        if r["outputs"]:
            assert r["parameters"]["first_step"] == len(steps)
            steps += steps_from(r["outputs"], len(steps))
    return steps


# ---- the stock client ---------------------------------------------------------------------


def test_stock_client_health_metadata_config_and_index(live: LiveServer) -> None:
    got = stock_client(
        {
            "address": live.address,
            "health": ["lstm", "tree", "nope"],
            "metadata": ["lstm", "vec", "tree", "s2s"],
            "index": True,
        }
    )
    assert got["health"] == {
        "live": True,
        "ready": True,
        "models": {"lstm": True, "tree": True, "nope": False},
    }
    assert got["server"]["name"] == "batchmaker"
    assert "model_repository" in got["server"]["extensions"]
    lstm = got["metadata"]["lstm"]
    assert lstm["versions"] == ["1", "2"]
    assert lstm["inputs"] == [{"name": "INPUT_IDS", "datatype": "INT64", "shape": ["-1"]}]
    assert [o["name"] for o in lstm["outputs"]] == ["TOP_IDS", "TOP_SCORES", "OUTPUT"]
    assert got["metadata"]["vec"]["inputs"][0]["name"] == "INPUT"
    assert got["metadata"]["vec"]["inputs"][0]["shape"] == [
        "-1",
        str(VEC.signature.inputs[0].shape[-1]),
    ]
    assert [i["name"] for i in got["metadata"]["tree"]["inputs"]] == ["INPUT_IDS", "CHILDREN"]
    config = got["config"]["lstm"]["config"]
    assert config["max_batch_size"] == 8  # e2e_config's max batch
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert config["parameters"]["family"] == {"string_value": "lstm"}
    # A tree has one output step: not a streaming (decoupled) model.
    assert got["config"]["tree"]["config"].get("model_transaction_policy", {}) == {}
    states = {(m["name"], m.get("version", "")): m["state"] for m in got["index"]["models"]}
    assert states[("lstm", "2")] == "READY"


def test_stock_client_outputs_equal_v1_and_plain_torch_on_every_family(
    live: LiveServer, client: Client
) -> None:
    rng = np.random.default_rng(7)
    seqs = {f"lstm-{i}": rng.integers(0, 16, rng.integers(1, 20)).tolist() for i in range(4)}
    x = rng.standard_normal((7, VEC.signature.inputs[0].shape[-1])).astype(np.float32)
    src = rng.integers(0, 30, 9).tolist()
    tree = TreeInput([3, 5, 7, 1, 2], [[1, 2], [3, 4], [], [], []])
    everything = {"outputs": ["TOP_IDS", "TOP_SCORES", "OUTPUT"], "parameters": {"top_k": 3}}
    jobs = [tokens_job(rid, "lstm", ids, **everything) for rid, ids in seqs.items()]
    jobs += [
        tokens_job("gru-0", "gru", seqs["lstm-0"]),  # the defaults: TOP_IDS and TOP_SCORES, k=1
        vectors_job("vec-0", x, **everything),
        tokens_job("s2s-0", "s2s", src, **everything),
        tree_job("tree-0", tree, **everything),
    ]
    bad = tokens_job("bad", "lstm", [1, 10_000])
    per_step = tokens_job("per-step", "lstm", seqs["lstm-1"], parameters={"steps_per_response": 1})
    stream_jobs = [*jobs[:3], bad, *jobs[3:], per_step]
    got = stock_client({"address": live.address, "infer": [*jobs, bad], "stream": stream_jobs})

    # The bad request fails alone, with v1's message and status, in-band on the stream.
    assert got["infer"]["bad"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "10000" in got["infer"]["bad"]["error"]
    (err,) = got["stream_errors"]
    assert err.startswith("[request id: bad] INVALID_ARGUMENT: ")
    with pytest.raises(InvalidRequestError) as v1_error:
        client.infer("lstm", [1, 10_000], timeout=CALL_TIMEOUT_S)
    assert err.endswith(v1_error.value.message)

    def v1(rid: str) -> list[StepOutput]:
        job = next(j for j in jobs if j["id"] == rid)
        k = job.get("parameters", {}).get("top_k", 1)
        vectors = "OUTPUT" in job.get("outputs", [])
        data = job["inputs"][0]["data"]
        if job["model"] == "tree":
            inputs: Any = tree
        elif job["model"] == "vec":
            inputs = x
        else:
            inputs = data[0]
        result = client.infer(
            job["model"], inputs, top_k=k, return_vectors=vectors, timeout=CALL_TIMEOUT_S
        )
        return list(result.steps)

    # One response per step when asked, as a per-token LLM stream does.
    one_each = got["stream"]["per-step"]
    assert len(one_each) == len(seqs["lstm-1"])
    assert [r["parameters"]["first_step"] for r in one_each] == list(range(len(one_each)))
    top1 = client.infer("lstm", seqs["lstm-1"], top_k=1, timeout=CALL_TIMEOUT_S).steps
    assert_same_as_v1(steps_of(one_each), list(top1))

    for job in jobs:
        rid = job["id"]
        whole = got["infer"][rid]
        assert whole["id"] == rid
        assert whole["parameters"]["finish_reason"] in ("completed", "length")
        unary = steps_of([{**whole, "parameters": {**whole["parameters"], "first_step": 0}}])
        responses = got["stream"][rid]
        streamed = steps_of(responses)
        finals = [r["parameters"]["triton_final_response"] for r in responses]
        assert finals == [False] * (len(finals) - 1) + [True], rid
        assert responses[-1]["parameters"]["finish_reason"] == whole["parameters"]["finish_reason"]
        want = v1(rid)
        assert_same_as_v1(unary, want)
        assert_same_as_v1(streamed, want)
        model = job["model"]
        if model == "s2s":
            assert_seq2seq_matches_alone(S2S, src, streamed)
        elif model == "tree":
            assert_tree_matches_alone(TREE, tree, streamed)
        elif model == "vec":
            assert_matches_alone(VEC, x, streamed)
        else:
            m = GRU if model == "gru" else LSTM
            assert_matches_alone(m, job["inputs"][0]["data"][0], streamed)
        # The leading batch dimension the client sent comes back on every output.
        for o in whole["outputs"].values():
            assert o["shape"][0] == 1 or model in ("vec", "tree")
    live.wait_idle()


def test_our_proto_matches_the_stock_clients_wire_format() -> None:
    """Every field we declare has tritonclient's number and type: the protocol is written
    from the spec, not copied, and this is what keeps the two on the same wire."""
    script = """
import json, tritonclient.grpc.service_pb2 as s, tritonclient.grpc.model_config_pb2 as m
out = {}
for mod in (s, m):
    for name, d in mod.DESCRIPTOR.message_types_by_name.items():
        stack = [d]
        while stack:
            d = stack.pop()
            out[d.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
            stack += d.nested_types
methods = s.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
out["methods"] = {x.name: [x.input_type.full_name, x.output_type.full_name] for x in methods}
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    theirs = json.loads(done.stdout)
    ours: dict[str, dict[str, list[Any]]] = {}
    stack = list(kpb.DESCRIPTOR.message_types_by_name.values())
    while stack:
        d = stack.pop()
        ours[d.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
        stack += d.nested_types
    assert len(ours) > 30
    for message, fields in ours.items():
        assert message in theirs, message
        for name, spec in fields.items():
            assert theirs[message].get(name) == spec, f"{message}.{name}"
    service = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        io = [method.input_type.full_name, method.output_type.full_name]
        assert theirs["methods"][method.name] == io, method.name


# ---- the edges, with our own stubs ------------------------------------------------------


def v2_request(
    model: str,
    ids: Sequence[int] | None = None,
    *,
    rid: str = "",
    params: dict[str, Any] | None = None,
    outputs: Sequence[str] = (),
    shape: Sequence[int] | None = None,
    datatype: str = "INT64",
    name: str = "INPUT_IDS",
) -> kpb.ModelInferRequest:
    msg = kpb.ModelInferRequest(model_name=model, id=rid)
    if ids is not None:
        arr = np.asarray(ids, dtype=np.int64 if datatype == "INT64" else np.int32)
        msg.inputs.add(name=name, datatype=datatype, shape=list(shape or arr.shape))
        msg.raw_input_contents.append(arr.tobytes())
    for k, v in (params or {}).items():
        param_to_pb(v, msg.parameters[k])
    for o in outputs:
        msg.outputs.add(name=o)
    return msg


BAD_REQUESTS = [
    (v2_request("lstm", [1, 2], params={"topk": 2}), "parameters.topk: not a parameter"),
    (v2_request("lstm", [1, 2], params={"top_k": -1}), "parameters.top_k: must be >= 0"),
    (v2_request("lstm", [1, 2], name="TOKENS"), "inputs.TOKENS: not an input of this model"),
    (v2_request("lstm"), "inputs.INPUT_IDS: required"),
    (v2_request("lstm", [[1, 2], [3, 4]]), "inputs.INPUT_IDS: batch of 2 sequences"),
    (v2_request("lstm", [1, 2], shape=[3]), "inputs.INPUT_IDS: 16 bytes of raw contents"),
    (v2_request("vec", [1, 2], name="INPUT"), "inputs.INPUT: datatype INT64, expected FP32"),
    (v2_request("lstm", [1, 2], outputs=["LOGITS"]), "outputs.LOGITS: not an output"),
    (
        v2_request("lstm", [1, 2], params={"sequence_id": 7, "sequence_end": False}),
        "parameters.sequence_end: false, but this server keeps no state",
    ),
    (v2_request("lstm", [1, 2], params={"max_tokens": 1, "max_output_length": 1}), "not both"),
    (v2_request("lstm", [1, 99]), "token id 99 is outside the vocabulary"),
]


@pytest.mark.parametrize(("msg", "words"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(
    stub: kpb_grpc.GRPCInferenceServiceStub, msg: kpb.ModelInferRequest, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(msg, timeout=CALL_TIMEOUT_S)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()


def test_unknown_models_are_not_found_and_the_server_keeps_serving(
    stub: kpb_grpc.GRPCInferenceServiceStub,
) -> None:
    for msg in (v2_request("nope", [1]), v2_request("lstm", [1])):
        msg.model_version = "9" if msg.model_name == "lstm" else ""
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(msg, timeout=CALL_TIMEOUT_S)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(kpb.ModelMetadataRequest(name="nope"), timeout=CALL_TIMEOUT_S)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    ok = stub.ModelInfer(v2_request("lstm", [1, 2, 3]), timeout=CALL_TIMEOUT_S)
    assert [o.name for o in ok.outputs] == ["TOP_IDS", "TOP_SCORES"]
    assert list(ok.outputs[0].shape) == [3, 1]
    assert ok.model_version == "2"


def stream_all(
    stub: kpb_grpc.GRPCInferenceServiceStub, msgs: Sequence[kpb.ModelInferRequest]
) -> list[kpb.ModelStreamInferResponse]:
    return list(stub.ModelStreamInfer(iter(msgs), timeout=CALL_TIMEOUT_S))


def test_final_response_flags_and_steps_per_response(
    stub: kpb_grpc.GRPCInferenceServiceStub,
) -> None:
    ids = list(range(1, 9))
    got = stream_all(
        stub,
        [
            v2_request("lstm", ids, rid="one", params={"steps_per_response": 1}),
            v2_request(
                "lstm", ids, rid="empty", params={"triton_enable_empty_final_response": True}
            ),
            v2_request("lstm", ids, rid="cap", params={"max_output_length": 3}),
        ],
    )
    by_id: dict[str, list[kpb.ModelInferResponse]] = {}
    for r in got:
        assert not r.error_message
        by_id.setdefault(r.infer_response.id, []).append(r.infer_response)

    def final(r: kpb.ModelInferResponse) -> bool:
        return r.parameters["triton_final_response"].bool_param

    one = by_id["one"]
    assert len(one) == 8  # one response per step
    assert [r.parameters["first_step"].int64_param for r in one] == list(range(8))
    assert [final(r) for r in one] == [False] * 7 + [True]
    assert one[-1].parameters["finish_reason"].string_param == "completed"
    empty = by_id["empty"]
    assert not empty[-1].outputs  # the flag alone, after the steps
    assert final(empty[-1])
    assert not any(final(r) for r in empty[:-1])
    assert sum(r.outputs[0].shape[0] for r in empty[:-1]) == 8
    cap = by_id["cap"]
    assert final(cap[-1])
    assert cap[-1].parameters["finish_reason"].string_param == "length"
    assert sum(r.outputs[0].shape[0] for r in cap if r.outputs) == 3


def test_a_stream_carries_many_requests_and_errors_end_only_their_own(
    live: LiveServer, stub: kpb_grpc.GRPCInferenceServiceStub, client: Client
) -> None:
    msgs = [v2_request("gru", [i % 16, 3, 4, 5], rid=f"r{i}") for i in range(20)]
    msgs.insert(5, v2_request("gru", [1], rid="bad", params={"top_k": "two"}))
    msgs.insert(9, v2_request("nope", [1], rid="lost"))
    got = stream_all(stub, msgs)
    errors = {r.infer_response.id: r.error_message for r in got if r.error_message}
    assert errors.keys() == {"bad", "lost"}
    assert errors["bad"].startswith("[request id: bad] INVALID_ARGUMENT: parameters.top_k")
    assert errors["lost"].startswith("[request id: lost] NOT_FOUND: ")
    finals = [
        r.infer_response.id
        for r in got
        if r.infer_response.parameters["triton_final_response"].bool_param and not r.error_message
    ]
    assert sorted(finals) == sorted(f"r{i}" for i in range(20))
    for i in (0, 13):
        ids = [r for r in got if r.infer_response.id == f"r{i}" and r.infer_response.outputs]
        top = np.concatenate(
            [np.frombuffer(r.infer_response.raw_output_contents[0], np.int64) for r in ids]
        )
        want = [int(s.top_ids[0]) for s in client.infer("gru", [i % 16, 3, 4, 5], top_k=1).steps]
        assert top.tolist() == want
    live.wait_idle()


def test_closing_a_stream_frees_its_requests_slots() -> None:
    with LiveServer(gated=True) as live:
        before = live.free_slots()
        with grpc.insecure_channel(live.address) as channel:
            stub = kpb_grpc.GRPCInferenceServiceStub(channel)
            msgs = iter([v2_request("lstm", list(range(10)), rid="held")])
            call = stub.ModelStreamInfer(msgs, timeout=CALL_TIMEOUT_S)
            assert live.gate is not None
            live.gate.allow(2)  # a step's outputs reach the loop as the next one launches
            first = next(call)
            assert first.infer_response.id == "held"
            live.wait_until(lambda: live.server.engine.num_live == 1)
            call.cancel()
        # The handler saw it (the worker may be held inside its next step until the gate
        # opens: the abort is applied at that step's end).
        live.wait_until(lambda: live.server.gate.num_active == 0)
        live.gate.open()
        live.wait_idle()
        assert live.free_slots() == before
        assert len(live.gate.steps_of("req-0")) <= 3  # left its batch at the next step


def test_the_timeout_parameter_is_a_deadline(live: LiveServer) -> None:
    with LiveServer(gated=True) as held:
        with grpc.insecure_channel(held.address) as channel:
            stub = kpb_grpc.GRPCInferenceServiceStub(channel)
            msg = v2_request("lstm", list(range(10)), rid="slow", params={"timeout": 50_000})
            call = stub.ModelStreamInfer(iter([msg]), timeout=CALL_TIMEOUT_S)
            time.sleep(0.2)  # past the 50 ms timeout while no step may run
            assert held.gate is not None
            held.gate.open()
            got = list(call)
        assert got[-1].error_message.startswith("[request id: slow] DEADLINE_EXCEEDED: ")


def test_admission_refusals_are_resource_exhausted() -> None:
    with (
        LiveServer(gated=True, config=e2e_config(max_num_live_requests=1)) as held,
        grpc.insecure_channel(held.address) as channel,
    ):
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        hold = stub.ModelStreamInfer(iter([v2_request("lstm", [1, 2, 3], rid="a")]))
        held.wait_until(lambda: held.server.engine.num_live == 1)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(v2_request("lstm", [1, 2]), timeout=CALL_TIMEOUT_S)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        refused = stream_all(stub, [v2_request("lstm", [1, 2], rid="b")])
        assert refused[0].error_message.startswith("[request id: b] RESOURCE_EXHAUSTED: ")
        assert held.gate is not None
        held.gate.open()
        assert list(hold)[-1].infer_response.parameters["triton_final_response"].bool_param


def test_tokens_guard_v2_as_they_guard_v1(tmp_path: Path) -> None:
    infer_token, admin_token = "inference-token-0123456789", "admin-token-0123456789abc"
    auth = AuthConfig.from_tokens(inference=[infer_token], admin=[admin_token])
    server_config = ServerConfig(port=0, warmup=False, auth=auth)
    with LiveServer(server_config=server_config) as live, grpc.insecure_channel(live.address) as ch:
        stub = kpb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live  # open
        assert stub.ServerReady(kpb.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(v2_request("lstm", [1]), timeout=CALL_TIMEOUT_S)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        user = (("authorization", f"Bearer {infer_token}"),)
        assert stub.ModelInfer(v2_request("lstm", [1]), metadata=user, timeout=CALL_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelUnload(
                kpb.RepositoryModelUnloadRequest(model_name="lstm"),
                metadata=user,
                timeout=CALL_TIMEOUT_S,
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "RepositoryModelUnload needs an admin token" in err.value.details()


def test_v2_calls_are_counted_under_their_protocol(
    live: LiveServer, stub: kpb_grpc.GRPCInferenceServiceStub
) -> None:
    from test_metrics import scrape, value

    url = live.server.metrics_url
    assert url is not None
    ok = "batchmaker_request_success_total"
    labels = {"model": "gru", "version": "1", "protocol": "v2-grpc"}
    before = value(scrape(url), ok, **labels)
    stub.ModelInfer(v2_request("gru", [1, 2]), timeout=CALL_TIMEOUT_S)
    stream_all(stub, [v2_request("gru", [1, 2], rid="x"), v2_request("gru", [3], rid="y")])
    live.wait_idle()
    assert value(scrape(url), ok, **labels) == before + 3
