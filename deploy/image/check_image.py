"""``make image-test``: run the built image as containers and check it as a user would.

Why a separate driver and not a test in ``tests/``: it needs a container engine and root,
which ``make test`` must not (tests/deploy/ checks the Dockerfiles without an engine). It
runs the image with podman (``--runtime runc``, explicit ulimits) or docker, whichever
``deploy/image/engine.sh`` picks, and checks what the image promises:

- health reaches SERVING; every demo model answers the banner's own example request as the
  same code answers it outside the container (a reference server on this host, through the
  same CLI), with negative controls showing the comparison rejects a wrong answer;
- ``/metrics`` answers and counts those calls; the server is PID 1 and not root; the image's
  HEALTHCHECK passes (and fails against a port nothing serves);
- SIGTERM while streams are in flight drains them and the container exits 0;
- a read-only root filesystem with a tmpfs works;
- each manifest in deploy/k8s, deploy/knative and deploy/kserve, run with its own env, user,
  read-only root and volumes: its probes pass against the container and every declared port
  serves the protocol its name says;
- bad input: a repository whose models cannot load, and an unknown ``BATCHMAKER_*``
  variable, end the container non-zero with the reason in its log;
- the SageMaker entry (``docker run IMAGE serve``) answers ``GET /ping`` on 8080, or is
  SKIPPED while the image's ``serve`` has no ``--sagemaker``;
- the build's CA secret left no trace in the image;
- the image's size and its cold start (``run`` to the first full response), median of runs.

Each check prints PASS, FAIL or SKIPPED with what it saw; the exit status is 1 on any FAIL.
Containers get --network host with free ports where the host's client must reach them, and
--network none (probes run inside) where the manifests' fixed ports would collide.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import manifests
import yaml
from containers import (
    REPO,
    SCORE_TOLERANCE,
    START_TIMEOUT_S,
    VENV_BIN,
    Container,
    Engine,
    Report,
    Runner,
    banner_requests,
    compare,
    demo_models,
    host_ports,
    http_get,
    infer_json,
    metric_total,
)

MANIFESTS = [
    "deploy/k8s/deployment.yaml",
    "deploy/knative/service.yaml",
    "deploy/knative/service-rest.yaml",
    "deploy/kserve/inferenceservice.yaml",
    "deploy/kserve/inferenceservice-rest.yaml",
]
GROUPS = [
    "image",
    "serving",
    "sigterm",
    "read-only",
    "manifests",
    "bad-input",
    "sagemaker",
    "build-secrets",
    "cold-start",
]


class ImageTest:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.engine = Engine(args.engine)
        self.runner = Runner(self.engine, args.image)
        self.inspect: dict[str, Any] = {}

    # -- the image itself

    def image_facts(self) -> None:
        r = self.report
        out = self.engine("image", "inspect", self.args.image)
        self.inspect = json.loads(out.stdout)[0]
        config = self.inspect.get("Config") or {}
        size = int(self.inspect["Size"])
        r.info("image size", f"{size / 1e6:.0f} MB ({size} bytes), {self.args.image}")
        r.check(
            config.get("User") not in (None, "", "0", "root", "0:0"),
            "image USER is not root",
            str(config.get("User")),
        )
        r.check(bool(self.healthcheck()), "image has a HEALTHCHECK", str(self.healthcheck()))
        r.info("entrypoint", json.dumps(config.get("Entrypoint")))

    def healthcheck(self) -> list[str]:
        """The HEALTHCHECK's test (``["CMD", ...]``): docker keeps it in Config, podman
        beside it; an image built in the OCI format has none."""
        found = (self.inspect.get("Config") or {}).get("Healthcheck") or self.inspect.get(
            "Healthcheck"
        )
        test: list[str] = (found or {}).get("Test", [])
        return test

    def build_secrets_left_nothing(self) -> None:
        """The CA bundle went in as a build secret: none of its certificates that the image
        does not carry anyway may be anywhere in the image's files."""
        r = self.report
        bundle = self.args.ca_bundle
        if not bundle:
            r.add("SKIPPED", "CA secret not in the image", "no --ca-bundle given")
            return
        image_bundle = self.engine(
            "run", "--rm", "--network", "none", *self.engine.run_flags(),
            "--entrypoint", "cat", self.args.image, "/etc/ssl/certs/ca-certificates.crt",
        ).stdout  # fmt: skip
        ours = set(_pem_blocks(image_bundle))
        extra = [b for b in _pem_blocks(Path(bundle).read_text()) if b not in ours]
        if not extra:
            r.add("SKIPPED", "CA secret not in the image", f"{bundle} adds no certificate")
            return
        body = extra[0].splitlines()
        needle = body[len(body) // 2]  # a line of base64 from inside the certificate
        grep = ["grep", "-rlF", "-e", needle, "/", "--exclude-dir=proc", "--exclude-dir=sys"]
        found = self.engine(
            "run", "--rm", "--network", "none", "--user", "0", *self.engine.run_flags(),
            "--entrypoint", grep[0], self.args.image, *grep[1:], "--exclude-dir=dev",
            timeout=600, check=False,
        )  # fmt: skip
        control = self.engine(
            "run", "--rm", "--network", "none", "--user", "0", *self.engine.run_flags(),
            "-v", f"{bundle}:/mnt/bundle.pem:ro", "--entrypoint", "grep", self.args.image,
            "-lF", "-e", needle, "/mnt/bundle.pem", check=False,
        )  # fmt: skip
        r.check(
            control.returncode == 0,
            "control: the search finds the certificate where it is",
            "found in the bundle mounted at /mnt/bundle.pem",
        )
        r.check(
            found.returncode == 1,
            "CA secret not in the image",
            f"{len(extra)} certificate(s) of {bundle} not in the image's own bundle; "
            + ("found in " + found.stdout.strip() if found.returncode == 0 else "in no file"),
        )

    # -- the image as a user runs it

    def serving(self) -> None:
        r = self.report
        options, ports = host_ports()
        address = f"127.0.0.1:{ports['grpc']}"
        from batchmaker.bench.launcher import ServerProcess

        reference = ServerProcess(["--host", "127.0.0.1"])
        try:
            with self.runner.container(*options) as c:
                c.wait_ready()
                banner = c.out.text()
                t_serving = time.perf_counter() - c.started
                health = subprocess.run(
                    [str(VENV_BIN / "batchmaker"), "health", "--address", address],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                r.check(
                    health.returncode == 0 and health.stdout.strip() == "SERVING",
                    "health reaches SERVING",
                    f"{health.stdout.strip() or health.stderr.strip()} after {t_serving:.1f} s",
                )
                self._answers(banner, address, reference.address)
                self._metrics(ports["metrics"], ports["http"])
                self._user_and_pid1(c)
                self._healthcheck(c, ports["grpc"])
        finally:
            reference.stop()

    def _answers(self, banner: str, address: str, reference: str) -> None:
        r = self.report
        requests = banner_requests(banner)
        r.check(
            sorted(requests) == demo_models(),
            "the banner offers every demo model",
            ", ".join(sorted(requests)),
        )
        answers = {}
        for model, request in sorted(requests.items()):
            got, want = infer_json(address, request), infer_json(reference, request)
            answers[model] = (request, got, want)
            why = compare(got, want)
            final = got[-1] if got else {}
            r.check(
                why is None and final.get("finish_reason") == "completed",
                f"infer {model}",
                f"{shlex.join(request[2:])} -> "
                + ", ".join(f"{k} {v}" for k, v in final.items())
                + f"; {len(got) - 1} steps equal to the reference"
                + ("" if why is None else f"; MISMATCH {why}"),
            )
        # Negative controls: the comparison must reject a wrong answer.
        request, got, want = next(a for a in answers.values() if "--text" in a[0])
        bad_id = json.loads(json.dumps(want))
        bad_id[0]["top_ids"][0] += 1
        bad_score = json.loads(json.dumps(want))
        bad_score[0]["top_scores"][0] += 10 * SCORE_TOLERANCE
        other = infer_json(reference, _other_input(request))
        rejected = [compare(got, bad) is not None for bad in (bad_id, bad_score, other)]
        r.check(
            all(rejected),
            "control: the comparison rejects a wrong answer",
            "a changed id, a score off by 1e-3, the answer to another input: "
            + ", ".join("rejected" if x else "ACCEPTED" for x in rejected),
        )

    def _metrics(self, metrics_port: int, http_port: int) -> None:
        r = self.report
        status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        served = metric_total(body, "batchmaker_request_success_total")
        r.check(
            status == 200 and served >= len(demo_models()),
            "/metrics answers and counts the calls",
            f"HTTP {status}, batchmaker_request_success_total {served:.0f}",
        )
        status, _ = http_get(f"http://127.0.0.1:{http_port}/v2/health/ready")
        r.check(status == 200, "KServe v2 REST ready", f"HTTP {status} on :{http_port}")

    def _user_and_pid1(self, c: Container) -> None:
        r = self.report
        status = c.exec("cat", "/proc/1/status").stdout
        uid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:")), [])
        cmdline = c.exec("cat", "/proc/1/cmdline").stdout.replace("\0", " ").strip()
        r.check(
            bool(uid) and "0" not in uid,
            "the server runs as non-root",
            f"PID 1 uids {' '.join(uid)}",
        )
        r.check(
            "batchmaker serve" in cmdline and "sh" not in cmdline.split()[0],
            "the server is PID 1 (the entrypoint execs it)",
            cmdline,
        )

    def _healthcheck(self, c: Container, port: int) -> None:
        r = self.report
        test = self.healthcheck()
        if not test:
            r.check(False, "the image's HEALTHCHECK command, run inside", "the image has none")
            return
        argv = test[1:] if test[:1] == ["CMD"] else ["/bin/sh", "-c", test[1]]
        if self.engine.podman:
            run = self.engine("healthcheck", "run", c.name, check=False, timeout=30)
            r.check(
                run.returncode == 0,
                "podman healthcheck run",
                f"exit {run.returncode} {run.stdout.strip()}".strip(),
            )
        own = c.exec(*argv, timeout=30)
        r.check(
            own.returncode == 0,
            "the image's HEALTHCHECK command, run inside",
            f"{shlex.join(argv)} -> {own.stdout.strip()} (exit {own.returncode})",
        )
        wrong = c.exec("env", f"BATCHMAKER_PORT={port + 1}", *argv, timeout=30)
        r.check(
            wrong.returncode != 0,
            "control: the HEALTHCHECK fails where nothing serves",
            f"BATCHMAKER_PORT={port + 1} -> exit {wrong.returncode}",
        )

    def sigterm_drain(self) -> None:
        """As tests/e2e/test_sigterm.py does it, with ``docker stop`` in place of kill."""
        from batchmaker import UnavailableError
        from batchmaker.client import Client

        r = self.report
        options, ports = host_ports()
        address = f"127.0.0.1:{ports['grpc']}"
        with self.runner.container(
            *options, "-e", "BATCHMAKER_GRACE_S=30", args=["--models", "lstm-lm"]
        ) as c:
            c.wait_ready()
            # No BDP probing: a stream the client has not read yet holds its handler (and
            # the drain) until the client reads it.
            client = Client(address, options=[("grpc.http2.bdp_probe", 0)])
            try:
                inputs = [list(range(i, i + 600)) for i in range(3)]
                streams = [
                    client.infer_stream("lstm-lm", x, return_vectors=True, timeout=60)
                    for x in inputs
                ]
                readers = [s.messages() for s in streams]
                firsts = [next(rd) for rd in readers]  # every stream is in flight
                stopper = threading.Thread(
                    target=self.engine,
                    args=("stop", "-t", "40", c.name),
                    kwargs={"timeout": 90, "check": False},
                    daemon=True,
                )
                stopper.start()
                deadline = time.monotonic() + 30
                while client.is_serving(timeout=5) and time.monotonic() < deadline:
                    time.sleep(0.05)
                refused = ""
                try:
                    client.infer("lstm-lm", [1, 2, 3], timeout=10)
                except UnavailableError as exc:
                    refused = str(exc)
                alive = c.proc.poll() is None
                complete = []
                for first, reader, stream in zip(firsts, readers, streams, strict=True):
                    steps = [s.step for s in first] + [s.step for m in reader for s in m]
                    complete.append(
                        steps == list(range(600)) and stream.finish_reason == "completed"
                    )
            finally:
                client.close()
            stopper.join(timeout=90)
            code = c.exit_code(timeout=60)
            log = c.log()
        r.check(
            alive and all(complete),
            "SIGTERM drains the streams in flight",
            f"3 streams of 600 steps: {sum(complete)} completed after the signal",
        )
        r.check("shutting down" in refused, "new calls refused while draining", refused[:80])
        r.check(
            code == 0 and "signal received: draining" in log,
            "the container exits 0 after the drain",
            f"exit {code}",
        )

    def read_only(self) -> None:
        r = self.report
        options, ports = host_ports()
        address = f"127.0.0.1:{ports['grpc']}"
        ro = ["--read-only", *(["--read-only-tmpfs=false"] if self.engine.podman else [])]
        with self.runner.container(*options, *ro, "--tmpfs", "/tmp:rw,size=64m") as c:
            c.wait_ready()
            request = banner_requests(c.out.text())["words-to-digits"]
            answer = infer_json(address, request)[-1]
            touch = c.exec("touch", "/home/batchmaker/x")
            tmp = c.exec("touch", "/tmp/x")
            r.check(
                answer.get("finish_reason") == "completed"
                and touch.returncode != 0
                and tmp.returncode == 0,
                "read-only root with a tmpfs /tmp serves",
                f"words-to-digits -> {answer}; writing the home directory: "
                f"{touch.stderr.strip().split(': ')[-1]}; /tmp writable",
            )
        options, ports = host_ports()
        with self.runner.container(*options, *ro) as c:
            line = c.out.wait_for("batchmaker: listening on", START_TIMEOUT_S)
            r.info(
                "read-only root with nothing writable at all",
                "serves too (this torch needs no temp dir to serve; keep the tmpfs for "
                "anything that writes a temp file)"
                if line
                else "does not start: " + c.log()[-300:],
            )

    # -- the manifests

    def manifests(self) -> None:
        for path in MANIFESTS:
            self.report.run(path, functools.partial(self._manifest, path))

    def _manifest(self, path: str) -> None:
        r = self.report
        doc = next(d for d in yaml.safe_load_all((REPO / path).read_text()) if d)
        pod = manifests.pod_spec(doc)
        (spec,) = pod["containers"]
        security = {**(pod.get("securityContext") or {}), **(spec.get("securityContext") or {})}
        env = manifests.service_links(path) | manifests.knative_env(doc, spec)
        notes = []
        for item in spec.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "secretKeyRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = secrets.token_hex(16)  # the Secret's value, made up
        if env.get("BATCHMAKER_DEVICES", "cpu") != "cpu":
            notes.append(f"BATCHMAKER_DEVICES={env['BATCHMAKER_DEVICES']} run as cpu here")
            env["BATCHMAKER_DEVICES"] = "cpu"
        options = ["--network", "none"]
        for key, value in sorted(env.items()):
            options += ["-e", f"{key}={value}"]
        if "runAsUser" in security:
            group = f":{security['runAsGroup']}" if "runAsGroup" in security else ""
            options += ["--user", f"{security['runAsUser']}{group}"]
        if security.get("readOnlyRootFilesystem"):
            options += ["--read-only"] + (["--read-only-tmpfs=false"] if self.engine.podman else [])
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for mount in spec.get("volumeMounts", []):
            if mount["name"] in empty_dirs:
                options += ["--tmpfs", f"{mount['mountPath']}:rw,size=256m,mode=1777"]
        if (spec.get("securityContext") or {}).get("capabilities", {}).get("drop") == ["ALL"]:
            options += ["--cap-drop", "ALL"]
        if security.get("allowPrivilegeEscalation") is False:
            options += ["--security-opt", "no-new-privileges"]
        entry = ["--entrypoint", spec["command"][0]] if spec.get("command") else []
        args = [*spec.get("command", [])[1:], *spec.get("args", [])]
        with self.runner.container(*options, *entry, args=args) as c:
            first = spec.get("startupProbe") or spec.get("readinessProbe")
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (ok := manifests.probe(c, first)[0]) and time.monotonic() < deadline:
                if c.proc.poll() is not None:
                    break
                time.sleep(0.5)
            r.check(ok, f"{path}: starts and passes its first probe", " ".join(notes) or "")
            if not ok:
                r.info(path, c.log()[-1500:])
                return
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in spec:
                    passed, what = manifests.probe(c, spec[kind])
                    r.check(passed, f"{path}: {kind}", what)
            for port in spec.get("ports", []):
                passed, what = manifests.port_speaks(c, port)
                r.check(passed, f"{path}: port {port.get('name')} {port['containerPort']}", what)
            annotations = manifests.annotations(doc)
            if "prometheus.io/port" in annotations:
                p = int(annotations["prometheus.io/port"])
                url = f"http://127.0.0.1:{p}{annotations.get('prometheus.io/path', '/metrics')}"
                passed, what = manifests.http_inside(c, url, "batchmaker_server_info")
                r.check(passed, f"{path}: prometheus.io annotations scrape", what)
            if path == MANIFESTS[0]:
                # Negative controls for the probe runner itself.
                grpc_port = spec["readinessProbe"]["grpc"]["port"]
                wrong_grpc = manifests.probe(c, {"grpc": {"port": grpc_port + 1}})[0]
                wrong_path = manifests.probe(c, {"httpGet": {"path": "/nope", "port": 8000}})[0]
                r.check(
                    not wrong_grpc and not wrong_path,
                    "control: a probe on a wrong port or path fails",
                    f"grpc :{grpc_port + 1} {'passed' if wrong_grpc else 'failed'}, "
                    f"GET :8000/nope {'passed' if wrong_path else 'failed'}",
                )

    # -- bad input

    def bad_input(self) -> None:
        r = self.report
        from batchmaker.demos import DEMO_REPOSITORY

        with tempfile.TemporaryDirectory(prefix="bm-broken-") as tmp:
            repo = Path(tmp) / "models"
            shutil.copytree(DEMO_REPOSITORY, repo)
            for weights in repo.glob("*/*/model.safetensors"):
                # What a clone without Git LFS leaves in place of the weights.
                weights.write_text("version https://git-lfs.github.com/spec/v1\n")
            os.chmod(tmp, 0o755)
            with self.runner.container(
                "--network", "none", "-v", f"{repo}:/models:ro",
                "-e", "BATCHMAKER_MODEL_REPOSITORY=/models",
            ) as c:  # fmt: skip
                code = c.exit_code(timeout=START_TIMEOUT_S)
                log = c.log()
        reason = next((ln for ln in log.splitlines() if "no model could be loaded" in ln), "")
        r.check(
            code not in (None, 0) and "counting-lm@1" in reason and "safetensors" in reason,
            "a repository whose models cannot load: exit non-zero, reason in the log",
            f"exit {code}: {reason[:160]}",
        )
        with self.runner.container("--network", "none", "-e", "BATCHMAKER_MAX_BATCHES=8") as c:
            code = c.exit_code(timeout=START_TIMEOUT_S)
            log = c.log()
        line = next((ln for ln in log.splitlines() if "BATCHMAKER_MAX_BATCHES" in ln), "")
        r.check(
            code not in (None, 0) and bool(line),
            "an unknown BATCHMAKER_* variable: exit non-zero, named in the log",
            f"exit {code}: {line[:160]}",
        )

    # -- SageMaker

    def sagemaker(self) -> None:
        r = self.report
        help_text = self.engine(
            "run", "--rm", "--network", "none", *self.engine.run_flags(), self.args.image,
            "--help", check=False,
        ).stdout  # fmt: skip
        if "--sagemaker" not in help_text:
            r.add(
                "SKIPPED",
                "SageMaker: `run IMAGE serve` answers GET /ping on 8080",
                "the image's `batchmaker serve --help` lists no --sagemaker (issue 16)",
            )
            return
        from batchmaker.demos import DEMO_REPOSITORY

        with tempfile.TemporaryDirectory(prefix="bm-sagemaker-") as tmp:
            model_dir = Path(tmp) / "model"
            shutil.copytree(DEMO_REPOSITORY, model_dir)
            os.chmod(tmp, 0o755)
            with self.runner.container(
                "--network", "none", "-v", f"{model_dir}:/opt/ml/model:ro", args=["serve"]
            ) as c:  # fmt: skip
                deadline = time.monotonic() + START_TIMEOUT_S
                ok, what = False, "no answer"
                while time.monotonic() < deadline and c.proc.poll() is None:
                    ok, what = manifests.http_inside(c, "http://127.0.0.1:8080/ping", "")
                    if ok:
                        break
                    time.sleep(0.5)
                cmdline = c.exec("cat", "/proc/1/cmdline").stdout.replace("\0", " ").strip()
                if not ok:
                    what += "; log: " + c.log()[-800:]
        r.check(ok, "SageMaker: `run IMAGE serve` answers GET /ping on 8080", what)
        r.check(
            "--sagemaker" in cmdline, "SageMaker: PID 1 is `batchmaker serve --sagemaker`", cmdline
        )

    # -- cold start

    def cold_start(self) -> None:
        """``run`` to the first full response, and the same server started on this host
        (``batchmaker serve``, same code and torch), run for run in turn: the difference is
        what the container costs, measured under the same load on a shared machine."""
        from batchmaker.bench.launcher import ServerProcess
        from batchmaker.client import Client

        def first_response(address: str) -> None:
            with Client(address) as client:
                result = client.infer("counting-lm", [1, 2, 3, 4], timeout=30)
            assert result.finish_reason == "completed", result.finish_reason

        container: list[float] = []
        host: list[float] = []
        for _ in range(self.args.cold_start_runs):
            options, ports = host_ports()
            with self.runner.container(*options) as c:
                c.wait_ready()
                first_response(f"127.0.0.1:{ports['grpc']}")
                container.append(time.perf_counter() - c.started)
            t0 = time.perf_counter()
            server = ServerProcess(["--host", "127.0.0.1"])
            try:
                first_response(server.address)
                host.append(time.perf_counter() - t0)
            finally:
                server.stop()
        for name, runs in ((f"`{self.engine.name} run`", container), ("on the host", host)):
            self.report.info(
                "cold start",
                f"{name} to the first full response (counting-lm, 4 tokens): median "
                f"{statistics.median(runs):.2f} s [{min(runs):.2f}, {max(runs):.2f}] of "
                f"{len(runs)} runs: " + ", ".join(f"{t:.2f}" for t in runs),
            )
        extra = statistics.median(container) - statistics.median(host)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        self.report.info(
            "cold start",
            f"the container's extra: {extra:+.2f} s (medians); load average {load} on "
            f"{os.cpu_count()} cores",
        )


# ---- helpers for the manifests -----------------------------------------------------------


def _pem_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("-----BEGIN"):
            current = []
        elif line.startswith("-----END"):
            blocks.append("\n".join(current))
        else:
            current.append(line.strip())
    return blocks


def _other_input(request: list[str]) -> list[str]:
    """The same request with another valid text: the example's words in reverse order."""
    i = request.index("--text") + 1
    words = request[i].split()
    return [*request[:i], " ".join(reversed(words)), *request[i + 1 :]]


def _pip_ca_bundle() -> str:
    """The CA bundle pip uses on this host, found as build.sh's CA_BUNDLE=auto finds it."""
    found = os.environ.get("PIP_CERT", "")
    if not found and shutil.which("pip"):
        found = subprocess.run(
            ["pip", "config", "get", "global.cert"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return found or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE", "")


# ---- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="batchmaker:cpu")
    parser.add_argument("--engine", default=None, help="docker or podman; default: engine.sh")
    parser.add_argument("--ca-bundle", default="", help="the CA bundle the build was given")
    parser.add_argument("--cold-start-runs", type=int, default=3)
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only these groups of checks (repeatable); default: all",
    )
    args = parser.parse_args(argv)
    if args.ca_bundle == "auto":
        args.ca_bundle = _pip_ca_bundle()
    if args.engine is None:
        args.engine = subprocess.run(
            [str(REPO / "deploy/image/engine.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
    report = Report()
    test = ImageTest(args, report)
    print(f"image-test: {args.image} with {args.engine}", flush=True)
    groups: dict[str, Callable[[], None]] = {
        "image": test.image_facts,
        "serving": test.serving,
        "sigterm": test.sigterm_drain,
        "read-only": test.read_only,
        "manifests": test.manifests,
        "bad-input": test.bad_input,
        "sagemaker": test.sagemaker,
        "build-secrets": test.build_secrets_left_nothing,
        "cold-start": test.cold_start,
    }
    assert list(groups) == GROUPS
    try:
        report.run("image", test.image_facts)  # always: the others read its inspect output
        for name in (args.only or GROUPS) if test.inspect else []:
            if name == "image":
                continue
            if name == "manifests":
                test.manifests()
            else:
                report.run(name, groups[name])
    finally:
        test.runner.cleanup()
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
