"""The blocking client: ``Client`` and its ``InferStream``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


class InferStream(StreamView):
    """A running streaming call: iterate for ``StepOutput``s; ``cancel()`` to leave early."""

    def __iter__(self) -> Iterator[StepOutput]:
        for steps in self.messages():
            yield from steps

    def messages(self) -> Iterator[list[StepOutput]]:
        """The steps grouped as the server sent them (several per message when behind)."""
        try:
            for msg in self._call:
                yield self._state.absorb(msg)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def collect(self) -> InferResult:
        return self._state.result(list(self))

    def __enter__(self) -> InferStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client(ClientBase):
    """A blocking client over one channel; thread-safe, as gRPC channels are."""

    _grpc = grpc

    def infer_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferStream:
        """Start a streaming call. ``top_k`` unset means 1; ``timeout`` is the call's deadline."""
        msg = wire.request_to_pb(model, inputs, **options)
        return InferStream(self._stub.InferStream(msg, timeout=timeout))

    def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> InferResult:
        """One unary call: every step at once."""
        msg = wire.request_to_pb(model, inputs, **options)
        resp = self._unary(self._stub.Infer, msg, timeout)
        state = StreamState()
        return state.result(state.absorb(resp))

    def model_metadata(
        self, name: str, version: int | str | None = None, *, timeout: float | None = None
    ) -> pb.ModelMetadataResponse:
        req = wire.model_metadata_request(name, version)
        resp: pb.ModelMetadataResponse = self._unary(self._stub.ModelMetadata, req, timeout)
        return resp

    def server_metadata(self, *, timeout: float | None = None) -> pb.ServerMetadataResponse:
        req = wire.server_metadata_request()
        resp: pb.ServerMetadataResponse = self._unary(self._stub.ServerMetadata, req, timeout)
        return resp

    def repository_index(self, *, timeout: float | None = None) -> list[pb.ModelVersionState]:
        """Every model version in the server's repository or served, with its state."""
        resp = self._unary(self._repo.RepositoryIndex, wire.repository_index_request(), timeout)
        return list(resp.models)

    def load_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        """Serve ``versions`` of ``name`` (its version policy's when empty); returns once
        they serve. The model's versions and their states after the change."""
        req = wire.load_model_request(name, versions)
        return list(self._unary(self._repo.LoadModel, req, timeout).models)

    def unload_model(
        self, name: str, versions: Sequence[int | str] = (), *, timeout: float | None = None
    ) -> list[pb.ModelVersionState]:
        """Stop serving ``versions`` of ``name`` (every served one when empty), once their
        in-flight requests finish."""
        req = wire.unload_model_request(name, versions)
        return list(self._unary(self._repo.UnloadModel, req, timeout).models)

    def is_serving(self, *, service: str = "", timeout: float | None = 5.0) -> bool:
        """grpc health says SERVING (False while the server starts or drains); ``service``
        is a service's full name (``batchmaker.v1.Inference``) or empty for the server."""
        req = health_pb2.HealthCheckRequest(service=service)
        resp = self._unary(self._health.Check, req, timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until health reports SERVING; waits on the health Watch stream, no polling."""
        call = self._health.Watch(
            health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
        )
        try:
            for resp in call:
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()

    @staticmethod
    def _unary(method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
