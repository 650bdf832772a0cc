"""The asyncio client: ``AsyncClient`` and its ``AsyncInferStream``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Unpack

import grpc
from grpc_health.v1 import health_pb2

from batchmaker.client.channel import (
    ClientBase,
    InferResult,
    Inputs,
    RequestOptions,
    StreamState,
    StreamView,
    translate,
)
from batchmaker.types import StepOutput
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.wire import v1 as wire


class AsyncInferStream(StreamView):
    """A running streaming call on asyncio: ``async for step in stream``."""

    async def messages(self) -> AsyncIterator[list[StepOutput]]:
        """The steps grouped as the server sent them."""
        try:
            async for msg in self._call:
                yield self._state.absorb(msg)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        async for steps in self.messages():
            for s in steps:
                yield s

    async def collect(self) -> InferResult:
        return self._state.result([s async for s in self])


class AsyncClient(ClientBase):
    """The asyncio twin of ``Client``; create and use it inside one event loop."""

    _grpc = grpc.aio

    def infer_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncInferStream:
        msg = wire.request_to_pb(model, inputs, **options)
        return AsyncInferStream(self._stub.InferStream(msg, timeout=timeout))

    async def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferResult:
        msg = wire.request_to_pb(model, inputs, **options)
        resp = await self._unary(self._stub.Infer(msg, timeout=timeout))
        state = StreamState()
        return state.result(state.absorb(resp))

    async def model_metadata(
        self, name: str, version: int | str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = wire.model_metadata_request(name, version)
        resp: pb.ModelMetadataResponse = await self._unary(
            self._stub.ModelMetadata(req, timeout=timeout)
        )
        return resp

    async def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        req = wire.server_metadata_request()
        resp: pb.ServerMetadataResponse = await self._unary(
            self._stub.ServerMetadata(req, timeout=timeout)
        )
        return resp

    async def repository_index(self, *, timeout: float | None = None) -> list[pb.ModelVersionState]:
        resp = await self._unary(
            self._repo.RepositoryIndex(wire.repository_index_request(), timeout=timeout)
        )
        return list(resp.models)

    async def load_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        req = wire.load_model_request(name, versions)
        return list((await self._unary(self._repo.LoadModel(req, timeout=timeout))).models)

    async def unload_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        req = wire.unload_model_request(name, versions)
        return list((await self._unary(self._repo.UnloadModel(req, timeout=timeout))).models)

    async def is_serving(self, *, timeout: float | None = 5.0) -> bool:
        resp = await self._unary(
            self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        )
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    @staticmethod
    async def _unary(call: Any) -> Any:
        try:
            return await call
        except grpc.RpcError as exc:
            raise translate(exc) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
