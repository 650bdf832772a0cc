"""Admin calls closed by default, on all three front doors, over real channels.

Without tokens a server answers inference, metadata, health and the repository index,
but refuses LoadModel/UnloadModel (batchmaker.v1), RepositoryModelLoad/Unload (KServe v2
gRPC) and ``POST /v2/repository/models/{name}/load|unload`` (v2 REST) with
PERMISSION_DENIED / 403, saying how to enable them, and counts the refusals. Admin
tokens or ``--allow-unauthenticated-admin`` open them. A model name that is not a
folder name (``..``, ``a/b``, an absolute path) is INVALID_ARGUMENT before it touches
the disk. Binding a non-loopback address without tokens logs one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import small_model
from live_server import LiveServer, e2e_config
from test_kserve_http import infer_body, post, request
from test_metrics import scrape, value

from batchmaker.cli.main import build_parser, main
from batchmaker.cli.serve import banner, serve_configs
from batchmaker.client import Client
from batchmaker.config import AuthConfig, ServerConfig
from batchmaker.errors import BatchMakerError, Code
from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc
from batchmaker.repository.folder import save_model
from batchmaker.repository.manager import ModelManager
from batchmaker.repository.store import ModelRepository
from batchmaker.server.lifecycle import exposure_warning, is_loopback

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TIMEOUT_S = 20.0
BAD_NAMES = ["..", ".", "a/b", "../outside", "/etc", "-lead", "x" * 129, "lm\n"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lm`` (served at start) and ``extra`` (loaded by the tests); and a model folder
    beside the repository, which no name may reach."""
    base = tmp_path_factory.mktemp("admin")
    root = base / "repo"
    root.mkdir()
    save_model(small_model("gru", name="lm", seed=1), root)
    save_model(small_model("gru", name="extra", seed=2), root)
    save_model(small_model("gru", name="outside", seed=3), base)
    return root


def _server(repo: Path, **config: object) -> LiveServer:
    manager = ModelManager(ModelRepository(repo), unload_grace_s=1.0)
    cfg = ServerConfig(port=0, http_port=0, metrics_port=0, warmup=False, **config)  # type: ignore[arg-type]
    return LiveServer(
        lambda: manager.initial_models(["lm"]), e2e_config(), server_config=cfg, manager=manager
    )


@pytest.fixture(scope="module")
def closed(repo: Path) -> Iterator[LiveServer]:
    """The default: no tokens, no flag."""
    with _server(repo) as live:
        yield live


def _code(call: object) -> BatchMakerError:
    with pytest.raises(BatchMakerError) as err:
        call()  # type: ignore[operator]
    return err.value


def _v2(live: LiveServer, method: str, name: str, token: str | None = None) -> grpc.RpcError | None:
    """A KServe v2 gRPC repository call: ``None`` when it succeeds, else its error."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(live.address) as ch:
        stub = kpb_grpc.GRPCInferenceServiceStub(ch)
        req_type = getattr(kpb, f"{method}Request")
        try:
            getattr(stub, method)(req_type(model_name=name), metadata=metadata, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc
    return None


def _bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _refusals(live: LiveServer, protocol: str) -> float:
    url = live.server.metrics_url
    assert url is not None
    labels = {"model": "", "version": "", "protocol": protocol, "reason": "PERMISSION_DENIED"}
    return value(scrape(url), "batchmaker_request_failure_total", **labels)


def _lm_serves(live: LiveServer, token: str | None = None) -> None:
    with Client(live.address, token=token) as client:
        assert len(client.infer("lm", [1, 2], timeout=TIMEOUT_S).steps) == 2


def test_admin_calls_are_refused_by_default_on_every_door(closed: LiveServer) -> None:
    before = {p: _refusals(closed, p) for p in ("v1", "v2-grpc", "v2-http")}
    with Client(closed.address) as client:
        for call in (
            lambda: client.load_model("extra", timeout=TIMEOUT_S),
            lambda: client.unload_model("lm", timeout=TIMEOUT_S),
        ):
            err = _code(call)
            assert err.code is Code.PERMISSION_DENIED
            assert "--allow-unauthenticated-admin" in err.message
            assert "BATCHMAKER_ADMIN_TOKENS" in err.message
        # The rest stays open without tokens.
        assert client.server_metadata(timeout=TIMEOUT_S).models[0].name == "lm"
        assert {s.name for s in client.repository_index(timeout=TIMEOUT_S)} == {
            "lm",
            "extra",
        }
        assert client.is_serving()
    for method in ("RepositoryModelLoad", "RepositoryModelUnload"):
        err = _v2(closed, method, "lm")
        assert err is not None
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "--allow-unauthenticated-admin" in err.details()  # type: ignore[attr-defined]
    with grpc.insecure_channel(closed.address) as ch:
        index = kpb_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(
            kpb.RepositoryIndexRequest(), timeout=TIMEOUT_S
        )
        assert {m.name for m in index.models} == {"lm", "extra"}
    for path in ("/v2/repository/models/extra/load", "/v2/repository/models/lm/unload"):
        reply = post(closed, path)
        assert reply.status == 403
        assert "--allow-unauthenticated-admin" in reply.json()["error"]
    assert post(closed, "/v2/repository/index").status == 200
    assert post(closed, "/v2/models/lm/infer", infer_body([1])).status == 200
    assert request(closed, "GET", "/v2/health/ready").status == 200
    # Nothing changed what is served, and every refusal was counted under its door.
    _lm_serves(closed)
    with Client(closed.address) as client:
        states = {s.name: s.state for s in client.repository_index(timeout=TIMEOUT_S)}
    assert states == {"lm": "READY", "extra": "AVAILABLE"}
    after = {p: _refusals(closed, p) for p in ("v1", "v2-grpc", "v2-http")}
    assert after == {p: before[p] + 2 for p in before}


def test_the_flag_opens_admin_calls_on_every_door(repo: Path) -> None:
    with _server(repo, allow_unauthenticated_admin=True) as live, Client(live.address) as client:
        states = client.load_model("extra", timeout=TIMEOUT_S)
        assert [(s.name, s.state) for s in states] == [("extra", "READY")]
        assert _v2(live, "RepositoryModelUnload", "extra") is None
        assert post(live, "/v2/repository/models/extra/load").status == 200
        states = client.unload_model("extra", timeout=TIMEOUT_S)
        assert [(s.name, s.state) for s in states] == [("extra", "AVAILABLE")]
        assert "admin calls open to all" in banner(live.server)
        _lm_serves(live)


@pytest.mark.parametrize("flag", [False, True])
def test_admin_tokens_open_admin_calls_to_the_admin_token_only(repo: Path, flag: bool) -> None:
    """With admin tokens configured the flag changes nothing: it never weakens them."""
    auth = AuthConfig.from_tokens([INFER_TOKEN], [ADMIN_TOKEN])
    with _server(repo, auth=auth, allow_unauthenticated_admin=flag) as live:
        for token, code in ((None, Code.UNAUTHENTICATED), (INFER_TOKEN, Code.PERMISSION_DENIED)):
            with Client(live.address, token=token) as client:
                assert _code(lambda c=client: c.load_model("extra")).code is code
            err = _v2(live, "RepositoryModelLoad", "extra", token)
            assert err is not None
            assert err.code().name == code.value  # type: ignore[attr-defined]
            status = 401 if token is None else 403
            assert post(live, "/v2/repository/models/extra/load", **_bearer(token)).status == status
        with Client(live.address, token=ADMIN_TOKEN) as admin:
            assert admin.load_model("extra", timeout=TIMEOUT_S)[0].state == "READY"
        assert _v2(live, "RepositoryModelUnload", "extra", ADMIN_TOKEN) is None
        reply = post(live, "/v2/repository/models/extra/load", **_bearer(ADMIN_TOKEN))
        assert reply.status == 200
        assert "admin calls open" not in banner(live.server)
        _lm_serves(live, INFER_TOKEN)


def test_inference_tokens_alone_keep_admin_calls_closed_unless_the_flag(repo: Path) -> None:
    """Inference tokens and no admin token: an inference token may not load, and the
    refusal says how to enable it; with the flag, an admin call needs what inference
    needs, a valid token."""
    auth = AuthConfig.from_tokens([INFER_TOKEN])
    with _server(repo, auth=auth) as live, Client(live.address, token=INFER_TOKEN) as client:
        err = _code(lambda: client.load_model("extra"))
        assert err.code is Code.PERMISSION_DENIED
        assert "--allow-unauthenticated-admin" in err.message
    with _server(repo, auth=auth, allow_unauthenticated_admin=True) as live:
        with Client(live.address) as anonymous:
            assert _code(lambda: anonymous.load_model("extra")).code is Code.UNAUTHENTICATED
        with Client(live.address, token=INFER_TOKEN) as client:
            assert client.load_model("extra", timeout=TIMEOUT_S)[0].state == "READY"


def test_the_flag_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> bool:
        config, _, _ = serve_configs(build_parser().parse_args(["serve", *argv]))
        return config.allow_unauthenticated_admin

    assert ServerConfig().allow_unauthenticated_admin is False
    assert parsed() is False
    assert parsed("--allow-unauthenticated-admin") is True
    monkeypatch.setenv("BATCHMAKER_ALLOW_UNAUTHENTICATED_ADMIN", "1")
    assert parsed() is True
    monkeypatch.setenv("BATCHMAKER_ALLOW_UNAUTHENTICATED_ADMIN", "0")
    assert parsed() is False


def test_the_models_command_loads_with_an_admin_token_file(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth = AuthConfig.from_tokens([INFER_TOKEN], [ADMIN_TOKEN])
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(ADMIN_TOKEN + "\n")
    with _server(repo, auth=auth) as live:
        address = ["--address", live.address]
        assert main(["models", "load", "extra", *address]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert main(["models", "load", "extra", *address, "--token-file", str(admin_file)]) == 0
        assert "READY" in capsys.readouterr().out
        assert main(["models", "unload", "extra", *address, "--token-file", str(admin_file)]) == 0
        assert "AVAILABLE" in capsys.readouterr().out
    with _server(repo) as live:
        assert main(["models", "load", "extra", "--address", live.address]) == 1
        err = capsys.readouterr().err
        assert "PERMISSION_DENIED" in err
        assert "--allow-unauthenticated-admin" in err


def test_names_that_are_not_folder_names_are_invalid_on_every_door(repo: Path) -> None:
    outside = repo.parent / "outside"
    with _server(repo, allow_unauthenticated_admin=True) as live, Client(live.address) as client:
        for name in [*BAD_NAMES, str(outside)]:
            err = _code(lambda n=name: client.load_model(n, timeout=TIMEOUT_S))
            assert err.code is Code.INVALID_ARGUMENT, (name, err)
            assert "not a valid model name" in err.message
            v2 = _v2(live, "RepositoryModelLoad", name)
            assert v2 is not None
            assert v2.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        for quoted in ("..%2Foutside", "%2E%2E", "a%2Fb"):
            reply = post(live, f"/v2/repository/models/{quoted}/load")
            assert reply.status == 400, quoted
            assert "not a valid model name" in reply.json()["error"]
        assert {m.name for m in live.server.engine.models} == {"lm"}
        _lm_serves(live)


def test_binding_a_non_loopback_address_without_tokens_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def warnings(host: str, **config: object) -> list[str]:
        caplog.clear()
        cfg = ServerConfig(host=host, port=0, warmup=False, **config)  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="batchmaker"), LiveServer(server_config=cfg):
            pass
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    (line,) = warnings("0.0.0.0")
    assert "0.0.0.0" in line
    assert "no auth tokens" in line
    assert warnings("127.0.0.1") == []
    assert warnings("0.0.0.0", auth=AuthConfig.from_tokens([INFER_TOKEN])) == []
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "[::]", "::", "10.0.0.7", "192.168.1.2", "example.com"):
        assert not is_loopback(host), host
        assert exposure_warning(ServerConfig(host=host)) is not None
    flagged = exposure_warning(ServerConfig(host="0.0.0.0", allow_unauthenticated_admin=True))
    assert flagged is not None
    assert "load and unload" in flagged


def test_the_banner_repeats_the_warning() -> None:
    cfg = ServerConfig(host="0.0.0.0", port=0, warmup=False)
    with LiveServer(server_config=cfg) as live:
        assert "WARNING: binding 0.0.0.0" in banner(live.server)
    with LiveServer(server_config=ServerConfig(port=0, warmup=False)) as live:
        assert "WARNING" not in banner(live.server)
