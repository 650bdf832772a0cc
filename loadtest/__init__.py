"""Locust load tests of the BatchMaker gRPC server (``make loadtest``, ``make soak``).

``locustfile.py`` is the only module that imports Locust, and so the only one that
runs under gevent's monkey-patching; Locust imports it in its own process. The
rest (``options``, ``arrivals``, ``workload``, ``report``, ``scrape``, ``run``)
is plain Python that the runner and the test suite import without patching
anything.
"""
