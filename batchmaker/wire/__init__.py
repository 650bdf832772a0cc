"""What crosses the network: protobuf <-> domain types, and the bearer-token header.

- ``v1``: ``batchmaker.v1`` messages <-> ``InferRequest``, ``StepOutput`` and metadata;
- ``metadata``: the ``authorization: Bearer`` header, written by clients, read by the server.

Both edges use it (the server's servicers and the clients), so it sits below both and
imports only ``batchmaker.types``, ``batchmaker.errors`` and the generated stubs in
``batchmaker.v1``. No torch, no grpc server or channel.
"""
