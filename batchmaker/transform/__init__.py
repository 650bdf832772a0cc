"""``batchmaker transform``: files of requests in, files of answers out, offline.

The job reads JSON Lines or plain text (a file, a directory of files, or stdin), runs
every line on the engine in-process (``job.EngineRunner``: the engine sees the whole
file, so its batches stay full) or on a running server (``job.ClientRunner``), and writes
one answer line per input line, in order, to ``<name>.out`` (``files.py``: the partial
file, resume and the final rename). The records and answers are ``wire/records.py``'s;
the window that keeps many lines in flight and answers them in order is
``server/records.py``'s, shared with the SageMaker door.

May import ``server``, ``client``, ``runtime``, ``repository``, ``models``, ``wire``,
``types``, ``errors``, ``config``; the CLI and the benchmarks import it.
"""
