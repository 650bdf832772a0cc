"""A discrete-event simulator that runs the real scheduler under simulated time.

The ``scheduler`` package's classes, unchanged, run here on a ``ManualClock`` with no
threads and no torch: each plan takes the time a measured step-cost profile
(``profile.py``) says, and requests arrive from a trace. What comes out is what an
operator asks of a server before deploying it: latency percentiles, time to first
output, throughput, batch sizes, device busy fraction and rejections.

May import ``scheduler``, ``batchmaker.types`` and ``batchmaker.errors`` only, and never
torch: the planner and the SLO controller run it in processes that load no model.
"""
