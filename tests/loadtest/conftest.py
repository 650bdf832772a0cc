"""The load-test tier: the pure pieces of ``loadtest/`` and one short Locust run.

Nothing here imports Locust: importing it monkey-patches the process with gevent,
so Locust only ever runs in a subprocess (``loadtest/run.py``).
"""
