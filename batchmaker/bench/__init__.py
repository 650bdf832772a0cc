"""The measuring path: benchmarks and what they share. Nothing that serves imports it.

- ``engine``: ``batchmaker bench``, every mode in-process on one recorded trace;
- ``e2e``: ``batchmaker bench --e2e``, one server subprocess per mode over gRPC, with plots;
- ``overhead``: ``batchmaker bench-overhead``, the gRPC server against the in-process engine;
- ``coldstart``: ``batchmaker bench-coldstart``, spawn to first response by phase;
- ``openloop``, ``trace``, ``sweep``: open-loop replay of recorded traces and the search
  for the sustainable load under an SLO;
- ``sampler``, ``plots``, ``launcher``: /metrics over time, PNG plots, a server in a child
  process.

May import the runtime, the models, the server, the client and the public face. Never the
CLI: the CLI builds the configs from flags and calls in here.
"""
