"""``inference.GRPCInferenceService``: the KServe v2 / Triton protocol over gRPC.

It serves the same engine and models as ``batchmaker.v1.Inference``, on the same port,
through the same ``CallGate``, so stock Triton clients work unchanged. What is v2's
own:

- ``ModelStreamInfer`` is decoupled: many requests share one bidirectional stream, each
  runs as its own task and writes its responses as the engine emits its steps: one
  response per batch of ready steps, so a reader that keeps up gets one per plan (a plan
  runs one step, or a run of several when nothing waits to join), and a slow one gets
  its backlog at once. The request parameter ``steps_per_response`` caps the steps in
  one response (1: a response per step). The last response of a request carries
  ``triton_final_response = true`` (or comes alone and empty, when the request asked
  for ``triton_enable_empty_final_response``). A request that fails (bad input, a full
  server, its deadline) gets its error in-band, as ``error_message``, and the stream and
  its other requests carry on. Closing the stream cancels every request still on it.
- Each request on a stream is one call for the gate: counted for draining and the
  operator's limits, in the metrics (``protocol="v2-grpc"``) and the access log.
- ``ModelInfer`` answers once with every step; errors are the call's status, as on v1.

Messages are built and read only in ``batchmaker.wire.kserve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import TYPE_CHECKING

import grpc

from batchmaker.errors import BatchMakerError, InvalidRequestError, ModelNotFoundError
from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc
from batchmaker.server.calls import CallGate, server_version
from batchmaker.server.metrics import RequestObservation
from batchmaker.server.servicers import deadline_passed, inference_rpc, rpc
from batchmaker.types import StepBlock
from batchmaker.wire import kserve as wire
from batchmaker.wire.v1 import parse_version

if TYPE_CHECKING:
    from batchmaker.models.base import Model
    from batchmaker.repository.manager import ModelManager
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream

log = logging.getLogger(__name__)

SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PROTOCOL = "v2-grpc"


@dataclasses.dataclass(slots=True)
class Admitted:
    """A request the engine took, and how to answer it."""

    stream: RequestStream
    spec: wire.ResponseSpec
    model: Model
    top_k: int
    request_id: str
    """The client's id, echoed in every response (may be empty: v2 makes none up)."""

    @property
    def version(self) -> str:
        return str(self.stream.model_version)


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    """The v2 protocol over the server's ``CallGate`` and model manager."""

    protocol = PROTOCOL

    def __init__(self, gate: CallGate, manager: ModelManager) -> None:
        self.gate = gate
        self._manager = manager

    # ---- health and metadata ----------------------------------------------------------

    @rpc
    async def ServerLive(  # noqa: N802 (the RPC's name)
        self, request: kpb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(  # noqa: N802
        self, request: kpb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=self.gate.ready)

    @rpc
    async def ModelReady(  # noqa: N802
        self, request: kpb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelReadyResponse:
        return kpb.ModelReadyResponse(ready=model_ready(self.gate, request.name, request.version))

    @rpc
    async def ServerMetadata(  # noqa: N802
        self, request: kpb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ServerMetadataResponse:
        doc = wire.server_metadata(server_version())
        return wire.metadata_to_pb(doc, kpb.ServerMetadataResponse())  # type: ignore[no-any-return]

    @rpc
    async def ModelMetadata(  # noqa: N802
        self, request: kpb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelMetadataResponse:
        doc = model_metadata(self.gate, request.name, request.version)
        return wire.metadata_to_pb(doc, kpb.ModelMetadataResponse())  # type: ignore[no-any-return]

    @rpc
    async def ModelConfig(  # noqa: N802
        self, request: kpb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> kpb.ModelConfigResponse:
        doc = model_config(self.gate, request.name, request.version)
        return kpb.ModelConfigResponse(config=wire.metadata_to_pb(doc, kpb.ModelConfig()))

    # ---- the model repository -------------------------------------------------------

    @rpc
    async def RepositoryIndex(  # noqa: N802
        self, request: kpb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> kpb.RepositoryIndexResponse:
        index = wire.repository_index(self._manager.index(), ready_only=request.ready)
        return wire.metadata_to_pb(  # type: ignore[no-any-return]
            {"models": index}, kpb.RepositoryIndexResponse()
        )

    @rpc
    async def RepositoryModelLoad(  # noqa: N802
        self, request: kpb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> kpb.RepositoryModelLoadResponse:
        name = repository_model(request.model_name, request.parameters, allowed=())
        log.info("admin (v2): load %s (default versions)", name)
        await self._manager.load(name, ())
        return kpb.RepositoryModelLoadResponse()

    @rpc
    async def RepositoryModelUnload(  # noqa: N802
        self, request: kpb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> kpb.RepositoryModelUnloadResponse:
        name = repository_model(
            request.model_name, request.parameters, allowed=("unload_dependents",)
        )
        log.info("admin (v2): unload %s (every version)", name)
        await self._manager.unload(name, ())
        return kpb.RepositoryModelUnloadResponse()

    # ---- inference ------------------------------------------------------------------

    def _admit(
        self, msg: kpb.ModelInferRequest, context: grpc.aio.ServicerContext, obs: RequestObservation
    ) -> Admitted:
        gate = self.gate
        engine = gate.begin(
            obs, msg.model_name, wire.input_length((t.name, t.shape) for t in msg.inputs)
        )
        return admit(gate, engine, obs, wire.call_from_pb(msg), deadline=context.time_remaining())

    @inference_rpc
    async def ModelInfer(  # noqa: N802
        self,
        request: kpb.ModelInferRequest,
        context: grpc.aio.ServicerContext,
        obs: RequestObservation,
    ) -> kpb.ModelInferResponse:
        req = self._admit(request, context, obs)
        tensors, params = await whole(self.gate, req, obs)
        return wire.response_to_pb(req.model.name, req.version, req.request_id, tensors, params)

    async def ModelStreamInfer(  # noqa: N802
        self,
        request_iterator: AsyncIterator[kpb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Reads requests until the client half-closes, runs each as its own task, and
        ends once every one has answered; cancelling the call cancels them all."""
        write_lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in request_iterator:
                task = asyncio.create_task(self._stream_one(msg, context, write_lock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream_one(
        self, msg: kpb.ModelInferRequest, context: grpc.aio.ServicerContext, lock: asyncio.Lock
    ) -> None:
        """One request of a stream, from admission to its final response or its error."""
        gate, name = self.gate, "ModelStreamInfer"

        async def write(resp: kpb.ModelStreamInferResponse) -> None:
            async with lock:
                await context.write(resp)

        with gate.active(name, msg.id, protocol=PROTOCOL, expired=deadline_passed(context)) as obs:
            try:
                req = self._admit(msg, context, obs)
            except Exception as exc:
                await write(_error(msg, "", gate.fail(name, obs, exc)))
                return
            try:
                async with contextlib.aclosing(responses(gate, req, obs)) as steps:
                    async for tensors, params in steps:
                        resp = wire.response_to_pb(
                            req.model.name, req.version, req.request_id, tensors, params
                        )
                        await write(kpb.ModelStreamInferResponse(infer_response=resp))
            except Exception as exc:
                await write(_error(msg, req.version, gate.fail(name, obs, exc)))


def _error(
    msg: kpb.ModelInferRequest, version: str, error: BatchMakerError
) -> kpb.ModelStreamInferResponse:
    """A failed request's in-band answer: its status and message (prefixed with its id,
    as Triton does, since tritonclient's stream callback sees only the message), and an
    ``infer_response`` carrying the id for clients that read the message itself."""
    code, text = error.code.value, error.message
    prefix = f"[request id: {msg.id}] " if msg.id else ""
    resp = kpb.ModelInferResponse(
        model_name=msg.model_name, model_version=version or msg.model_version, id=msg.id
    )
    resp.parameters["error_code"].string_param = code
    resp.parameters[wire.FINAL].bool_param = True
    return kpb.ModelStreamInferResponse(
        error_message=f"{prefix}{code}: {text}", infer_response=resp
    )


def repository_model(name: str, parameters: Iterable[str], *, allowed: tuple[str, ...]) -> str:
    """The model a v2 load or unload names, refusing the parameters this server does not
    take (both v2 doors ask it)."""
    if not name:
        raise InvalidRequestError("model_name: required")
    for key in parameters:
        if key not in allowed:
            raise InvalidRequestError(
                f"parameters.{key}: not supported here (models load from the server's "
                "repository folder, with their own config.json)"
            )
    return name


# ---- shared with the HTTP front door ------------------------------------------------


def admit(
    gate: CallGate,
    engine: Engine,
    obs: RequestObservation,
    call: wire.V2Call,
    *,
    deadline: float | None,
) -> Admitted:
    """Check ``call`` against its model and submit it: what both v2 doors do once their
    transport has decoded the request."""
    model = engine.model(
        call.model_name, parse_version("model_version", call.model_version, call.model_name)
    )
    request, spec = wire.request_from_call(call, model.signature, deadline=deadline)
    stream = gate.submit(engine, obs, request)
    return Admitted(stream, spec, model, request.top_k, call.id)


async def whole(
    gate: CallGate, req: Admitted, obs: RequestObservation
) -> tuple[wire.Tensors, dict[str, wire.Param]]:
    """Every step of an admitted request as one response's tensors and parameters, for an
    answer in one piece (``ModelInfer``, REST ``infer`` and ``generate``). The request
    leaves its batch if the call ends first."""
    stream = req.stream
    try:
        blocks: list[StepBlock] = []
        while more := await stream.next_blocks():
            blocks += more
    finally:
        stream.cancel()
        gate.observe_end(obs, stream)
    obs.num_steps = sum(len(b) for b in blocks)
    tensors = wire.output_tensors(req.spec, blocks, req.model.signature)
    params = wire.response_parameters(
        req.spec, first_step=None, finish_reason=stream.finish_reason, final=None
    )
    return tensors, params


async def responses(
    gate: CallGate, req: Admitted, obs: RequestObservation
) -> AsyncGenerator[tuple[wire.Tensors, dict[str, wire.Param]], None]:
    """A streamed request's responses, as ``(tensors, parameters)`` for a door to encode
    and write: one per batch of steps ready when the reader asks (cut by
    ``steps_per_response`` and the stream message budget), each with its ``first_step``,
    the last with ``finish_reason`` and ``triton_final_response`` true, or an empty final
    one when the request asked for it or ended with no step left to carry the flag.
    Raises the request's error. Whatever ends the iteration, the request leaves its batch:
    iterate it inside ``contextlib.aclosing``, so that a cancelled reader closes it at once.
    """
    stream, spec, signature = req.stream, req.spec, req.model.signature
    try:
        budget = gate.limits.max_stream_message_bytes
        step_bytes = wire.step_nbytes(spec, signature, req.top_k)
        final_sent = False
        while True:
            blocks = await stream.next_blocks()
            reason = stream.finish_reason if stream.done else None
            count = sum(len(b) for b in blocks)
            if count:
                tensors = wire.output_tensors(spec, blocks, signature)
                starts = wire.split_steps(spec, count, step_bytes, budget)
                for i, a in enumerate(starts):
                    b = starts[i + 1] if i + 1 < len(starts) else count
                    last = reason is not None and b == count and not spec.empty_final
                    params = wire.response_parameters(
                        spec,
                        first_step=blocks[0].first_step + a,
                        finish_reason=reason if last else None,
                        final=last,
                    )
                    yield wire.slice_steps(tensors, a, b, spec.batch_dim), params
                    final_sent = last
                obs.num_steps += count
            if reason is not None or not blocks:
                break
        if not final_sent:
            params = wire.response_parameters(
                spec, first_step=None, finish_reason=stream.finish_reason, final=True
            )
            yield [], params
    finally:
        stream.cancel()  # no-op once done; otherwise it leaves its batch
        gate.observe_end(obs, stream)


def model_ready(gate: CallGate, name: str, version: str) -> bool:
    engine = gate.engine_or_none
    if engine is None or gate.draining:
        return False
    try:
        engine.model(name, parse_version("version", version, name))
    except ModelNotFoundError:
        return False
    return True


def _model(gate: CallGate, name: str, version: str) -> tuple[Engine, Model]:
    if not name:
        raise InvalidRequestError("name: required")
    engine = gate.serving_engine()
    return engine, engine.model(name, parse_version("version", version, name))


def model_metadata(gate: CallGate, name: str, version: str) -> dict[str, object]:
    engine, model = _model(gate, name, version)
    versions = [m.version for m in engine.models if m.name == model.name]
    return wire.model_metadata(model.name, model.version, model.signature, versions)


def model_config(gate: CallGate, name: str, version: str) -> dict[str, object]:
    engine, model = _model(gate, name, version)
    return wire.model_config(
        model.name,
        model.version,
        model.signature,
        max_batch={c: engine.max_batch_for(model, c) for c in model.cells},
        batching_mode=engine.config.mode,
    )
