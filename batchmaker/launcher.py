"""A server in a child process, as benchmarks, load tests and end-to-end tests need one.

It runs the real entry point, finds the address from the first line the server
prints (``batchmaker: listening on HOST:PORT``, so ``--port 0`` works), and
stops it the way an orchestrator does: SIGTERM, then the exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

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

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """The exit status and everything the server logged; killed after ``timeout``."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status (0 when it drained cleanly)."""
        self.terminate()
        return self.wait(timeout)[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
