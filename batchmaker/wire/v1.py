"""``batchmaker.v1`` protobuf <-> domain types: the one place that knows both.

Every message the servicers and the clients send or read is built or read here:
requests in and steps out for the servicer, the other way for the clients, and the
metadata and admin messages of both. Everything inside the server works on
``InferRequest``, ``StepOutput`` and ``ModelSignature`` only. This module must not
import torch (the clients use it).

Checks that need only the message (a version that is not a number, vectors that
do not fill whole rows, a negative length) are made here and name the proto
field. Checks that need the model (vocabulary, dimensions, limits) are the
model's, so in-process callers get the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from batchmaker.errors import InvalidRequestError, ModelNotFoundError
from batchmaker.types import (
    MAX_TREE_NODES,
    FinishReason,
    InferRequest,
    ModelSignature,
    StepOutput,
    TreeInput,
)
from batchmaker.v1 import inference_pb2 as pb

MAX_REQUEST_ID_LEN = 128
DEFAULT_TOP_K = 1
"""``top_k`` when a request leaves it unset: the best id per step, a few bytes."""

FINISH_REASONS: dict[FinishReason, pb.FinishReason] = {
    FinishReason.COMPLETED: pb.FINISH_REASON_COMPLETED,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
}
"""The finish reasons a response carries; every other end is an error status instead."""


# ---- requests -------------------------------------------------------------------


MAX_VERSION_DIGITS = 18
"""No served version has more digits. Longer numbers are NOT_FOUND without ``int()``,
which refuses digit strings over 4300 characters."""


def parse_version(field: str, version: str, model: str) -> int | None:
    """``""`` is the latest; otherwise a positive decimal integer (of ``model``)."""
    if not version:
        return None
    digits = version.lstrip("0")
    if not (version.isascii() and version.isdigit() and digits):
        raise InvalidRequestError(f"{field}: {version[:32]!r} is not a version number >= 1")
    if len(digits) > MAX_VERSION_DIGITS:
        shown = digits if len(digits) <= 40 else f"{digits[:40]}... ({len(digits)} digits)"
        raise ModelNotFoundError(f"{field}: model {model!r} has no version {shown}")
    return int(digits)


def input_length(msg: pb.InferRequest) -> int:
    """Input steps of ``msg`` without converting it: tokens, vector rows or tree nodes."""
    which = msg.WhichOneof("input")
    if which == "tokens":
        return len(msg.tokens.ids)
    if which == "vectors":
        return len(msg.vectors.values) // max(1, msg.vectors.dim)
    if which == "tree":
        return len(msg.tree.nodes)
    return 0


def request_from_pb(msg: pb.InferRequest, *, timeout: float | None) -> InferRequest:
    """The engine request for ``msg``; ``timeout`` comes from the call's deadline."""
    if not msg.model_name:
        raise InvalidRequestError("model_name: required")
    version = parse_version("model_version", msg.model_version, msg.model_name)
    if len(msg.id) > MAX_REQUEST_ID_LEN:
        raise InvalidRequestError(
            f"id: {len(msg.id)} characters, at most {MAX_REQUEST_ID_LEN} allowed"
        )
    which = msg.WhichOneof("input")
    inputs: np.ndarray | TreeInput
    if which == "tree":
        nodes = msg.tree.nodes
        # Before converting up to a message's worth (a million) of nodes on the event loop.
        if len(nodes) > MAX_TREE_NODES:
            raise InvalidRequestError(
                f"tree: {len(nodes)} nodes, no model takes more than {MAX_TREE_NODES}"
            )
        inputs = TreeInput(
            tokens=np.array([n.token for n in nodes], dtype=np.int64),
            children=[list(n.children) for n in nodes],
        )
    elif which == "tokens":
        inputs = np.array(msg.tokens.ids, dtype=np.int64)
    elif which == "vectors":
        dim, values = msg.vectors.dim, msg.vectors.values
        if dim < 1:
            raise InvalidRequestError(f"vectors.dim: must be >= 1, got {dim}")
        if len(values) % dim:
            raise InvalidRequestError(
                f"vectors.values: {len(values)} values do not fill rows of dim {dim}"
            )
        inputs = np.array(values, dtype=np.float32).reshape(-1, dim)
    else:
        raise InvalidRequestError("input: set exactly one of tokens, vectors or tree")
    if msg.max_output_length < 0:
        raise InvalidRequestError(f"max_output_length: {msg.max_output_length} is negative")
    top_k = msg.top_k if msg.HasField("top_k") else DEFAULT_TOP_K
    if top_k < 0:
        raise InvalidRequestError(f"top_k: {top_k} is negative")
    return InferRequest(
        model=msg.model_name,
        inputs=inputs,
        version=version,
        priority=msg.priority,
        timeout=timeout,
        top_k=top_k,
        return_vectors=msg.return_vectors,
        max_output_length=msg.max_output_length or None,
    )


def request_to_pb(
    model: str,
    inputs: Sequence[int] | np.ndarray | TreeInput,
    *,
    version: int | str | None = None,
    request_id: str = "",
    priority: int = 0,
    top_k: int | None = None,
    return_vectors: bool = False,
    max_output_length: int = 0,
) -> pb.InferRequest:
    """A request message: 1-D integer inputs become tokens, 2-D float inputs vectors,
    and a ``TreeInput`` a tree."""
    msg = pb.InferRequest(
        model_name=model,
        model_version="" if version is None else str(version),
        id=request_id,
        priority=priority,
        return_vectors=return_vectors,
        max_output_length=max_output_length,
    )
    if top_k is not None:
        msg.top_k = top_k
    if isinstance(inputs, TreeInput):
        if len(inputs.tokens) != len(inputs.children):
            raise InvalidRequestError(
                f"tree: {len(inputs.tokens)} tokens but {len(inputs.children)} child lists"
            )
        msg.tree.SetInParent()  # an empty tree is still a tree (and INVALID_ARGUMENT)
        for token, children in zip(inputs.tokens, inputs.children, strict=True):
            msg.tree.nodes.add(token=int(token), children=[int(c) for c in children])
        return msg
    x = np.asarray(inputs)
    if x.ndim == 1 and (x.dtype.kind in "iu" or x.size == 0):
        msg.tokens.ids.extend(x.astype(np.int64).tolist())
    elif x.ndim == 2 and x.dtype.kind in "iuf":
        msg.vectors.dim = x.shape[1]
        msg.vectors.values.extend(x.astype(np.float32).ravel().tolist())
    else:
        raise InvalidRequestError(
            "inputs: expected a 1-D sequence of token ids or a [T, D] array of vectors, "
            f"got shape {list(x.shape)} of {x.dtype}"
        )
    return msg


# ---- responses ------------------------------------------------------------------


def step_to_pb(out: StepOutput) -> pb.Step:
    step = pb.Step(index=out.step)
    if out.top_ids is not None and out.top_scores is not None:
        step.top_ids.extend(out.top_ids.tolist())
        step.top_scores.extend(out.top_scores.tolist())
    if out.vector is not None:
        # Copies out of the engine's step buffer, which the stream must not hold on to.
        step.vector.extend(out.vector.tolist())
    return step


def step_from_pb(step: pb.Step) -> StepOutput:
    has_top = len(step.top_ids) > 0
    return StepOutput(
        step=step.index,
        vector=np.array(step.vector, dtype=np.float32) if len(step.vector) else None,
        top_ids=np.array(step.top_ids, dtype=np.int64) if has_top else None,
        top_scores=np.array(step.top_scores, dtype=np.float32) if has_top else None,
    )


def step_nbytes(out: StepOutput) -> int:
    """A step's size on the wire, roughly: enough to keep messages under a budget."""
    n = 8
    if out.top_ids is not None:
        n += 14 * len(out.top_ids)
    if out.vector is not None:
        n += 4 * len(out.vector) + 4
    return n


def response_header(request_id: str, model_name: str, model_version: int) -> pb.InferResponse:
    """The fields every response of one request repeats."""
    return pb.InferResponse(id=request_id, model_name=model_name, model_version=str(model_version))


def responses_for(
    header: pb.InferResponse,
    outputs: Sequence[StepOutput],
    *,
    finish_reason: FinishReason | None,
    max_message_bytes: int,
) -> Iterator[pb.InferResponse]:
    """``outputs`` as stream messages of at most about ``max_message_bytes`` each.

    ``header`` carries the id and model fields every message repeats. The finish
    reason, if any, goes on the last message; with no outputs that message is empty.
    """
    per_step = step_nbytes(outputs[0]) if outputs else 1
    per_message = max(1, max_message_bytes // per_step)
    starts = range(0, len(outputs), per_message) if outputs else range(1)
    for i in starts:
        msg = pb.InferResponse()
        msg.CopyFrom(header)
        msg.steps.extend(step_to_pb(o) for o in outputs[i : i + per_message])
        if finish_reason is not None and i + per_message >= len(outputs):
            msg.finish_reason = FINISH_REASONS[finish_reason]
        yield msg


def unary_response(
    header: pb.InferResponse, outputs: Sequence[StepOutput], finish_reason: FinishReason
) -> pb.InferResponse:
    """Every step of a request in one response (``Infer``)."""
    msg = pb.InferResponse()
    msg.CopyFrom(header)
    msg.steps.extend(step_to_pb(o) for o in outputs)
    msg.finish_reason = FINISH_REASONS[finish_reason]
    return msg


def finish_reason_from_pb(value: int) -> FinishReason | None:
    for reason, code in FINISH_REASONS.items():
        if code == value:
            return reason
    return None


# ---- metadata -------------------------------------------------------------------


def model_metadata_request(name: str, version: int | str | None) -> pb.ModelMetadataRequest:
    return pb.ModelMetadataRequest(name=name, version="" if version is None else str(version))


def model_metadata_from_pb(msg: pb.ModelMetadataRequest) -> tuple[str, int | None]:
    """The model's name and version (``None``: the latest) a metadata request asks for."""
    if not msg.name:
        raise InvalidRequestError("name: required")
    return msg.name, parse_version("version", msg.version, msg.name)


def model_metadata_to_pb(
    name: str,
    version: int,
    signature: ModelSignature,
    versions: Iterable[int],
    max_batch: Mapping[str, int],
) -> pb.ModelMetadataResponse:
    """``max_batch``: the max batch of each of the model's local cell types."""
    sig = signature
    return pb.ModelMetadataResponse(
        name=name,
        version=str(version),
        versions=[str(v) for v in sorted(versions)],
        family=sig.family,
        inputs=[
            pb.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in sig.inputs
        ],
        outputs=[
            pb.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in sig.outputs
        ],
        limits=pb.ModelLimits(
            max_input_length=sig.max_input_length,
            max_output_length=sig.max_output_length,
            max_top_k=sig.max_top_k,
            vocab_size=sig.vocab_size or 0,
            max_tree_depth=sig.max_tree_depth,
        ),
        input_vocabulary=sig.input_vocabulary,
        output_vocabulary=sig.output_vocabulary,
        cell_types=[pb.CellTypeMetadata(name=c, max_batch=b) for c, b in sorted(max_batch.items())],
    )


def server_metadata_request() -> pb.ServerMetadataRequest:
    return pb.ServerMetadataRequest()


def server_metadata_to_pb(
    *,
    version: str,
    batching_mode: str,
    devices: Sequence[str],
    max_live_requests: int,
    max_receive_message_bytes: int,
    models: Mapping[str, Iterable[int]],
) -> pb.ServerMetadataResponse:
    """``models``: every served model's name and its served versions."""
    return pb.ServerMetadataResponse(
        name="batchmaker",
        version=version,
        batching_mode=batching_mode,
        devices=list(devices),
        max_live_requests=max_live_requests,
        max_receive_message_bytes=max_receive_message_bytes,
        models=[
            pb.ModelVersions(name=n, versions=[str(v) for v in sorted(vs)])
            for n, vs in sorted(models.items())
        ],
    )


# ---- the model repository (admin) ------------------------------------------------


class VersionStateLike(Protocol):
    """A model version and its state, as the model manager reports it."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...


def repository_index_request() -> pb.RepositoryIndexRequest:
    return pb.RepositoryIndexRequest()


def load_model_request(name: str, versions: Iterable[int | str]) -> pb.LoadModelRequest:
    return pb.LoadModelRequest(name=name, versions=[str(v) for v in versions])


def unload_model_request(name: str, versions: Iterable[int | str]) -> pb.UnloadModelRequest:
    return pb.UnloadModelRequest(name=name, versions=[str(v) for v in versions])


def model_change_from_pb(
    msg: pb.LoadModelRequest | pb.UnloadModelRequest,
) -> tuple[str, list[int]]:
    """The model and versions (empty: its default ones) a load or unload asks for."""
    if not msg.name:
        raise InvalidRequestError("name: required")
    versions = []
    for v in msg.versions:
        parsed = parse_version("versions", v, msg.name)
        if parsed is None:
            raise InvalidRequestError("versions: an entry is empty")
        versions.append(parsed)
    return msg.name, versions


def _version_states_pb(states: Iterable[VersionStateLike]) -> list[pb.ModelVersionState]:
    return [
        pb.ModelVersionState(
            name=s.name,
            version=str(s.version) if s.version else "",
            state=s.state,
            reason=s.reason,
        )
        for s in states
    ]


def repository_index_to_pb(states: Iterable[VersionStateLike]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=_version_states_pb(states))


def model_states_to_pb(states: Iterable[VersionStateLike]) -> pb.ModelStatesResponse:
    return pb.ModelStatesResponse(models=_version_states_pb(states))
