"""Generated protobuf and gRPC stubs of ``proto/batchmaker/kserve`` (``make proto``; never edit).

The KServe v2 / Triton ``inference`` package, written for this server from the public
protocol specification. Its messages live in protobuf's process-wide pool under the same
names as ``tritonclient``'s own stubs, so one process cannot import both: the stock
clients' tests run them in a process of their own. Only ``batchmaker.wire.kserve`` and
the servicer import these (and the load tests and benchmarks, as clients).
"""
