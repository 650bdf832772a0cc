"""A server in a child process, as benchmarks, load tests and end-to-end tests need one.

It runs the real entry point, finds the address from the first line the server
prints (``batchmaker: listening on HOST:PORT``, so ``--port 0`` works) and the
metrics URL from the second (``batchmaker: metrics on URL``, with ``--metrics-port``), and
stops it the way an orchestrator does: SIGTERM, then the exit status.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

LOG_LINES_KEPT = 5000
"""The server's last log lines ``wait`` returns; older ones are dropped, not buffered."""

DEFAULT_ENTRY: tuple[str, ...] = (sys.executable, "-m", "batchmaker", "serve")


class ServerProcess:
    """``entry + args`` in a subprocess; ``address`` once it listens."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        entry: Sequence[str] = DEFAULT_ENTRY,
        env: dict[str, str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.proc = subprocess.Popen(
            [*entry, "--port=0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # bounded: the child exits on any start error
        if "listening on" not in first:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=start_timeout)
            raise RuntimeError(f"the server did not start: {first!r}\n{err}")
        self.address = first.rsplit(" ", 1)[-1].strip()
        self.metrics_url: str | None = None
        """``http://host:port/metrics`` when the server was started with a metrics port."""
        second = self.proc.stdout.readline()  # the banner has more lines; this one is there
        if "metrics on" in second:
            self.metrics_url = second.rsplit(" ", 1)[-1].strip()
        # Drain both pipes for the server's whole life: a long load test logs more than a
        # pipe holds, and a server blocked on a full stderr pipe stalls every request.
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        assert self.proc.stderr is not None
        self._drains = [
            threading.Thread(target=_drain, args=(pipe, sink), daemon=True)
            for pipe, sink in ((self.proc.stderr, self._log), (self.proc.stdout, None))
        ]
        for t in self._drains:
            t.start()

    def log_lines(self) -> list[str]:
        """What the server has logged so far (its last ``LOG_LINES_KEPT`` lines)."""
        return list(self._log)

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """The exit status and what the server logged (its last ``LOG_LINES_KEPT`` lines);
        killed after ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._drains:
            t.join(timeout=10)
        return self.proc.returncode, "".join(self._log)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status (0 when it drained cleanly)."""
        self.terminate()
        return self.wait(timeout)[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _drain(pipe: IO[str], sink: collections.deque[str] | None) -> None:
    with pipe:
        for line in pipe:
            if sink is not None:
                sink.append(line)
