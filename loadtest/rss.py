"""The server's resident memory over a load test, sampled on a thread.

What the soak's leak check reads (``summary.judge``): a sample before the load, one every
``--rss-interval`` seconds while it runs (``--soak`` only), and one after. psutil is
imported only when a sampler is made, so a run against a server without a known pid
needs none.
"""

from __future__ import annotations

import math
import threading
import time

MIB = 1024.0 * 1024.0


class RssSampler:
    """The server's resident memory every ``interval`` seconds, on a thread, until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        import psutil  # only here: a run against a remote pid-less server needs none

        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self.started_at = time.time()
        """Unix time of the samples' time 0, to line them up with the requests' times."""
        self.samples: list[tuple[float, float]] = []
        self._thread = threading.Thread(target=self._run, name="loadtest-rss", daemon=True)

    def sample(self) -> float:
        mib = float(self._proc.memory_info().rss) / MIB
        self.samples.append((round(time.monotonic() - self._t0, 1), round(mib, 1)))
        return mib

    def _run(self) -> None:
        while not self._stop.wait(self._interval):  # ends when stop() sets the event
            try:
                self.sample()
            except Exception:  # the server exited: the end sample will say so
                return

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.started_at = time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def at(self, t: float) -> float:
        """The sample nearest ``t`` seconds after start."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1] if self.samples else math.nan

    def at_time(self, unix: float) -> float:
        """The sample nearest the Unix time ``unix`` (a request's clock)."""
        return self.at(unix - self.started_at)
