"""Generated protobuf and gRPC stubs of ``proto/batchmaker/v1`` (``make proto``; never edit).

They live here, at the proto package's own path, so that the generated
``from batchmaker.v1 import ...`` lines resolve inside this distribution.
Only ``batchmaker.wire.v1`` (conversion), the servicer and the client import them.
"""
