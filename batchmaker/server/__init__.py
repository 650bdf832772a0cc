"""The gRPC server: servicers, their lifecycle, metrics, logs and the server half of auth.

- ``lifecycle``: bind, load, warm up, report SERVING, drain and stop (``InferenceServer``);
- ``servicers``: ``batchmaker.v1.Inference`` and ``ModelRepository`` over the engine, and
  the one mapping from typed errors to gRPC statuses;
- ``metrics``: Prometheus metrics on their own port, read from the engine at scrape time;
- ``auth``: the bearer-token interceptor;
- ``logs``: structured logs, the per-call request id, the access log.

May import the runtime, the models, the repository, the wire conversions and the public
face (``types``, ``errors``, ``config``). Never the client, the CLI or the benchmarks.
Protobuf messages are built and read only in ``batchmaker.wire``.
"""
