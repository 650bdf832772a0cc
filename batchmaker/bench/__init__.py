"""The measuring path: benchmarks and what they share. Nothing that serves imports it.

- ``engine``: ``batchmaker bench``, every mode in-process on one recorded trace, with
  ``workloads`` (a model family each: chain, seq2seq, tree) and ``report`` (its load
  points, its report and its table);
- ``e2e``: ``batchmaker bench --e2e``, one server subprocess per mode over gRPC, with
  ``e2e_outputs`` (its JSON, CSV, plots and table);
- ``reference``: the idle run's outputs every other run is checked against;
- ``overhead``: ``batchmaker bench-overhead``, the gRPC server against the in-process engine;
- ``coldstart``: ``batchmaker bench-coldstart``, spawn to first response by phase;
- ``openloop``, ``trace``, ``sweep``: open-loop replay of recorded traces and the search
  for the sustainable load under an SLO;
- ``kernels``: a cell's forward timed alone, the denominator of efficiency;
- ``sampler``, ``plots``, ``launcher``: /metrics over time, PNG plots, a server in a child
  process.

May import the runtime, the models, the server, the client and the public face. Never the
CLI: the CLI builds the configs from flags and calls in here.
"""
