"""What a failed gRPC call raises, for the load-test tier's fake calls (``test_timing``,
``test_readers``): the readers and the interceptor read only its code and details."""

from __future__ import annotations

import grpc


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "from the fake") -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details
