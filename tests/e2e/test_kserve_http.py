"""KServe v2 over HTTP/1.1, end to end: the stock Triton HTTP client, generate, SSE.

The stock client (``tritonclient.http``) runs in one subprocess (``kserve_http_client.py``,
gevent stays out of this process) for health, metadata, configuration, the repository
index and ``infer`` with JSON and binary tensors, gzip-compressed too. Through it every
family's outputs (token LSTM and GRU, vector GRU, seq2seq, TreeLSTM) equal what
``batchmaker.v1`` returns for the same request and what plain torch computes alone.

The rest is plain HTTP from this process (``http.client``): the generate extension
and its Server-Sent Events read step by step, bad input, unknown models, admission,
tokens, a client that disconnects mid-stream, start-up and draining, and the metrics.
"""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import LiveServer, e2e_config, e2e_models, every_family
from reference import (
    assert_matches_alone,
    assert_seq2seq_matches_alone,
    assert_tree_matches_alone,
)
from v2_outputs import assert_same_as_v1, nested, steps_from, tokens_job

from batchmaker.client import Client
from batchmaker.config import AuthConfig, ServerConfig
from batchmaker.errors import InvalidRequestError
from batchmaker.models.base import Model
from batchmaker.types import StepOutput, TreeInput

CLIENT = Path(__file__).with_name("kserve_http_client.py")
CALL_TIMEOUT_S = 20.0


MODELS = {(m.name, m.version): m for m in every_family()}
LSTM, GRU, VEC = MODELS[("lstm", 2)], MODELS[("gru", 1)], MODELS[("vec", 1)]
S2S, TREE = MODELS[("s2s", 1)], MODELS[("tree", 1)]


def http_config(**kwargs: Any) -> ServerConfig:
    return ServerConfig(port=0, http_port=0, warmup=False, **kwargs)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    config = http_config(metrics_port=0)
    with LiveServer(every_family, e2e_config(num_slots=128), server_config=config) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Client:
    return live.client()


# ---- plain HTTP ----------------------------------------------------------------------------


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    def json(self) -> Any:
        return json.loads(self.body)


def port_of(live: LiveServer) -> int:
    port = live.server.http_port
    assert port
    return port


def request(
    live: LiveServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a fresh connection; ``body``: bytes as they are, else JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(live), timeout=CALL_TIMEOUT_S)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        return Reply(conn.getresponse())
    finally:
        conn.close()


def post(live: LiveServer, path: str, body: Any = None, **headers: str) -> Reply:
    return request(live, "POST", path, body, {k.replace("_", "-"): v for k, v in headers.items()})


def infer_body(ids: Sequence[int], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [len(ids)], "data": ids}],
        **extra,
    }


class Events:
    """A ``generate_stream`` response read event by event, as it arrives."""

    def __init__(self, live: LiveServer, model: str, body: dict[str, Any]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port_of(live), timeout=CALL_TIMEOUT_S)
        self.conn.request("POST", f"/v2/models/{model}/generate_stream", json.dumps(body))
        self.resp = self.conn.getresponse()

    def __next__(self) -> dict[str, Any]:
        line = self.resp.readline()
        if not line:
            raise StopIteration
        assert line.startswith(b"data: "), line
        assert self.resp.readline() == b"\n"
        return json.loads(line[6:])  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def close(self) -> None:
        self.resp.close()  # the response holds the socket open too
        self.conn.close()


# ---- outputs as steps ------------------------------------------------------------------------


# ---- the stock client ------------------------------------------------------------------------

RNG = np.random.default_rng(11)
SEQS = {f"lstm-{i}": RNG.integers(0, 16, RNG.integers(1, 20)).tolist() for i in range(3)}
X = RNG.standard_normal((7, VEC.signature.inputs[0].shape[-1])).astype(np.float32)
SRC = RNG.integers(0, 30, 9).tolist()
TREE_IN = TreeInput([3, 5, 7, 1, 2], [[1, 2], [3, 4], [], [], []])
EVERYTHING = {"outputs": ["TOP_IDS", "TOP_SCORES", "OUTPUT"], "parameters": {"top_k": 3}}


def jobs() -> list[dict[str, Any]]:
    children = [list(c) + [-1] * (2 - len(c)) for c in TREE_IN.children]
    out = [
        tokens_job(rid, "lstm", ids, binary=i % 2 == 0, **EVERYTHING)
        for i, (rid, ids) in enumerate(SEQS.items())
    ]
    out += [
        # The defaults (TOP_IDS and TOP_SCORES, k=1); no outputs named: all binary.
        tokens_job("gru-0", "gru", SEQS["lstm-0"]),
        tokens_job("gru-gzip", "gru", SEQS["lstm-1"], compression="gzip", binary=False),
        {
            "id": "vec-0",
            "model": "vec",
            "inputs": [{"name": "INPUT", "datatype": "FP32", "data": X.tolist()}],
            "binary": False,
            **EVERYTHING,
        },
        tokens_job("s2s-0", "s2s", SRC, **EVERYTHING),
        {
            "id": "tree-0",
            "model": "tree",
            "inputs": [
                {"name": "INPUT_IDS", "datatype": "INT64", "data": list(TREE_IN.tokens)},
                {"name": "CHILDREN", "datatype": "INT64", "data": children},
            ],
            **EVERYTHING,
        },
        tokens_job("bad", "lstm", [1, 10_000]),
        tokens_job("nope", "nope", [1]),
    ]
    return out


@pytest.fixture(scope="module")
def stock(live: LiveServer) -> dict[str, Any]:
    """One run of the stock client for every check that uses it (a subprocess is slow)."""
    job = {
        "url": f"127.0.0.1:{port_of(live)}",
        "health": ["lstm", "tree", "nope"],
        "metadata": ["lstm", "vec", "tree"],
        "index": True,
        "infer": jobs(),
    }
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


def test_stock_client_health_metadata_config_and_index(stock: dict[str, Any]) -> None:
    assert stock["health"] == {
        "live": True,
        "ready": True,
        "models": {"lstm": True, "tree": True, "nope": False},
    }
    assert stock["server"]["name"] == "batchmaker"
    assert "binary_tensor_data" in stock["server"]["extensions"]
    lstm = stock["metadata"]["lstm"]
    assert lstm["versions"] == ["1", "2"]
    assert lstm["inputs"] == [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [-1]}]
    assert [o["name"] for o in lstm["outputs"]] == ["TOP_IDS", "TOP_SCORES", "OUTPUT"]
    assert stock["metadata"]["vec"]["inputs"][0]["shape"] == [-1, X.shape[1]]
    assert [i["name"] for i in stock["metadata"]["tree"]["inputs"]] == ["INPUT_IDS", "CHILDREN"]
    config = stock["config"]["lstm"]
    assert config["max_batch_size"] == 8
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert config["parameters"]["family"] == {"string_value": "lstm"}
    states = {(m["name"], m["version"]): m["state"] for m in stock["index"]}
    assert states[("lstm", "2")] == "READY"


def v1_steps(client: Client, job: dict[str, Any]) -> list[StepOutput]:
    k = job.get("parameters", {}).get("top_k", 1)
    vectors = "OUTPUT" in job.get("outputs", [])
    inputs: Any = {"tree": TREE_IN, "vec": X}.get(job["model"])
    if inputs is None:
        inputs = job["inputs"][0]["data"][0]
    result = client.infer(
        job["model"], inputs, top_k=k, return_vectors=vectors, timeout=CALL_TIMEOUT_S
    )
    return list(result.steps)


def test_stock_client_outputs_equal_v1_and_plain_torch_on_every_family(
    stock: dict[str, Any], client: Client
) -> None:
    for job in jobs():
        rid = job["id"]
        got = stock["infer"][rid]
        if rid in ("bad", "nope"):
            continue
        assert got["id"] == rid
        assert got["parameters"]["finish_reason"] in ("completed", "length")
        # No outputs named: tritonclient asks for every output in binary.
        binary = job.get("binary", True) if "outputs" in job else True
        assert all(o["binary"] == binary for o in got["outputs"].values()), rid
        steps = steps_from(got["outputs"], 0)
        assert_same_as_v1(steps, v1_steps(client, job))
        model = job["model"]
        if model == "s2s":
            assert_seq2seq_matches_alone(S2S, SRC, steps)
        elif model == "tree":
            assert_tree_matches_alone(TREE, TREE_IN, steps)
        elif model == "vec":
            assert_matches_alone(VEC, X, steps)
        else:
            assert_matches_alone(
                GRU if model == "gru" else LSTM, job["inputs"][0]["data"][0], steps
            )
        # The leading batch dimension the client sent comes back on every output.
        for o in got["outputs"].values():
            assert o["shape"][0] == 1 or model in ("vec", "tree")


def test_stock_client_errors_carry_v1s_message(stock: dict[str, Any], client: Client) -> None:
    bad = stock["infer"]["bad"]
    assert bad["status"] == "400"
    with pytest.raises(InvalidRequestError) as v1_error:
        client.infer("lstm", [1, 10_000], timeout=CALL_TIMEOUT_S)
    assert bad["error"] == v1_error.value.message
    assert stock["infer"]["nope"]["status"] == "404"


# ---- health, metadata and infer as plain HTTP ------------------------------------------------


def test_health_metadata_and_config_routes(live: LiveServer) -> None:
    assert request(live, "GET", "/v2/health/live").status == 200
    assert request(live, "GET", "/v2/health/ready").status == 200
    assert request(live, "GET", "/v2").json()["name"] == "batchmaker"
    meta = request(live, "GET", "/v2/models/lstm/versions/1").json()
    assert meta["name"] == "lstm"
    assert request(live, "GET", "/v2/models/lstm/versions/2/ready").status == 200
    assert request(live, "GET", "/v2/models/lstm/versions/9/ready").status == 400
    config = request(live, "GET", "/v2/models/tree/config").json()
    assert config["input"][1] == {"name": "CHILDREN", "data_type": "TYPE_INT64", "dims": [-1, 2]}
    ready_only = post(live, "/v2/repository/index", {"ready": True}).json()
    assert {m["state"] for m in ready_only} == {"READY"}
    missing = request(live, "GET", "/v2/models/nope")
    assert missing.status == 404
    assert "nope" in missing.json()["error"]
    assert request(live, "GET", "/v2/no/such/route").status == 404


def test_json_data_may_be_flat_or_nested_and_binary_framing_is_checked(
    live: LiveServer, client: Client
) -> None:
    x = X[:3]
    flat = {"name": "INPUT", "datatype": "FP32", "shape": [3, X.shape[1]]}
    want = list(client.infer("vec", x, top_k=2, timeout=CALL_TIMEOUT_S).steps)
    params = {"parameters": {"top_k": 2}}
    for data in (x.ravel().tolist(), x.tolist()):
        got = post(live, "/v2/models/vec/infer", {"inputs": [{**flat, "data": data}], **params})
        assert got.status == 200, got.body
        assert_same_as_v1(steps_from({o["name"]: o for o in got.json()["outputs"]}, 0), want)
    # The same tensor as binary data after the JSON, and a binary answer.
    head = json.dumps(
        {
            "inputs": [{**flat, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "TOP_IDS", "parameters": {"binary_data": True}}],
            **params,
        }
    ).encode()
    got = post(
        live,
        "/v2/models/vec/infer",
        head + x.tobytes(),
        Inference_Header_Content_Length=str(len(head)),
    )
    assert got.status == 200, got.body
    n = int(got.headers["Inference-Header-Content-Length"])
    doc = json.loads(got.body[:n])
    (out,) = doc["outputs"]
    ids = np.frombuffer(got.body[n:], dtype="<i8").reshape(out["shape"])
    assert out["parameters"]["binary_data_size"] == ids.nbytes
    assert np.array_equal(ids, np.stack([s.top_ids for s in want]))
    # Framing errors name what is wrong.
    short = post(
        live,
        "/v2/models/vec/infer",
        head + x.tobytes()[:-4],
        Inference_Header_Content_Length=str(len(head)),
    )
    assert short.status == 400
    assert "runs past the end of the body" in short.json()["error"]
    no_header = post(live, "/v2/models/vec/infer", head + x.tobytes())
    assert no_header.status == 400


def ids_tensor(shape: list[int], **data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": shape, **data}]}


BAD = [
    (b"{not json", "request body: not valid JSON"),
    (json.dumps([1, 2]).encode(), "request body: must be a JSON object"),
    (infer_body([1, 2], parameters={"topk": 2}), "parameters.topk: not a parameter"),
    (infer_body([1, 2], parameters={"top_k": -1}), "parameters.top_k: must be >= 0"),
    (infer_body([1, 2], parameters={"top_k": [2]}), "parameters.top_k: must be a boolean"),
    ({"inputs": [{"name": "TOKENS", "datatype": "INT64", "shape": [1], "data": [1]}]}, "TOKENS"),
    ({"inputs": []}, "inputs.INPUT_IDS: required"),
    (ids_tensor([3], data=[1, 2]), "inputs.INPUT_IDS: 2 values, but shape [3]"),
    (ids_tensor([2], data=[1, 2.5]), "inputs.INPUT_IDS: 2.5 is not a INT64"),
    (ids_tensor([2]), "inputs.INPUT_IDS: no data"),
    (ids_tensor([-1], data=[]), "negative dimension"),
    (infer_body([1, 2], outputs=[{"name": "LOGITS"}]), "outputs.LOGITS: not an output"),
    (infer_body([1, 99]), "token id 99 is outside the vocabulary"),
]


@pytest.mark.parametrize(("body", "words"), BAD)
def test_bad_input_is_400_naming_the_field(live: LiveServer, body: Any, words: str) -> None:
    got = post(live, "/v2/models/lstm/infer", body)
    assert got.status == 400, got.body
    assert words in got.json()["error"]


def test_unknown_models_are_404_and_the_server_keeps_serving(live: LiveServer) -> None:
    for path in ("/v2/models/nope/infer", "/v2/models/lstm/versions/9/infer"):
        assert post(live, path, infer_body([1])).status == 404
    assert post(live, "/v2/models/nope/generate", {"INPUT_IDS": [1]}).status == 404
    ok = post(live, "/v2/models/lstm/infer", infer_body([1, 2, 3]))
    assert ok.status == 200
    doc = ok.json()
    assert doc["model_version"] == "2"
    assert [(o["name"], o["shape"]) for o in doc["outputs"]] == [
        ("TOP_IDS", [3, 1]),
        ("TOP_SCORES", [3, 1]),
    ]


def test_gzip_and_deflate_bodies_are_read(live: LiveServer) -> None:
    import zlib

    raw = json.dumps(infer_body([1, 2, 3])).encode()
    for encoding, data in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        got = post(live, "/v2/models/gru/infer", data, Content_Encoding=encoding)
        assert got.status == 200, got.body


# ---- generate and generate_stream ------------------------------------------------------------


def test_generate_answers_one_object_equal_to_v1(live: LiveServer, client: Client) -> None:
    ids = SEQS["lstm-2"]
    got = post(live, "/v2/models/lstm/generate", {"INPUT_IDS": ids, "parameters": {"top_k": 2}})
    assert got.status == 200, got.body
    doc = got.json()
    assert doc["model_name"] == "lstm"
    assert doc["model_version"] == "2"
    assert doc["finish_reason"] == "completed"
    want = list(client.infer("lstm", ids, top_k=2, timeout=CALL_TIMEOUT_S).steps)
    assert_same_as_v1(steps_from(nested(doc), 0), want)
    children = [list(c) + [-1] * (2 - len(c)) for c in TREE_IN.children]
    tree = post(
        live,
        "/v2/models/tree/generate",
        {"INPUT_IDS": list(TREE_IN.tokens), "CHILDREN": children, "parameters": {"top_k": 3}},
    )
    assert tree.status == 200, tree.body
    steps = steps_from(nested(tree.json()), 0)
    assert_same_as_v1(steps, list(client.infer("tree", TREE_IN, top_k=3).steps))
    assert_tree_matches_alone(TREE, TREE_IN, steps)
    bad = post(live, "/v2/models/lstm/generate", {"INPUT_IDS": [[1, 2], [3]]})
    assert bad.status == 400
    assert "rows of different lengths" in bad.json()["error"]


def test_generate_stream_sends_the_steps_as_they_come(live: LiveServer, client: Client) -> None:
    """One event per response, step by step with ``steps_per_response`` 1; seq2seq's
    decoded steps equal v1's and plain torch's, and the last event says how it ended."""
    body = {"INPUT_IDS": SRC, "parameters": {"top_k": 3, "steps_per_response": 1}}
    events = Events(live, "s2s", body)
    try:
        assert events.resp.status == 200
        assert events.resp.headers["Content-Type"].startswith("text/event-stream")
        got = list(events)
    finally:
        events.close()
    steps: list[StepOutput] = []
    for e in got:
        assert (e["model_name"], e["model_version"]) == ("s2s", "1")
        if e.get("TOP_IDS"):
            assert e["first_step"] == len(steps)
            steps += steps_from(nested(e), len(steps))
    assert all(len(e["TOP_IDS"]) <= 1 for e in got)
    assert [("finish_reason" in e) for e in got] == [False] * (len(got) - 1) + [True]
    want = list(client.infer("s2s", SRC, top_k=3, timeout=CALL_TIMEOUT_S).steps)
    assert_same_as_v1(steps, want)
    assert_seq2seq_matches_alone(S2S, SRC, steps)


# ---- admission, tokens, disconnects, lifecycle -------------------------------------------------


def test_admission_refusals_are_429() -> None:
    config = e2e_config(max_num_live_requests=1)
    with LiveServer(gated=True, config=config, server_config=http_config()) as held:
        hold = held.client().infer_stream("lstm", [1, 2, 3], timeout=CALL_TIMEOUT_S)
        held.wait_until(lambda: held.server.engine.num_live == 1)
        refused = post(held, "/v2/models/lstm/infer", infer_body([1, 2]))
        assert refused.status == 429
        assert "admission limit" in refused.json()["error"]
        assert post(held, "/v2/models/lstm/generate_stream", {"INPUT_IDS": [1]}).status == 429
        assert held.gate is not None
        held.gate.open()
        assert len(hold.collect().steps) == 3


def test_tokens_guard_http_as_they_guard_grpc() -> None:
    infer_token, admin_token = "inference-token-0123456789", "admin-token-0123456789abc"
    auth = AuthConfig.from_tokens(inference=[infer_token], admin=[admin_token])
    with LiveServer(server_config=http_config(auth=auth, metrics_port=0)) as live:
        from test_metrics import scrape, value

        assert request(live, "GET", "/v2/health/live").status == 200  # open
        assert request(live, "GET", "/v2/health/ready").status == 200
        url = live.server.metrics_url
        assert url is not None
        labels = {"model": "", "version": "", "protocol": "v2-http", "reason": "UNAUTHENTICATED"}
        before = value(scrape(url), "batchmaker_request_failure_total", **labels)
        denied = post(live, "/v2/models/lstm/infer", infer_body([1]))
        assert denied.status == 401
        assert "bearer token" in denied.json()["error"]
        assert request(live, "GET", "/v2").status == 401
        bad = post(live, "/v2/models/lstm/infer", infer_body([1]), Authorization="Bearer nope")
        assert bad.status == 401
        assert value(scrape(url), "batchmaker_request_failure_total", **labels) == before + 3
        user = {"Authorization": f"Bearer {infer_token}"}
        ok = post(live, "/v2/models/lstm/infer", infer_body([1]), **user)
        assert ok.status == 200
        unload = post(live, "/v2/repository/models/lstm/unload", **user)
        assert unload.status == 403
        assert "needs an admin token" in unload.json()["error"]
        admin = {"Authorization": f"Bearer {admin_token}"}
        # Past authentication: the built-in models have no repository folder to load from.
        assert post(live, "/v2/repository/models/no-such/load", **admin).status == 404


def test_a_client_that_disconnects_mid_stream_frees_its_slot() -> None:
    with LiveServer(gated=True, server_config=http_config()) as live:
        before = live.free_slots()
        assert live.gate is not None
        events = Events(live, "lstm", {"INPUT_IDS": list(range(10)), "id": "held"})
        live.gate.allow(2)  # a step's outputs reach the loop as the next one launches
        first = next(events)
        assert first["id"] == "held"
        assert first["first_step"] == 0
        assert live.num_live() == 1
        events.close()
        live.wait_until(lambda: live.server.gate.num_active == 0)  # the handler saw it
        live.gate.open()
        live.wait_idle()
        # Steps 0 and 1, plus at most the step the worker had already planned, of 10.
        assert len(live.gate.steps_of("req-0")) <= 3
        assert live.free_slots() == before


def test_ready_only_once_loaded_and_503_while_draining() -> None:
    loaded = threading.Event()

    def slow_models() -> list[Model]:
        loaded.wait(CALL_TIMEOUT_S)
        return list(e2e_models())

    live = LiveServer(slow_models, gated=True, server_config=http_config())
    try:
        live.start(wait=False)
        live.wait_until(lambda: live.server.http_port is not None)
        assert request(live, "GET", "/v2/health/live").status == 200
        assert request(live, "GET", "/v2/health/ready").status == 400
        starting = post(live, "/v2/models/lstm/infer", infer_body([1]))
        assert starting.status == 503
        assert "starting" in starting.json()["error"]
        loaded.set()
        live.wait_started()
        assert request(live, "GET", "/v2/health/ready").status == 200
        events = Events(live, "lstm", {"INPUT_IDS": [1, 2, 3]})
        live.wait_until(lambda: live.server.engine.num_live == 1)
        stopping = live.submit(live.server.stop(CALL_TIMEOUT_S))
        live.wait_until(lambda: live.server.gate.draining)
        assert request(live, "GET", "/v2/health/ready").status == 400
        assert post(live, "/v2/models/lstm/infer", infer_body([1])).status == 503
        assert live.gate is not None
        live.gate.open()
        got = list(events)  # the live stream finishes while the server drains
        events.close()
        assert got[-1]["finish_reason"] == "completed"
        stopping.result(CALL_TIMEOUT_S)
        with pytest.raises(ConnectionRefusedError):
            request(live, "GET", "/v2/health/live")
    finally:
        loaded.set()
        live.close()


def test_http_calls_are_counted_under_their_protocol(live: LiveServer) -> None:
    from test_metrics import scrape, total, value

    url = live.server.metrics_url
    assert url is not None
    ok = "batchmaker_request_success_total"
    labels = {"model": "gru", "version": "1", "protocol": "v2-http"}
    before = value(scrape(url), ok, **labels)
    assert post(live, "/v2/models/gru/infer", infer_body([1, 2])).status == 200
    assert post(live, "/v2/models/gru/generate", {"INPUT_IDS": [1]}).status == 200
    events = Events(live, "gru", {"INPUT_IDS": [1, 2]})
    list(events)
    events.close()
    live.wait_idle()
    assert value(scrape(url), ok, **labels) == before + 3
    failed = "batchmaker_request_failure_total"
    bad = {"model": "gru", "protocol": "v2-http", "reason": "INVALID_ARGUMENT"}
    before = total(scrape(url), failed, **bad)
    assert post(live, "/v2/models/gru/infer", infer_body([1, 99])).status == 400
    # Counted before the client saw its error.
    assert total(scrape(url), failed, **bad) == before + 1


def test_config_and_flag() -> None:
    from batchmaker.cli.main import build_parser
    from batchmaker.cli.serve import serve_configs

    with pytest.raises(ValueError, match="http_port"):
        ServerConfig(http_port=70000)
    args = build_parser().parse_args(["serve", "--http-port", "8123", "--model-repository=none"])
    assert serve_configs(args)[0].http_port == 8123
    assert ServerConfig().http_port is None


def test_a_body_over_the_limit_is_413_and_the_limit_fits_json_tensors() -> None:
    """The body limit is 8x the gRPC message limit: JSON of a tensor that fits a message
    fits a body; past it, 413 with the limit named, counted as RESOURCE_EXHAUSTED."""
    with LiveServer(server_config=http_config(max_receive_message_bytes=1024)) as live:
        # 60 ids: 480 bytes as raw int64, under the 1024-byte gRPC limit; padded out to a
        # 6000-byte JSON body (whitespace is JSON too), over it but under the body limit.
        body = json.dumps(infer_body([1] * 60)).encode()
        ok = post(live, "/v2/models/lstm/infer", body + b" " * (6000 - len(body)))
        assert ok.status == 200, ok.body
        big = post(live, "/v2/models/lstm/infer", b" " * 9000)
        assert big.status == 413
        assert "limit of 8192 bytes" in big.json()["error"]
