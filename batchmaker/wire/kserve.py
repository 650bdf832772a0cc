"""The KServe v2 / Triton protocol <-> domain types: how our models look as tensors.

One mapping serves both v2 front doors. A transport decodes its message into a
``V2Call`` (tensors as numpy arrays, parameters as plain values): protobuf here
(``call_from_pb``), JSON and binary tensors in ``wire/kserve_http.py``. Then
``request_from_call`` checks it against the model and makes the engine's
``InferRequest`` plus a ``ResponseSpec`` that says what each response carries, and
``output_tensors`` turns the engine's steps into the response's tensors, which each
transport encodes again. Metadata and the model configuration are built once as
JSON-shaped dicts (the REST body as is) and parsed into protobuf for gRPC.

The tensors (docs/kserve.md):

- token models take ``INPUT_IDS`` INT64 ``[T]``; vector models ``INPUT`` FP32 ``[T, D]``;
  a tree is ``INPUT_IDS`` ``[N]`` plus ``CHILDREN`` INT64 ``[N, arity]``, -1 for none;
- outputs, per step: ``TOP_IDS`` INT64 ``[k]`` and ``TOP_SCORES`` FP32 ``[k]`` (the
  default), ``OUTPUT`` FP32 ``[V]`` when asked; a response stacks its steps, so they are
  ``[steps, k]`` and ``[steps, V]``;
- a request may add a leading batch dimension of 1 to its inputs (Triton clients do for a
  model whose ``max_batch_size`` is above 0), and then every output has one too. One
  request is one sequence: the server batches requests, not rows of one request.

Checks name the tensor or parameter, and bad input is INVALID_ARGUMENT, as on
``batchmaker.v1``. No torch here: load tests and benchmarks use it as a client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format

from batchmaker.errors import InvalidRequestError
from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.types import (
    MAX_TREE_NODES,
    FinishReason,
    InferRequest,
    ModelSignature,
    StepBlock,
    TreeInput,
)
from batchmaker.wire.v1 import MAX_REQUEST_ID_LEN, parse_version

Param = bool | int | float | str
"""A request, tensor or response parameter's value."""
Tensors = Sequence[tuple[str, str, np.ndarray]]
"""A response's output tensors: ``(name, datatype, array)``, in the order asked for."""

INPUT_IDS = "INPUT_IDS"
INPUT = "INPUT"
CHILDREN = "CHILDREN"
TOP_IDS = "TOP_IDS"
TOP_SCORES = "TOP_SCORES"
OUTPUT = "OUTPUT"
DEFAULT_OUTPUTS = (TOP_IDS, TOP_SCORES)
"""What a request that names no output gets: a few bytes per step, not the vocabulary."""

PLATFORM = "batchmaker"
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "sequence",
    "generate",
)
"""The protocol extensions served (``ServerMetadata``)."""

FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""v2 datatypes as little-endian numpy dtypes: raw tensor bytes are little-endian.
(BYTES and BF16 are v2 datatypes no model here takes.)"""

ID_TYPES = frozenset({"INT64", "INT32"})
"""Datatypes accepted for token ids and children (INT64 is what metadata declares)."""

PRIORITY_TOP = 2**31 - 1
"""Triton's ``priority`` 1 (its highest level) becomes this engine priority; see
``_engine_priority``."""

REQUEST_PARAMETERS = frozenset(
    {
        "top_k",
        "max_output_length",
        "max_tokens",
        "priority",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        EMPTY_FINAL,
        "steps_per_response",
        "binary_data_output",
    }
)
"""Every request parameter understood. Any other is INVALID_ARGUMENT: a misspelt
``top_k`` must not be silently ignored."""
OUTPUT_PARAMETERS = frozenset({"binary_data"})
INPUT_PARAMETERS = frozenset({"binary_data_size"})


# ---- the decoded call ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class V2Tensor:
    """One input tensor, decoded: ``data`` has ``shape`` and the datatype's dtype."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True, slots=True)
class V2Call:
    """A v2 inference request, whatever carried it."""

    model_name: str
    model_version: str
    id: str
    parameters: Mapping[str, Param]
    inputs: Sequence[V2Tensor]
    outputs: Sequence[tuple[str, Mapping[str, Param]]] = ()
    """Requested outputs, in order, with their parameters; empty: the defaults."""


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """What every response of one request carries, decided once at admission."""

    outputs: tuple[str, ...]
    """Output names, in the order the client asked for them."""
    batch_dim: bool
    """The inputs had a leading batch dimension of 1, so every output has one."""
    steps_per_response: int = 0
    """Streaming: at most this many steps per response; 0, all that are ready."""
    empty_final: bool = False
    """``triton_enable_empty_final_response``: the final flag comes alone, in an empty
    response after the last step's."""
    binary: frozenset[str] = frozenset()
    """HTTP: outputs to send as binary tensor data."""
    echo: Mapping[str, Param] = field(default_factory=dict)
    """Parameters every response repeats (``sequence_id``)."""


# ---- parameters ------------------------------------------------------------------


def param_from_pb(p: kpb.InferParameter) -> Param:
    which = p.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidRequestError("parameters: a parameter has no value")
    value: Param = getattr(p, which)
    return value


def params_from_pb(params: Mapping[str, kpb.InferParameter]) -> dict[str, Param]:
    return {k: param_from_pb(v) for k, v in params.items()}


def param_to_pb(value: Param, out: kpb.InferParameter) -> None:
    if isinstance(value, bool):
        out.bool_param = value
    elif isinstance(value, int):
        out.int64_param = value
    elif isinstance(value, float):
        out.double_param = value
    else:
        out.string_param = value


def _int_param(params: Mapping[str, Param], name: str, *, minimum: int = 0) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"parameters.{name}: must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidRequestError(f"parameters.{name}: must be >= {minimum}, got {value}")
    return value


def _bool_param(params: Mapping[str, Param], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidRequestError(f"parameters.{name}: must be a boolean, got {value!r}")
    return value


def _unknown(kind: str, params: Iterable[str], known: frozenset[str]) -> None:
    for name in params:
        if name not in known:
            raise InvalidRequestError(
                f"{kind}.{name}: not a parameter this server understands "
                f"(it takes {', '.join(sorted(known))})"
            )


def _engine_priority(value: int | None) -> int:
    """Triton's ``priority`` as this engine's: Triton runs level 1 first and larger
    numbers later, 0 (or none) being the default level; the engine runs higher numbers
    first, 0 being the default. So 1 maps to the top, each level below it one lower,
    and every explicit level ranks above the default, as in a Triton model whose default
    priority level is its lowest."""
    if not value:
        return 0
    return max(1, PRIORITY_TOP - (value - 1))


def _timeout(params: Mapping[str, Param], deadline: float | None) -> float | None:
    """Seconds the request may take: the call's deadline, or Triton's ``timeout``
    parameter (microseconds; 0 is none), whichever is sooner."""
    micros = _int_param(params, "timeout")
    timeouts = [t for t in (deadline, micros / 1e6 if micros else None) if t is not None]
    return min(timeouts) if timeouts else None


def _sequence(params: Mapping[str, Param]) -> dict[str, Param]:
    """The sequence parameters: accepted, and each request must hold a whole sequence.

    Triton's sequence batcher keeps a model's state between the requests of one
    ``sequence_id``. Here a request's state lives exactly as long as the request (that
    is what lets it join and leave the running batch at any step), so a request that
    continues a sequence or leaves one open asks for state this server does not keep.
    """
    seq_id = params.get("sequence_id")
    if seq_id is not None and (isinstance(seq_id, bool) or not isinstance(seq_id, int | str)):
        raise InvalidRequestError(
            f"parameters.sequence_id: must be an integer or a string, got {seq_id!r}"
        )
    for name in ("sequence_start", "sequence_end"):
        if _bool_param(params, name) is False and seq_id:
            raise InvalidRequestError(
                f"parameters.{name}: false, but this server keeps no state between requests: "
                "send the whole sequence in one request (sequence_start and sequence_end "
                "true, or unset); its outputs stream back step by step"
            )
    return {} if not seq_id else {"sequence_id": seq_id}


# ---- requests --------------------------------------------------------------------


def input_length(inputs: Iterable[tuple[str, Sequence[int]]]) -> int:
    """Input steps of a request from its inputs' ``(name, shape)``, before decoding them
    (the operator's limit, checked before the model looks at the request)."""
    for name, shape in inputs:
        dims = shape[1:] if len(shape) > 1 and shape[0] == 1 else shape
        if name in (INPUT_IDS, INPUT) and dims:
            return int(dims[0])
    return 0


def expected_inputs(signature: ModelSignature) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The v2 inputs a model takes: name -> (datatype, dims without the batch dimension)."""
    names = {t.name: t for t in signature.inputs}
    if "tree.tokens" in names:
        arity = names["tree.children"].shape[-1]
        return {INPUT_IDS: ("INT64", (-1,)), CHILDREN: ("INT64", (-1, arity))}
    if "vectors" in names:
        return {INPUT: ("FP32", (-1, names["vectors"].shape[-1]))}
    return {INPUT_IDS: ("INT64", (-1,))}


def expected_outputs(signature: ModelSignature) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The v2 outputs of every step: name -> (datatype, dims of one response)."""
    width = signature.outputs[0].shape[-1]
    return {
        TOP_IDS: ("INT64", (-1, -1)),
        TOP_SCORES: ("FP32", (-1, -1)),
        OUTPUT: ("FP32", (-1, width)),
    }


def _shaped(t: V2Tensor, dims: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``t``'s data with the model's ``dims`` (and whether it had a leading batch of 1)."""
    shape = t.shape
    batch = len(shape) == len(dims) + 1
    if batch:
        if shape[0] != 1:
            raise InvalidRequestError(
                f"inputs.{t.name}: batch of {shape[0]} sequences; a request holds one "
                "sequence (batch 1, or no batch dimension): send several requests, and the "
                "server batches them step by step"
            )
        shape = shape[1:]
    if len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
        want = list(dims)
        raise InvalidRequestError(
            f"inputs.{t.name}: shape {list(t.shape)}, expected {want} (or [1, *{want}])"
        )
    return t.data.reshape(shape), batch


def request_from_call(
    call: V2Call, signature: ModelSignature, *, deadline: float | None
) -> tuple[InferRequest, ResponseSpec]:
    """The engine request for ``call`` to a model of ``signature``, and what its
    responses carry. ``deadline``: seconds left of the call's own deadline, if any."""
    if not call.model_name:
        raise InvalidRequestError("model_name: required")
    version = parse_version("model_version", call.model_version, call.model_name)
    if len(call.id) > MAX_REQUEST_ID_LEN:
        raise InvalidRequestError(
            f"id: {len(call.id)} characters, at most {MAX_REQUEST_ID_LEN} allowed"
        )
    params = call.parameters
    _unknown("parameters", params, REQUEST_PARAMETERS)
    expected = expected_inputs(signature)
    given: dict[str, V2Tensor] = {}
    for t in call.inputs:
        if t.name not in expected:
            raise InvalidRequestError(
                f"inputs.{t.name}: not an input of this model (it takes {', '.join(expected)})"
            )
        if t.name in given:
            raise InvalidRequestError(f"inputs.{t.name}: given twice")
        want = expected[t.name][0]
        if t.datatype != want and not (want == "INT64" and t.datatype in ID_TYPES):
            raise InvalidRequestError(f"inputs.{t.name}: datatype {t.datatype}, expected {want}")
        given[t.name] = t
    for name in expected:
        if name not in given:
            raise InvalidRequestError(
                f"inputs.{name}: required (this model takes {', '.join(expected)})"
            )
    arrays = {n: _shaped(given[n], dims) for n, (_, dims) in expected.items()}
    batches = {b for _, b in arrays.values()}
    if len(batches) > 1:
        raise InvalidRequestError("inputs: some have a batch dimension and some do not")
    inputs: np.ndarray | TreeInput
    if CHILDREN in arrays:
        inputs = _tree(arrays[INPUT_IDS][0], arrays[CHILDREN][0])
    elif INPUT in arrays:
        inputs = np.ascontiguousarray(arrays[INPUT][0], dtype=np.float32)
    else:
        inputs = arrays[INPUT_IDS][0].astype(np.int64, copy=False)

    outputs_avail = expected_outputs(signature)
    wanted: list[str] = []
    binary: set[str] = set()
    all_binary = _bool_param(params, "binary_data_output") or False
    for name, oparams in call.outputs or [(n, {}) for n in DEFAULT_OUTPUTS]:
        if name not in outputs_avail:
            raise InvalidRequestError(
                f"outputs.{name}: not an output of this model (it has {', '.join(outputs_avail)})"
            )
        if name in wanted:
            raise InvalidRequestError(f"outputs.{name}: asked for twice")
        _unknown(f"outputs.{name}.parameters", oparams, OUTPUT_PARAMETERS)
        wanted.append(name)
        if _bool_param(oparams, "binary_data") or (all_binary and "binary_data" not in oparams):
            binary.add(name)
    ranked = TOP_IDS in wanted or TOP_SCORES in wanted
    top_k = _int_param(params, "top_k")
    if top_k is None:
        top_k = 1 if ranked else 0
    elif ranked and top_k == 0:
        raise InvalidRequestError("parameters.top_k: 0, but TOP_IDS or TOP_SCORES was asked for")
    max_len = _int_param(params, "max_output_length")
    alias = _int_param(params, "max_tokens")
    if max_len is not None and alias is not None:
        raise InvalidRequestError(
            "parameters.max_tokens: give max_output_length or max_tokens, not both"
        )
    max_len = max_len if max_len is not None else alias
    request = InferRequest(
        model=call.model_name,
        inputs=inputs,
        version=version,
        request_id="",
        priority=_engine_priority(_int_param(params, "priority")),
        timeout=_timeout(params, deadline),
        top_k=top_k,
        return_vectors=OUTPUT in wanted,
        max_output_length=max_len or None,
    )
    spec = ResponseSpec(
        outputs=tuple(wanted),
        batch_dim=batches == {True},
        steps_per_response=_int_param(params, "steps_per_response") or 0,
        empty_final=_bool_param(params, EMPTY_FINAL) or False,
        binary=frozenset(binary),
        echo=_sequence(params),
    )
    return request, spec


def _tree(tokens: np.ndarray, children: np.ndarray) -> TreeInput:
    """A tree from ``[N]`` token ids and ``[N, arity]`` children, -1 for none."""
    n = len(tokens)
    if n > MAX_TREE_NODES:
        raise InvalidRequestError(
            f"inputs.{INPUT_IDS}: {n} nodes, no model takes more than {MAX_TREE_NODES}"
        )
    if len(children) != n:
        raise InvalidRequestError(
            f"inputs.{CHILDREN}: {len(children)} rows for {n} nodes; one row per node"
        )
    kids = children.astype(np.int64, copy=False)
    if (kids < -1).any():
        row = int(np.nonzero((kids < -1).any(axis=1))[0][0])
        raise InvalidRequestError(f"inputs.{CHILDREN}: row {row} has an index below -1")
    present = kids >= 0
    # A child after a -1 in its row: the tree format lists children left to right.
    if (present[:, 1:] & ~present[:, :-1]).any():
        row = int(np.nonzero((present[:, 1:] & ~present[:, :-1]).any(axis=1))[0][0])
        raise InvalidRequestError(
            f"inputs.{CHILDREN}: row {row} has a child after a -1; list children first, "
            "then -1 for the absent ones"
        )
    rows = kids.tolist()
    return TreeInput(
        tokens=tokens.astype(np.int64, copy=False),
        children=[[c for c in row if c >= 0] for row in rows],
    )


# ---- responses -------------------------------------------------------------------


def output_tensors(
    spec: ResponseSpec, blocks: Sequence[StepBlock], signature: ModelSignature
) -> list[tuple[str, str, np.ndarray]]:
    """The response tensors of ``blocks`` (consecutive steps of one request), in the
    order ``spec`` lists them: ``(name, datatype, array)``, steps stacked."""
    width = signature.outputs[0].shape[-1]
    out = []
    for name in spec.outputs:
        parts: list[np.ndarray]
        if name == OUTPUT:
            parts = [b.vectors for b in blocks if b.vectors is not None]
            arr = _stack(parts, (0, width), np.float32)
            dtype = "FP32"
        elif name == TOP_IDS:
            parts = [b.top_ids for b in blocks if b.top_ids is not None]
            arr = _stack(parts, (0, 0), np.int64)
            dtype = "INT64"
        else:
            parts = [b.top_scores for b in blocks if b.top_scores is not None]
            arr = _stack(parts, (0, 0), np.float32)
            dtype = "FP32"
        out.append((name, dtype, arr[None] if spec.batch_dim else arr))
    return out


def _stack(parts: list[np.ndarray], empty: tuple[int, int], dtype: type) -> np.ndarray:
    if not parts:
        return np.zeros(empty, dtype=dtype)
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.ascontiguousarray(arr, dtype=dtype)


def response_parameters(
    spec: ResponseSpec,
    *,
    first_step: int | None,
    finish_reason: FinishReason | None,
    final: bool | None,
) -> dict[str, Param]:
    """The parameters of one response: where its steps start, how the request ended
    (on its last), and on a stream whether it is the request's final response."""
    params: dict[str, Param] = dict(spec.echo)
    if first_step is not None:
        params["first_step"] = first_step
    if finish_reason is not None:
        params["finish_reason"] = finish_reason.value
    if final is not None:
        params[FINAL] = final
    return params


def slice_steps(
    tensors: Sequence[tuple[str, str, np.ndarray]], start: int, stop: int, batch_dim: bool
) -> list[tuple[str, str, np.ndarray]]:
    """Steps ``start:stop`` of ``output_tensors``' arrays (views)."""
    if batch_dim:
        return [(n, d, a[:, start:stop]) for n, d, a in tensors]
    return [(n, d, a[start:stop]) for n, d, a in tensors]


def split_steps(spec: ResponseSpec, count: int, step_bytes: int, budget: int) -> list[int]:
    """Where a stream's ``count`` ready steps are cut into responses: at most
    ``spec.steps_per_response`` steps each (when set), and about ``budget`` bytes."""
    per = max(1, budget // max(1, step_bytes))
    if spec.steps_per_response:
        per = min(per, spec.steps_per_response)
    return list(range(0, count, per))


def step_nbytes(spec: ResponseSpec, signature: ModelSignature, top_k: int) -> int:
    """One step's bytes in a response: to keep responses under the size budget."""
    n = 0
    for name in spec.outputs:
        n += 4 * signature.outputs[0].shape[-1] if name == OUTPUT else 8 * max(1, top_k)
    return max(1, n)


# ---- protobuf (gRPC) -------------------------------------------------------------


_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _decode(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | None, typed: Any
) -> V2Tensor:
    if datatype not in DTYPES:
        raise InvalidRequestError(f"inputs.{name}: datatype {datatype!r} is not supported")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidRequestError(f"inputs.{name}: shape {list(dims)} has a negative dimension")
    count = math.prod(dims)
    dtype = DTYPES[datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidRequestError(
                f"inputs.{name}: {len(raw)} bytes of raw contents, but shape {list(dims)} of "
                f"{datatype} needs {count * dtype.itemsize}"
            )
        data = np.frombuffer(raw, dtype=dtype)
    else:
        values = typed if typed is not None else ()
        if len(values) != count:
            raise InvalidRequestError(
                f"inputs.{name}: {len(values)} values, but shape {list(dims)} holds {count}"
            )
        data = np.array(values, dtype=dtype)
    return V2Tensor(name, datatype, dims, data.reshape(dims))


def call_from_pb(msg: kpb.ModelInferRequest) -> V2Call:
    """Decode a ``ModelInferRequest``: contents in the typed field or, as tritonclient
    sends them, in ``raw_input_contents`` (one entry per input, in order)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidRequestError(
            f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs; "
            "one per input, in order"
        )
    inputs = []
    for i, t in enumerate(msg.inputs):
        _unknown(f"inputs.{t.name}.parameters", t.parameters, INPUT_PARAMETERS)
        typed = None
        if t.HasField("contents"):
            if raw:
                raise InvalidRequestError(
                    f"inputs.{t.name}: contents and raw_input_contents given together"
                )
            field_name = _CONTENTS_FIELD.get(t.datatype)
            typed = getattr(t.contents, field_name) if field_name else None
        inputs.append(_decode(t.name, t.datatype, t.shape, raw[i] if raw else None, typed))
    return V2Call(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        parameters=params_from_pb(msg.parameters),
        inputs=inputs,
        outputs=[(o.name, params_from_pb(o.parameters)) for o in msg.outputs],
    )


def response_to_pb(
    model_name: str,
    model_version: str,
    request_id: str,
    tensors: Sequence[tuple[str, str, np.ndarray]],
    parameters: Mapping[str, Param],
) -> kpb.ModelInferResponse:
    """A ``ModelInferResponse``: outputs in ``raw_output_contents``, in the order of
    ``outputs``, which is where ``InferResult.as_numpy`` reads them."""
    msg = kpb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for k, v in parameters.items():
        param_to_pb(v, msg.parameters[k])
    for name, datatype, arr in tensors:
        msg.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        msg.raw_output_contents.append(arr.tobytes())
    return msg


def metadata_to_pb(doc: Mapping[str, Any], message: Any) -> Any:
    """A JSON-shaped metadata or configuration dict (the REST body) as ``message``."""
    return json_format.ParseDict(doc, message)


# ---- metadata and configuration, JSON-shaped ----------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": PLATFORM, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(
    name: str, version: int, signature: ModelSignature, versions: Iterable[int]
) -> dict[str, Any]:
    """v2 model metadata. Shapes are what one request sends and gets, without the
    optional leading batch dimension; an output's first dimension counts steps."""
    return {
        "name": name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": f"{PLATFORM}_{signature.family}",
        "inputs": [
            {"name": n, "datatype": d, "shape": list(s)}
            for n, (d, s) in expected_inputs(signature).items()
        ],
        "outputs": [
            {"name": n, "datatype": d, "shape": list(s)}
            for n, (d, s) in expected_outputs(signature).items()
        ],
    }


def model_config(
    name: str,
    version: int,
    signature: ModelSignature,
    *,
    max_batch: Mapping[str, int],
    batching_mode: str,
) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (``config.pbtxt`` as JSON).

    ``max_batch_size`` is the most rows one batched cell execution runs (the largest of
    the model's cell types); a request still holds one sequence, with an optional
    leading batch dimension of 1. A model that emits more than one step streams, so it is
    ``decoupled``: ``ModelStreamInfer`` answers it step by step.
    """
    params = {
        "family": signature.family,
        "batching": batching_mode,
        "version": str(version),
        "max_input_length": str(signature.max_input_length),
        "max_output_length": str(signature.max_output_length),
        "max_top_k": str(signature.max_top_k),
    }
    if signature.vocab_size:
        params["vocab_size"] = str(signature.vocab_size)
    if signature.max_tree_depth:
        params["max_tree_depth"] = str(signature.max_tree_depth)
    for cell, b in sorted(max_batch.items()):
        params[f"max_batch.{cell}"] = str(b)
    return {
        "name": name,
        "platform": f"{PLATFORM}_{signature.family}",
        "backend": PLATFORM,
        "max_batch_size": max(max_batch.values(), default=0),
        "input": [
            {"name": n, "data_type": f"TYPE_{d}", "dims": list(s)}
            for n, (d, s) in expected_inputs(signature).items()
        ],
        "output": [
            {"name": n, "data_type": f"TYPE_{d}", "dims": list(s)}
            for n, (d, s) in expected_outputs(signature).items()
        ],
        "parameters": {k: {"string_value": v} for k, v in params.items()},
        "model_transaction_policy": {"decoupled": signature.max_output_length > 1},
    }


TRITON_STATES = {"READY": "READY", "UNLOADING": "UNLOADING", "UNAVAILABLE": "UNAVAILABLE"}
"""The model manager's states as Triton's; a version on disk and not served
(``AVAILABLE``) is Triton's ``UNAVAILABLE`` with the reason ``unloaded``."""


def repository_index(states: Iterable[Any], *, ready_only: bool) -> list[dict[str, str]]:
    """The repository index: every version on disk or served, with its Triton state."""
    out = []
    for s in states:
        state = TRITON_STATES.get(s.state, "UNAVAILABLE")
        if ready_only and state != "READY":
            continue
        reason = s.reason or ("unloaded" if s.state == "AVAILABLE" else "")
        out.append(
            {
                "name": s.name,
                "version": str(s.version) if s.version else "",
                "state": state,
                "reason": reason,
            }
        )
    return out
