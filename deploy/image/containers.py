"""The container side of ``make image-test`` (``check_image.py``): reporting each check, the
container engine (podman with runc and explicit ulimits, or docker), one container's life
and output, the reference server on the host, and the small clients the checks share.

Not a package: ``check_image.py`` runs as a script and imports this from its own folder.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
"""The host's ``batchmaker``: the client, and the reference the container is compared to."""
START_TIMEOUT_S = 120.0
SCORE_TOLERANCE = 1e-4
"""Same torch wheel inside and out; the tolerance only absorbs the CLI's 6-digit rounding."""
PODMAN_NOISE = "unable to get systemd connection"
"""podman without systemd cannot schedule its periodic healthchecks; `healthcheck run` works."""


# ---- reporting ---------------------------------------------------------------------------


@dataclass
class Report:
    """Every check's outcome, printed as it happens."""

    results: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, name: str, detail: str = "") -> None:
        self.results.append((status, name, detail))
        print(f"{status:<8}{name}" + (f": {detail}" if detail else ""), flush=True)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        self.add("PASS" if ok else "FAIL", name, detail)
        return ok

    def info(self, name: str, detail: str) -> None:
        self.add("INFO", name, detail)

    def run(self, name: str, fn: Callable[[], None]) -> None:
        """One group of checks; an exception in it is one FAIL, and the others still run."""
        print(f"-- {name}", flush=True)
        try:
            fn()
        except Exception as exc:  # reported as one FAIL, and the run goes on
            self.add("FAIL", name, f"{type(exc).__name__}: {exc}")

    def summary(self) -> int:
        count = {s: sum(1 for r in self.results if r[0] == s) for s in ("PASS", "FAIL", "SKIPPED")}
        print(
            f"image-test: {count['PASS']} passed, {count['FAIL']} failed, "
            f"{count['SKIPPED']} skipped",
            flush=True,
        )
        for status, name, detail in self.results:
            if status == "FAIL":
                print(f"  FAIL {name}: {detail}", flush=True)
        return 1 if count["FAIL"] else 0


# ---- the engine and containers -----------------------------------------------------------


class Lines:
    """A child's pipe, read on a thread so neither pipe can fill and block the container."""

    def __init__(self, pipe: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        with pipe:
            for line in pipe:
                if PODMAN_NOISE not in line:
                    self.seen.append(line.rstrip("\n"))
                    self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first line (new or already seen) that holds ``text``; None at EOF or timeout."""
        for line in list(self.seen):
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.queue.get(timeout=left)
            except queue.Empty:
                return None
            if item is None:
                return None
            if text in item:
                return item
        return None

    def text(self) -> str:
        return "\n".join(self.seen)


@dataclass
class Engine:
    """docker or podman, with the flags each needs on this kind of host."""

    name: str

    @property
    def podman(self) -> bool:
        return self.name == "podman"

    def argv(self, *args: str) -> list[str]:
        # runc: crun fails on cgroups here; podman reads --runtime for every command.
        return [self.name, *(["--runtime", "runc"] if self.podman else []), *args]

    def run_flags(self) -> list[str]:
        # Unset, the containers' RLIMIT_NPROC is too low for torch's and gRPC's threads.
        if self.podman:
            return ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        return []

    def __call__(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        out.stderr = "\n".join(ln for ln in out.stderr.splitlines() if PODMAN_NOISE not in ln)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])}...: exit {out.returncode}: {out.stderr}")
        return out


@dataclass
class Container:
    """One ``run`` of the image, attached: its output is read as it comes."""

    engine: Engine
    name: str
    proc: subprocess.Popen[str]
    out: Lines
    err: Lines
    started: float

    def log(self) -> str:
        return self.out.text() + "\n" + self.err.text()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> str:
        """The banner's first line: printed once the server says SERVING."""
        line = self.out.wait_for("batchmaker: listening on", timeout)
        if line is None:
            raise RuntimeError(f"{self.name} did not start; its log:\n{self.log()[-3000:]}")
        return line

    def exec(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.name, *argv, timeout=timeout, check=False)

    def exit_code(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def remove(self) -> None:
        self.engine("rm", "-f", "-t", "0", self.name, check=False)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Runner:
    """Starts containers of one image and removes every one of them at the end."""

    def __init__(self, engine: Engine, image: str) -> None:
        self.engine = engine
        self.image = image
        self.prefix = f"bm-imagetest-{os.getpid()}"
        self.count = 0
        self.names: list[str] = []

    def start(self, *options: str, args: Sequence[str] = ()) -> Container:
        self.count += 1
        name = f"{self.prefix}-{self.count}"
        self.names.append(name)
        argv = self.engine.argv(
            "run", "--rm", "--name", name, *self.engine.run_flags(), *options, self.image, *args
        )
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stderr is not None
        return Container(self.engine, name, proc, Lines(proc.stdout), Lines(proc.stderr), started)

    @contextmanager
    def container(self, *options: str, args: Sequence[str] = ()) -> Iterator[Container]:
        c = self.start(*options, args=args)
        try:
            yield c
        finally:
            c.remove()

    def cleanup(self) -> None:
        for name in self.names:
            self.engine("rm", "-f", "-t", "0", name, check=False, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def host_ports() -> tuple[list[str], dict[str, int]]:
    """Free host ports for gRPC, metrics and REST, as the image's variables."""
    ports = {"grpc": free_port(), "metrics": free_port(), "http": free_port()}
    env = [
        "-e",
        f"BATCHMAKER_PORT={ports['grpc']}",
        "-e",
        f"BATCHMAKER_METRICS_PORT={ports['metrics']}",
        "-e",
        f"BATCHMAKER_HTTP_PORT={ports['http']}",
    ]
    return ["--network", "host", *env], ports


# ---- answers -----------------------------------------------------------------------------


def infer_json(address: str, request: Sequence[str]) -> list[dict[str, Any]]:
    """``batchmaker infer --json`` with the host's CLI: one object per step, then the end."""
    out = subprocess.run(
        [str(VENV_BIN / "batchmaker"), "infer", "--address", address, "--json", *request],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"infer {' '.join(request)}: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def compare(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str | None:
    """Why ``got`` is not ``want`` (ids and text exactly, scores within tolerance), or None."""
    if len(got) != len(want):
        return f"{len(got)} lines, expected {len(want)}"
    for g, w in zip(got, want, strict=True):
        if set(g) != set(w):
            return f"fields {sorted(g)} != {sorted(w)}"
        for key in w:
            if key == "top_scores":
                diff = [abs(a - b) for a, b in zip(g[key], w[key], strict=False)]
                if len(g[key]) != len(w[key]) or max(diff, default=0.0) > SCORE_TOLERANCE:
                    return f"step {w.get('step')}: scores {g[key]} != {w[key]}"
            elif g[key] != w[key]:
                return f"step {w.get('step')}: {key} {g[key]!r} != {w[key]!r}"
    return None


def banner_requests(banner: str) -> dict[str, list[str]]:
    """The banner's example request per model: ``--model NAME <input flags>``."""
    requests = {}
    for line in banner.splitlines():
        words = shlex.split(line.strip())
        if words[:2] == ["batchmaker", "infer"] and "--model" in words:
            i = words.index("--model")
            requests[words[i + 1]] = words[i:]
    return requests


def demo_models() -> list[str]:
    """The demo models as the package on this host holds them."""
    from batchmaker.demos import DEMO_REPOSITORY

    return sorted(p.name for p in Path(DEMO_REPOSITORY).iterdir() if p.is_dir())


def metric_total(body: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


# ---- the checks --------------------------------------------------------------------------
