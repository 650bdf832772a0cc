"""The ModelRepository admin service over a real channel: list, load and unload while other
streams run, version policies, bad model folders, and the ``batchmaker models`` command.

The server is gated, so the test decides when each step runs: a stream of another model
is provably mid-flight while a model is loaded or unloaded, and still ends correctly.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gate import call_posted
from harness import GUARD_S, small_model, torch_executor
from live_server import LiveServer, e2e_config
from reference import assert_matches_alone

from batchmaker import BatchMakerError, Code, InferRequest, ModelNotFoundError, UnavailableError
from batchmaker.cli.main import main
from batchmaker.client import Client
from batchmaker.config import ServerConfig
from batchmaker.models.seq2seq import seq2seq_model
from batchmaker.repository.folder import save_model
from batchmaker.repository.manager import ModelManager
from batchmaker.repository.store import ModelRepository

LM_V1 = small_model("lstm", name="lm", seed=1)
LM_V2 = small_model("lstm", name="lm", seed=2, version=2)
S2S = seq2seq_model("s2s", seed=3, max_decode_len=20)
LONG = list(range(1, 50))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for m in (LM_V1, LM_V2, S2S):
        save_model(m, tmp_path)
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"family": "transformer"}))
    (broken / "model.safetensors").write_bytes(b"")
    return tmp_path


def _server(repo: Path, *, grace: float = 30.0) -> LiveServer:
    """Admin calls opened with the flag: these tests are about loading, not about who may
    (``test_admin_access.py``)."""
    manager = ModelManager(ModelRepository(repo), unload_grace_s=grace)
    return LiveServer(
        lambda: manager.initial_models(["lm"]),
        e2e_config(),
        gated=True,
        manager=manager,
        server_config=ServerConfig(port=0, warmup=False, allow_unauthenticated_admin=True),
    )


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(2) as p:
        yield p


def _states(client: Client) -> dict[str, str]:
    return {f"{s.name}@{s.version}": s.state for s in client.repository_index(timeout=GUARD_S)}


def _step_until(
    live: LiveServer, fut: concurrent.futures.Future[object], posted: threading.Event
) -> None:
    """Run steps one at a time until ``fut`` (an admin call) is answered, once its install
    is ``posted`` to the worker (``call_posted``; stepping before it raced the load's
    reading from disk). Each step is one the test allowed, so what ran meanwhile is known;
    the held stream has steps to spare."""
    assert live.gate is not None
    assert posted.wait(GUARD_S), "the load never reached the worker"
    while not fut.done():
        live.run(live.gate.step())
    fut.result(GUARD_S)


def _check_s2s(client: Client, tokens: list[int]) -> None:
    got = client.infer("s2s", tokens, return_vectors=True, timeout=GUARD_S).steps
    want = S2S.reference(InferRequest("s2s", tokens))
    assert len(got) == len(want)
    assert np.abs(np.stack([o.vector for o in got]) - want).max() < 1e-5


def test_index_then_load_while_another_model_streams(
    repo: Path, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    with _server(repo) as live:
        client, admin = live.client(), live.client()
        # The version policy (latest) served lm@2 only.
        assert _states(admin) == {
            "broken@1": "AVAILABLE",
            "lm@1": "AVAILABLE",
            "lm@2": "READY",
            "s2s@1": "AVAILABLE",
        }
        stream = client.infer_stream("lm", LONG, return_vectors=True, timeout=GUARD_S)
        live.wait_until(lambda: live.server.engine.num_live == 1)
        live.run(live.gate.step())
        posted = call_posted(live.server.engine.workers[0])
        load = pool.submit(admin.load_model, "s2s", timeout=GUARD_S)
        _step_until(live, load, posted)
        assert [(s.version, s.state) for s in load.result()] == [("1", "READY")]
        assert live.num_live() == 1  # lm is still mid-stream
        live.gate.open()
        _check_s2s(client, [4, 8, 15, 16, 23, 39])
        assert_matches_alone(LM_V2, LONG, list(stream))
        meta = admin.server_metadata(timeout=GUARD_S)
        assert {m.name: list(m.versions) for m in meta.models} == {"lm": ["2"], "s2s": ["1"]}


@pytest.mark.parametrize("grace", [30.0, 0.0])
def test_unload_while_its_own_and_another_models_requests_run(
    repo: Path, pool: concurrent.futures.ThreadPoolExecutor, grace: float
) -> None:
    with _server(repo, grace=grace) as live:
        client, admin = live.client(), live.client()
        live.gate.open()
        admin.load_model("s2s", timeout=GUARD_S)
        gate = live.gate
        gate.close()  # steps run only when allowed from here
        source = [5, 6, 7, 8, 9]
        doomed = client.infer_stream("s2s", source, return_vectors=True, timeout=GUARD_S)
        bystander = client.infer_stream("lm", LONG, return_vectors=True, timeout=GUARD_S)
        live.wait_until(lambda: live.server.engine.num_live == 2)
        live.run(gate.step())
        unload = pool.submit(admin.unload_model, "s2s", timeout=GUARD_S)
        live.wait_until(lambda: ("s2s", 1) in live.server.manager._unloading)
        assert _states(admin)["s2s@1"] == "UNLOADING"
        with pytest.raises(ModelNotFoundError):
            client.infer("s2s", source, timeout=GUARD_S)
        gate.open()
        assert [(s.version, s.state) for s in unload.result(GUARD_S)] == [("1", "AVAILABLE")]
        if grace:
            outputs = list(doomed)
            want = S2S.reference(InferRequest("s2s", source))
            assert np.abs(np.stack([o.vector for o in outputs]) - want).max() < 1e-5
        else:
            with pytest.raises(UnavailableError, match="unloaded"):
                list(doomed)
        assert_matches_alone(LM_V2, LONG, list(bystander))
        live.wait_idle()
        assert live.free_slots() == {"lm@2/state": e2e_config().num_slots}
        assert "s2s@1/encoder" not in torch_executor(live.server.engine).cells


def test_versions_policies_and_errors(repo: Path) -> None:
    with _server(repo) as live:
        live.gate.open()
        admin = live.client()
        x = [3, 1, 4, 1, 5]
        states = admin.load_model("lm", [1], timeout=GUARD_S)
        assert [(s.version, s.state) for s in states] == [("1", "READY"), ("2", "READY")]
        assert_matches_alone(LM_V1, x, admin.infer("lm", x, version=1, return_vectors=True).steps)
        admin.unload_model("lm", [2], timeout=GUARD_S)
        assert_matches_alone(LM_V1, x, admin.infer("lm", x, return_vectors=True).steps)
        # Without versions, the policy decides: lm@2 back in, lm@1 out.
        states = admin.load_model("lm", timeout=GUARD_S)
        assert [(s.version, s.state) for s in states] == [("1", "AVAILABLE"), ("2", "READY")]

        cases: list[tuple[object, Code, str]] = [
            (lambda: admin.load_model("nope"), Code.NOT_FOUND, "not in the model repository"),
            (lambda: admin.load_model("lm", [7]), Code.NOT_FOUND, "no version 7"),
            (lambda: admin.load_model("lm", ["x"]), Code.INVALID_ARGUMENT, "versions"),
            (lambda: admin.load_model(""), Code.INVALID_ARGUMENT, "name: required"),
            (lambda: admin.unload_model("s2s"), Code.NOT_FOUND, "not served"),
            (lambda: admin.unload_model("lm", [1]), Code.NOT_FOUND, "version 1 is not served"),
            (lambda: admin.load_model("broken"), Code.FAILED_PRECONDITION, "'transformer'"),
        ]
        for call, code, text in cases:
            with pytest.raises(BatchMakerError) as info:
                call()  # type: ignore[operator]
            assert info.value.code is code, (text, info.value)
            assert text in info.value.message
        broken = next(s for s in admin.repository_index() if s.name == "broken")
        assert broken.state == "UNAVAILABLE"
        assert "family" in broken.reason
        # Nothing above disturbed serving.
        assert_matches_alone(LM_V2, x, admin.infer("lm", x, return_vectors=True).steps)


def test_models_command(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _server(repo) as live:
        live.gate.open()
        address = ["--address", live.address]
        assert main(["models", "load", "s2s", *address]) == 0
        assert "READY" in capsys.readouterr().out
        assert main(["models", "list", "--json", *address]) == 0
        rows = {(r["name"], r["version"]): r["state"] for r in json.loads(capsys.readouterr().out)}
        assert rows[("s2s", "1")] == "READY"
        assert rows[("lm", "2")] == "READY"
        assert main(["models", "unload", "s2s", "--version", "1", *address]) == 0
        assert "AVAILABLE" in capsys.readouterr().out
        assert main(["models", "unload", "s2s", *address]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert main(["models", "load", *address]) == 1
        assert "name the model" in capsys.readouterr().err
