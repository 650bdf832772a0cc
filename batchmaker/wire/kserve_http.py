"""The KServe v2 REST bodies <-> ``V2Call`` and response tensors (the HTTP door's wire).

``wire/kserve.py`` owns what the tensors mean; this module owns only how HTTP carries
them, so the HTTP door (``server/http.py``) stays a thin aiohttp layer and this part
is testable, and usable by clients, without a server, aiohttp or torch.

- ``/infer`` bodies are v2 JSON, with Triton's binary tensor extension: when the
  ``Inference-Header-Content-Length`` header is given, the JSON is that many bytes and
  the rest of the body is raw little-endian tensors, one per input that declares
  ``parameters.binary_data_size``, in input order. JSON ``data`` may be flat or nested,
  row-major either way. A response is binary when an output asks ``binary_data: true``
  (or the request ``binary_data_output: true``): its JSON part gives each such output's
  ``parameters.binary_data_size`` and the raw bytes follow.
- ``/generate`` and ``/generate_stream`` (Triton's generate extension) take a flat
  object: inputs as top-level keys with nested lists (the shape is the nesting),
  ``parameters`` and ``id`` beside them; they answer flat objects too, outputs as keys
  with nested lists, the response parameters (``first_step``, ``finish_reason``) as keys.

Malformed bodies are ``InvalidRequestError`` naming the field, as everywhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from batchmaker.errors import Code, InvalidRequestError
from batchmaker.wire.kserve import (
    CHILDREN,
    DTYPES,
    FINAL,
    INPUT,
    INPUT_IDS,
    Param,
    Tensors,
    V2Call,
    V2Tensor,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The request and response header that says where the JSON part of a body ends."""
BINARY_SIZE = "binary_data_size"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNKNOWN: 500,
    Code.DATA_LOSS: 500,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
"""Each status code as the HTTP status KServe's and Triton's REST servers use for it
(499, nginx's "client closed request", is what a cancelled call is logged with)."""

_GENERATE_TYPES = {INPUT_IDS: "INT64", CHILDREN: "INT64", INPUT: "FP32"}
"""The datatype of each input the generate extension names (its body carries none)."""


def http_status(code: Code) -> int:
    return HTTP_STATUS.get(code, 500)


def error_body(message: str) -> bytes:
    """The v2 error body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


# ---- decoding ----------------------------------------------------------------------


def parse_json(body: bytes, what: str = "request body") -> Any:
    """``body`` as JSON, or INVALID_ARGUMENT saying where it stopped parsing."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{what}: not UTF-8 JSON ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{what}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
        ) from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what}: must be a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(doc: Mapping[str, Any], key: str, what: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequestError(f"{what}{key}: must be a string, got {_kind(value)}")
    return value


def parameters(value: Any, what: str) -> dict[str, Param]:
    """A JSON ``parameters`` object: each value a boolean, number or string."""
    if value is None:
        return {}
    params = _object(value, what)
    for key, v in params.items():
        if not isinstance(v, bool | int | float | str):
            raise InvalidRequestError(
                f"{what}.{key}: must be a boolean, a number or a string, got {_kind(v)}"
            )
    return params


def _flatten(data: Any) -> list[Any]:
    """JSON ``data``, flat or nested, as a flat row-major list of scalars."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_values(name: str, datatype: str, dims: tuple[int, ...], values: Any) -> np.ndarray:
    flat = _flatten(values)
    count = math.prod(dims)
    if len(flat) != count:
        raise InvalidRequestError(
            f"inputs.{name}: {len(flat)} values, but shape {list(dims)} holds {count}"
        )
    dtype = DTYPES[datatype]
    for v in flat:
        ok = isinstance(v, bool) if datatype == "BOOL" else _numeric(v, dtype)
        if not ok:
            hint = " (raw tensor bytes go in the binary part)" if isinstance(v, str) else ""
            raise InvalidRequestError(f"inputs.{name}: {v!r} is not a {datatype} value{hint}")
    try:
        return np.array(flat, dtype=dtype).reshape(dims)
    except (OverflowError, ValueError) as exc:
        raise InvalidRequestError(
            f"inputs.{name}: a value does not fit {datatype} ({exc})"
        ) from None


def _numeric(v: Any, dtype: np.dtype[Any]) -> bool:
    if isinstance(v, bool):
        return False
    if dtype.kind in "iu":
        return isinstance(v, int)
    return isinstance(v, int | float)


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidRequestError(f"inputs.{name}.shape: must be an array of integers")
    if any(d < 0 for d in value):
        raise InvalidRequestError(f"inputs.{name}: shape {value} has a negative dimension")
    return tuple(value)


def call_from_json(
    body: bytes, *, header_length: str | None, model_name: str, model_version: str
) -> V2Call:
    """Decode an ``/infer`` body; ``header_length``: the ``Inference-Header-Content-Length``
    header's value, if any. The model comes from the URL, not the body."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InvalidRequestError(
                f"{HEADER_LENGTH}: {header_length!r}, but the body has {len(body)} bytes; it "
                "must be the length of the JSON part at the body's start"
            )
        body, binary = body[:n], body[n:]
    doc = _object(parse_json(body), "request body")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list):
        raise InvalidRequestError("inputs: required, an array of tensors")
    offset = 0
    inputs = []
    for i, t in enumerate(inputs_doc):
        t = _object(t, f"inputs[{i}]")
        name = _string(t, "name", f"inputs[{i}].")
        if not name:
            raise InvalidRequestError(f"inputs[{i}].name: required")
        datatype = _string(t, "datatype", f"inputs.{name}.")
        if datatype not in DTYPES:
            raise InvalidRequestError(f"inputs.{name}: datatype {datatype!r} is not supported")
        dims = _shape(name, t.get("shape"))
        params = parameters(t.get("parameters"), f"inputs.{name}.parameters")
        for key in params:
            if key != BINARY_SIZE:
                raise InvalidRequestError(
                    f"inputs.{name}.parameters.{key}: not a parameter this server understands "
                    f"(it takes {BINARY_SIZE})"
                )
        size = params.get(BINARY_SIZE)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidRequestError(
                    f"inputs.{name}.parameters.{BINARY_SIZE}: must be an integer >= 0"
                )
            if "data" in t:
                raise InvalidRequestError(f"inputs.{name}: data and {BINARY_SIZE} given together")
            if header_length is None:
                raise InvalidRequestError(
                    f"inputs.{name}: {BINARY_SIZE} given, but no {HEADER_LENGTH} header says "
                    "where the binary part of the body starts"
                )
            dtype = DTYPES[datatype]
            need = math.prod(dims) * dtype.itemsize
            if size != need:
                raise InvalidRequestError(
                    f"inputs.{name}: {BINARY_SIZE} {size}, but shape {list(dims)} of {datatype} "
                    f"needs {need} bytes"
                )
            if offset + size > len(binary):
                raise InvalidRequestError(
                    f"inputs.{name}: {BINARY_SIZE} {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            data = np.frombuffer(binary, dtype=dtype, count=math.prod(dims), offset=offset)
            offset += size
            inputs.append(V2Tensor(name, datatype, dims, data.reshape(dims)))
            continue
        if "data" not in t:
            raise InvalidRequestError(f"inputs.{name}: no data (give data, or {BINARY_SIZE})")
        inputs.append(V2Tensor(name, datatype, dims, _from_values(name, datatype, dims, t["data"])))
    if offset != len(binary):
        raise InvalidRequestError(
            f"request body: {len(binary) - offset} bytes after the last binary input's data"
        )
    outputs_doc = doc.get("outputs", [])
    if not isinstance(outputs_doc, list):
        raise InvalidRequestError("outputs: must be an array")
    outputs = []
    for i, o in enumerate(outputs_doc):
        o = _object(o, f"outputs[{i}]")
        name = _string(o, "name", f"outputs[{i}].")
        if not name:
            raise InvalidRequestError(f"outputs[{i}].name: required")
        outputs.append((name, parameters(o.get("parameters"), f"outputs.{name}.parameters")))
    request_id = _string(doc, "id", "")
    return V2Call(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        parameters=parameters(doc.get("parameters"), "parameters"),
        inputs=inputs,
        outputs=outputs,
    )


def call_from_generate(body: bytes, *, model_name: str, model_version: str) -> V2Call:
    """Decode a ``/generate`` or ``/generate_stream`` body: every key but ``id`` and
    ``parameters`` is an input, its value a (nested) list whose nesting is its shape."""
    doc = _object(parse_json(body), "request body")
    inputs = []
    for name, value in doc.items():
        if name in ("id", "parameters"):
            continue
        datatype = _GENERATE_TYPES.get(name)
        if datatype is None:
            raise InvalidRequestError(
                f"inputs.{name}: not an input this server knows "
                f"(models take {', '.join(_GENERATE_TYPES)}; id and parameters beside them)"
            )
        dims = _nested_shape(name, value)
        inputs.append(V2Tensor(name, datatype, dims, _from_values(name, datatype, dims, value)))
    return V2Call(
        model_name=model_name,
        model_version=model_version,
        id=_string(doc, "id", ""),
        parameters=parameters(doc.get("parameters"), "parameters"),
        inputs=inputs,
    )


def _nested_shape(name: str, value: Any) -> tuple[int, ...]:
    """The shape of nested lists, which must be rectangular."""
    if not isinstance(value, list):
        raise InvalidRequestError(f"{name}: must be an array (nested for more dimensions)")
    dims: list[int] = []
    level: list[Any] = [value]
    while level and all(isinstance(x, list) for x in level):
        lengths = {len(x) for x in level}
        if len(lengths) != 1:
            raise InvalidRequestError(
                f"{name}: rows of different lengths ({sorted(lengths)}); it must be rectangular"
            )
        dims.append(lengths.pop())
        level = [y for x in level for y in x]
    if any(isinstance(x, list) for x in level):
        raise InvalidRequestError(f"{name}: mixes arrays and values at one depth")
    return tuple(dims)


# ---- encoding ----------------------------------------------------------------------


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    tensors: Tensors,
    params: Mapping[str, Param],
    *,
    binary: frozenset[str],
) -> tuple[bytes, int | None]:
    """An ``/infer`` response body and, when any output is binary, the length of its
    JSON part (the ``Inference-Header-Content-Length`` to send)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        doc["id"] = request_id
    if params:
        doc["parameters"] = dict(params)
    outputs = []
    raw: list[bytes] = []
    for name, datatype, arr in tensors:
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if name in binary:
            data = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
            out["parameters"] = {BINARY_SIZE: len(data)}
            raw.append(data)
        else:
            out["data"] = arr.reshape(-1).tolist()
        outputs.append(out)
    doc["outputs"] = outputs
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not raw:
        return head, None
    return head + b"".join(raw), len(head)


def generate_response(
    model_name: str,
    model_version: str,
    request_id: str,
    tensors: Tensors,
    params: Mapping[str, Param],
) -> dict[str, Any]:
    """A generate response (or one ``generate_stream`` event): a flat object, outputs as
    nested lists and the response parameters as keys. The stream's final flag is left
    out: an event with ``finish_reason`` is the last."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        doc["id"] = request_id
    for name, _, arr in tensors:
        doc[name] = arr.tolist()
    doc.update({k: v for k, v in params.items() if k != FINAL})
    return doc


def sse_event(doc: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``doc`` (JSON has no raw newlines, so one line)."""
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
