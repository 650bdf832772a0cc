"""The serving runtime: the engine, one worker thread per device, the executor seam, streams.

- ``engine``: admission, device placement, loading and unloading models while serving, and
  the one bridge from device threads back to the event loop;
- ``worker``: a device's step loop (schedule, execute, update, deliver) on its own thread;
- ``executor``: the seam between that loop and the device (the ``Executor`` protocol);
- ``torch_executor``: the real executor, torch cells and preallocated state pools;
- ``stream``: a request's output stream, what a caller iterates over.

May import ``batchmaker.types``, ``errors``, ``config``, ``models.base``, ``scheduler``, and
(in ``torch_executor`` only) ``cells`` and torch. Never the server, the client, the CLI or
the benchmarks. Only ``torch_executor`` imports torch, so the engine runs torch-free behind a
fake executor.
"""
