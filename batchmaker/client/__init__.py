"""Python clients for ``batchmaker.v1``: ``Client`` (blocking) and ``AsyncClient``.

Both speak the same API. Streaming calls return iterators of ``StepOutput``, the very
type the in-process engine streams, and a failed call raises the same typed errors
(``InvalidRequestError``, ``AdmissionRejectedError``, ...) with the status in ``.code``.
Importing this package does not import torch.

    with Client("127.0.0.1:50051") as c:
        for step in c.infer_stream("lstm-lm", [1, 2, 3], top_k=3):
            print(step.step, step.top_ids)

May import ``batchmaker.wire``, ``types``, ``errors`` and the generated stubs; never the
server, the runtime or torch.
"""

from batchmaker.client.aio import AsyncClient, AsyncInferStream
from batchmaker.client.channel import (
    DEFAULT_ADDRESS,
    InferResult,
    RequestOptions,
    RetryPolicy,
    TLSConfig,
)
from batchmaker.client.sync import Client, InferStream

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "AsyncInferStream",
    "Client",
    "InferResult",
    "InferStream",
    "RequestOptions",
    "RetryPolicy",
    "TLSConfig",
]
