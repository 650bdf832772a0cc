"""KServe v2 messages for the load test's ``--protocol v2`` user: a v1 request from
``workload`` as the ``ModelInferRequest`` tritonclient would send, an in-band error as
the failure Locust records, and one request streamed and timed (``v2_stream``).

Pure numpy, protobuf and grpc: no gevent, no Locust (``locustfile`` imports it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import numpy as np

from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.v1 import inference_pb2 as pb
from loadtest.timing import Fire, GrpcStatusError, StreamTimer

FINAL_PARAM = "triton_final_response"


def v2_request(request: pb.InferRequest) -> kpb.ModelInferRequest:
    """The v2 twin of a v1 request from ``RequestFactory``, as tritonclient sends it: raw
    little-endian tensor bytes, ``top_k`` and ``max_output_length`` as parameters,
    ``TOP_IDS`` and ``TOP_SCORES`` asked for."""
    msg = kpb.ModelInferRequest(model_name=request.model_name)
    msg.parameters["top_k"].int64_param = request.top_k
    if request.max_output_length:
        msg.parameters["max_output_length"].int64_param = request.max_output_length

    def add(name: str, datatype: str, array: np.ndarray) -> None:
        tensor = msg.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape)
        msg.raw_input_contents.append(array.tobytes())

    kind = request.WhichOneof("input")
    if kind == "tree":
        nodes = request.tree.nodes
        arity = max([2, *(len(n.children) for n in nodes)])
        children = np.full((len(nodes), arity), -1, dtype="<i8")
        for i, node in enumerate(nodes):
            children[i, : len(node.children)] = node.children
        add("INPUT_IDS", "INT64", np.array([n.token for n in nodes], dtype="<i8"))
        add("CHILDREN", "INT64", children)
    elif kind == "vectors":
        values = np.array(request.vectors.values, dtype="<f4")
        add("INPUT", "FP32", values.reshape(-1, request.vectors.dim))
    else:
        add("INPUT_IDS", "INT64", np.array(request.tokens.ids, dtype="<i8"))
    msg.outputs.add(name="TOP_IDS")
    msg.outputs.add(name="TOP_SCORES")
    return msg


def v2_error(text: str) -> GrpcStatusError:
    """An in-band ``[request id: X] CODE: reason`` as the failure Locust records."""
    rest = text.split("] ", 1)[1] if text.startswith("[request id:") else text
    code, _, details = rest.partition(": ")
    status = grpc.StatusCode.__members__.get(code, grpc.StatusCode.UNKNOWN)
    return GrpcStatusError(status, details if code in grpc.StatusCode.__members__ else rest)


def v2_stream(stub: Any, request: pb.InferRequest, timeout: float, fire: Fire) -> None:
    """``request`` as one v2 ``ModelStreamInfer`` stream, timed as the v1 interceptor
    times ``InferStream``: ``ttft`` at the first response with a step, ``full`` at the
    final one; a failure (in-band or the stream's status) is fired, not raised."""
    timer = StreamTimer(f"v2:{request.model_name}", fire)
    call = stub.ModelStreamInfer(iter((v2_request(request),)), timeout=timeout)
    error: Exception | None = None
    final = False
    try:
        for message in call:
            if message.error_message:
                error = v2_error(message.error_message)
                break
            resp = message.infer_response
            timer.got(int(resp.outputs[0].shape[0]) if resp.outputs else 0)
            if FINAL_PARAM in resp.parameters and resp.parameters[FINAL_PARAM].bool_param:
                final = True
                break
    except grpc.RpcError as e:
        error = GrpcStatusError(e.code(), e.details() or "")
    finally:
        if not final or error is not None:
            call.cancel()
    if error is None and not final:
        error = GrpcStatusError(grpc.StatusCode.INTERNAL, "stream ended with no final response")
    timer.end(error)
    if final:
        with contextlib.suppress(grpc.RpcError):
            for _ in call:  # the server ends the stream right after the final response
                pass
