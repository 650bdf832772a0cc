"""The stock Triton gRPC client (``tritonclient.grpc``) against a running server, as a script.

Run in its own process by ``test_kserve_grpc.py``: tritonclient's generated stubs and
the server's own define the same ``inference.*`` protobuf messages, which one process
cannot hold twice. A JSON job on stdin names the server and the calls to make; the
answers come back as JSON on stdout, every array as ``{"shape", "datatype", "data"}``
(float32 widened to float64 exactly, so the test compares bit for bit).

Only public tritonclient API is used, as a client developer would: ``InferInput`` with
``set_data_from_numpy``, ``InferRequestedOutput``, ``infer``, ``start_stream`` /
``async_stream_infer`` with a callback, ``as_numpy``, and the health, metadata, config
and repository calls.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NP = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}


def _inputs(spec: dict[str, Any]) -> list[grpcclient.InferInput]:
    out = []
    for t in spec["inputs"]:
        arr = np.asarray(t["data"], dtype=NP[t["datatype"]])
        if "shape" in t:
            arr = arr.reshape(t["shape"])
        x = grpcclient.InferInput(t["name"], list(arr.shape), t["datatype"])
        x.set_data_from_numpy(arr)
        out.append(x)
    return out


def _outputs(spec: dict[str, Any]) -> list[grpcclient.InferRequestedOutput] | None:
    names = spec.get("outputs")
    return None if names is None else [grpcclient.InferRequestedOutput(n) for n in names]


def _params(msg: Any) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in msg.parameters.items()}


def _result(result: grpcclient.InferResult) -> dict[str, Any]:
    resp = result.get_response()
    outputs = {}
    for o in resp.outputs:
        arr = result.as_numpy(o.name)
        outputs[o.name] = {
            "shape": list(arr.shape),
            "datatype": o.datatype,
            "data": arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64).ravel().tolist(),
        }
    return {
        "id": resp.id,
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "outputs": outputs,
        "parameters": _params(resp),
    }


def main() -> None:
    job = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(job["address"])
    timeout = job.get("timeout", 20.0)
    out: dict[str, Any] = {}
    if job.get("health"):
        out["health"] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "models": {m: client.is_model_ready(m) for m in job["health"]},
        }
    if job.get("metadata"):
        out["server"] = client.get_server_metadata(as_json=True)
        out["metadata"] = {m: client.get_model_metadata(m, as_json=True) for m in job["metadata"]}
        out["config"] = {m: client.get_model_config(m, as_json=True) for m in job["metadata"]}
    if job.get("index"):
        out["index"] = client.get_model_repository_index(as_json=True)
    out["infer"] = {}
    for spec in job.get("infer", []):
        try:
            result = client.infer(
                spec["model"],
                _inputs(spec),
                outputs=_outputs(spec),
                request_id=spec["id"],
                parameters=spec.get("parameters"),
                client_timeout=timeout,
            )
            out["infer"][spec["id"]] = _result(result)
        except InferenceServerException as exc:
            out["infer"][spec["id"]] = {"error": exc.message(), "status": exc.status()}
    streamed = job.get("stream", [])
    if streamed:
        responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for spec in streamed:
            client.async_stream_infer(
                spec["model"],
                _inputs(spec),
                outputs=_outputs(spec),
                request_id=spec["id"],
                parameters=spec.get("parameters"),
            )
        got: dict[str, list[dict[str, Any]]] = {s["id"]: [] for s in streamed}
        errors: list[str] = []
        finals = 0
        # Every request ends with one final response or one in-band error.
        while finals < len(streamed):
            result, error = responses.get(timeout=timeout)
            if error is not None:
                errors.append(error.message())
                finals += 1
                continue
            r = _result(result)
            got[r["id"]].append(r)
            finals += bool(r["parameters"].get("triton_final_response"))
        client.stop_stream()
        out["stream"] = got
        out["stream_errors"] = errors
    client.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
