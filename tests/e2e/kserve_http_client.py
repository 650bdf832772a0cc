"""The stock Triton HTTP client (``tritonclient.http``) against a running server, as a script.

Run in its own process by ``test_kserve_http.py``: tritonclient's HTTP client runs on
gevent, whose monkey-patching has no place in the test process and its event loops.
A JSON job on stdin names the server and the calls to make; the answers come back as
JSON on stdout, every array as ``{"shape", "datatype", "data"}`` (float32 widened to
float64 exactly, so the test compares bit for bit).

Only public tritonclient API is used, as a client developer would: ``InferInput`` with
``set_data_from_numpy(binary_data=...)``, ``InferRequestedOutput(binary_data=...)``,
``infer`` (optionally gzip-compressed), ``as_numpy``, and the health, metadata, config
and repository calls.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NP = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}


def _inputs(spec: dict[str, Any]) -> list[httpclient.InferInput]:
    out = []
    for t in spec["inputs"]:
        arr = np.asarray(t["data"], dtype=NP[t["datatype"]])
        if "shape" in t:
            arr = arr.reshape(t["shape"])
        x = httpclient.InferInput(t["name"], list(arr.shape), t["datatype"])
        x.set_data_from_numpy(arr, binary_data=spec.get("binary", True))
        out.append(x)
    return out


def _outputs(spec: dict[str, Any]) -> list[httpclient.InferRequestedOutput] | None:
    names = spec.get("outputs")
    if names is None:
        return None
    binary = spec.get("binary", True)
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def _result(result: httpclient.InferResult) -> dict[str, Any]:
    resp = result.get_response()
    outputs = {}
    for o in resp["outputs"]:
        arr = result.as_numpy(o["name"])
        outputs[o["name"]] = {
            "shape": list(arr.shape),
            "datatype": o["datatype"],
            "binary": "binary_data_size" in o.get("parameters", {}),
            "data": arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64).ravel().tolist(),
        }
    return {
        "id": resp.get("id", ""),
        "model_name": resp["model_name"],
        "model_version": resp["model_version"],
        "outputs": outputs,
        "parameters": resp.get("parameters", {}),
    }


def main() -> None:
    job = json.load(sys.stdin)
    client = httpclient.InferenceServerClient(job["url"], network_timeout=job.get("timeout", 20.0))
    out: dict[str, Any] = {}
    if job.get("health"):
        out["health"] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "models": {m: client.is_model_ready(m) for m in job["health"]},
        }
    if job.get("metadata"):
        out["server"] = client.get_server_metadata()
        out["metadata"] = {m: client.get_model_metadata(m) for m in job["metadata"]}
        out["config"] = {m: client.get_model_config(m) for m in job["metadata"]}
    if job.get("index"):
        out["index"] = client.get_model_repository_index()
    out["infer"] = {}
    for spec in job.get("infer", []):
        try:
            result = client.infer(
                spec["model"],
                _inputs(spec),
                outputs=_outputs(spec),
                request_id=spec["id"],
                parameters=spec.get("parameters"),
                request_compression_algorithm=spec.get("compression"),
                response_compression_algorithm=spec.get("compression"),
            )
            out["infer"][spec["id"]] = _result(result)
        except InferenceServerException as exc:
            out["infer"][spec["id"]] = {"error": exc.message(), "status": exc.status()}
    client.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
