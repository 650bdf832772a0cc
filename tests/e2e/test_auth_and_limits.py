"""Bearer-token auth, the operator's limits and the idle timeout, over a real channel.

Auth: no token or a bad one is UNAUTHENTICATED, an inference token calling an admin
RPC is PERMISSION_DENIED, health stays open, and no token ever reaches the logs.
Limits: too many calls in progress is RESOURCE_EXHAUSTED, a request over the
server's length limit is INVALID_ARGUMENT, and neither costs the other calls anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import small_model
from live_server import LiveServer, e2e_config

from batchmaker.bench.launcher import ServerProcess
from batchmaker.cli.main import build_parser, main
from batchmaker.cli.serve import serve_configs
from batchmaker.client import AsyncClient, Client
from batchmaker.config import AuthConfig, ServerConfig, read_tokens
from batchmaker.errors import AdmissionRejectedError, BatchMakerError, Code, InvalidRequestError
from batchmaker.v1 import inference_pb2 as pb
from batchmaker.v1 import inference_pb2_grpc as pb_grpc
from batchmaker.wire.metadata import bearer_token

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
CALL_TIMEOUT_S = 10.0


def models() -> list:
    return [small_model("gru", name="g", seed=3)]


@pytest.fixture(scope="module")
def secured() -> Iterator[LiveServer]:
    auth = AuthConfig.from_tokens([INFER_TOKEN], [ADMIN_TOKEN])
    cfg = ServerConfig(port=0, warmup=False, auth=auth, metrics_port=0)
    with LiveServer(models, server_config=cfg) as live:
        yield live


def code_of(call: object) -> Code:
    with pytest.raises(BatchMakerError) as err:
        call()  # type: ignore[operator]
    return err.value.code


def test_no_token_or_a_bad_one_is_unauthenticated(secured: LiveServer) -> None:
    for token in (None, "not-a-known-token-at-all-000"):
        with Client(secured.address, token=token) as client:
            calls = [
                lambda c=client: c.infer("g", [1, 2], timeout=CALL_TIMEOUT_S),
                lambda c=client: c.infer_stream("g", [1, 2], timeout=CALL_TIMEOUT_S).collect(),
                lambda c=client: c.model_metadata("g", timeout=CALL_TIMEOUT_S),
                lambda c=client: c.server_metadata(timeout=CALL_TIMEOUT_S),
                lambda c=client: c.repository_index(timeout=CALL_TIMEOUT_S),
                lambda c=client: c.load_model("g", timeout=CALL_TIMEOUT_S),
            ]
            for call in calls:
                assert code_of(call) is Code.UNAUTHENTICATED
            # Health stays open: probes and load balancers carry no secrets.
            assert client.is_serving()


def test_a_header_that_is_not_bearer_is_unauthenticated(secured: LiveServer) -> None:
    with grpc.insecure_channel(secured.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        req = pb.InferRequest(model_name="g", tokens=pb.TokenSequence(ids=[1]))
        for header in (f"Basic {INFER_TOKEN}", "Bearer", INFER_TOKEN):
            with pytest.raises(grpc.RpcError) as err:
                stub.Infer(req, metadata=[("authorization", header)], timeout=CALL_TIMEOUT_S)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_inference_tokens_infer_but_only_admin_tokens_load_and_unload(
    secured: LiveServer,
) -> None:
    with Client(secured.address, token=INFER_TOKEN) as client:
        assert len(client.infer("g", [1, 2, 3], timeout=CALL_TIMEOUT_S).steps) == 3
        assert len(client.infer_stream("g", [1, 2], timeout=CALL_TIMEOUT_S).collect().steps) == 2
        assert client.server_metadata(timeout=CALL_TIMEOUT_S).models[0].name == "g"
        client.repository_index(timeout=CALL_TIMEOUT_S)  # reading is not administering
        assert code_of(lambda: client.load_model("g")) is Code.PERMISSION_DENIED
        assert code_of(lambda: client.unload_model("g")) is Code.PERMISSION_DENIED
    with Client(secured.address, token=ADMIN_TOKEN) as admin:
        assert len(admin.infer("g", [1], timeout=CALL_TIMEOUT_S).steps) == 1
        # Past authentication: the built-in model has no repository folder to reload.
        assert code_of(lambda: admin.load_model("no-such-model")) is Code.NOT_FOUND
    # The model still serves: nothing above changed it.
    with Client(secured.address, token=INFER_TOKEN) as client:
        assert len(client.infer("g", [4], timeout=CALL_TIMEOUT_S).steps) == 1


def test_the_asyncio_client_sends_its_token(secured: LiveServer) -> None:
    async def go() -> int:
        async with AsyncClient(secured.address, token=INFER_TOKEN) as client:
            res = await client.infer_stream("g", [1, 2, 3], timeout=CALL_TIMEOUT_S).collect()
            return len(res.steps)

    assert asyncio.run(go()) == 3


def test_refusals_are_counted_and_tokens_never_logged(
    secured: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    from test_metrics import scrape, value

    url = secured.server.metrics_url
    assert url is not None
    before = value(
        scrape(url),
        "batchmaker_request_failure_total",
        model="",
        version="",
        protocol="v1",
        reason="UNAUTHENTICATED",
    )
    with caplog.at_level(logging.DEBUG):
        with Client(secured.address, token="wrong-token-but-long-enough-9") as client:
            code_of(lambda: client.infer("g", [1], timeout=CALL_TIMEOUT_S))
        with Client(secured.address, token=INFER_TOKEN) as client:
            client.infer("g", [1], timeout=CALL_TIMEOUT_S)
            code_of(lambda: client.unload_model("g"))
    after = value(
        scrape(url),
        "batchmaker_request_failure_total",
        model="",
        version="",
        protocol="v1",
        reason="UNAUTHENTICATED",
    )
    assert after == before + 1
    text = caplog.text
    assert "refused" in text  # the refusals are logged...
    for secret in (INFER_TOKEN, ADMIN_TOKEN, "wrong-token-but-long-enough-9"):
        assert secret not in text  # ...without the tokens
    assert INFER_TOKEN not in repr(AuthConfig.from_tokens([INFER_TOKEN]))


def test_tokens_come_from_files_and_environment_never_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# inference tokens\n{INFER_TOKEN}\n\n")
    admins = tmp_path / "admins"
    admins.write_text(ADMIN_TOKEN + "\n")
    assert read_tokens(tokens) == [INFER_TOKEN]
    args = ["serve", "--auth-tokens-file", str(tokens), "--admin-tokens-file", str(admins)]
    monkeypatch.setenv(
        "BATCHMAKER_AUTH_TOKENS", "env-token-0123456789abcdef, other-token-0123456789"
    )
    config, _, _ = serve_configs(build_parser().parse_args(args))
    assert config.auth is not None
    assert config.auth.role(INFER_TOKEN) == "inference"
    assert config.auth.role("env-token-0123456789abcdef") == "inference"
    assert config.auth.role("other-token-0123456789") == "inference"
    assert config.auth.role(ADMIN_TOKEN) == "admin"
    assert config.auth.role("anything-else-0123456789") is None
    # No flag takes a token's value.
    for flag in ("--auth-token", "--token", "--admin-token"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", flag, INFER_TOKEN])
    assert "--token" not in build_parser().format_help()
    monkeypatch.delenv("BATCHMAKER_AUTH_TOKENS")
    with pytest.raises(ValueError, match="at least 16"):
        AuthConfig.from_tokens(["short"])
    with pytest.raises(SystemExit):
        main(["serve", "--auth-tokens-file", str(tmp_path / "missing"), "--port", "0"])
    assert "token file" in capsys.readouterr().err


def test_the_cli_reads_its_token_from_a_file_or_the_environment(
    secured: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    infer = ["infer", "--address", secured.address, "-m", "g", "-t", "1", "2"]
    assert main(infer) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    token_file = tmp_path / "token"
    token_file.write_text(INFER_TOKEN + "\n")
    assert main([*infer, "--token-file", str(token_file)]) == 0
    assert capsys.readouterr().out.strip().endswith("finished: completed")
    monkeypatch.setenv("BATCHMAKER_TOKEN", INFER_TOKEN)
    assert main(infer) == 0
    assert main(["health", "--address", secured.address]) == 0


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", f"Bearer {INFER_TOKEN}")]) == INFER_TOKEN
    assert bearer_token([("Authorization", f"bearer  {INFER_TOKEN} ")]) == INFER_TOKEN
    assert bearer_token([("authorization", b"Bearer x" * 1)]) == "x"
    assert bearer_token([("x-other", "Bearer y")]) is None
    assert bearer_token([("authorization", "Basic y")]) is None
    assert bearer_token(None) is None


# ---- limits -------------------------------------------------------------------------


def test_too_many_calls_in_progress_are_rejected_at_once_and_the_rest_finish() -> None:
    cfg = ServerConfig(port=0, warmup=False, max_concurrent_streams=2)
    with LiveServer(models, config=e2e_config(), server_config=cfg, gated=True) as live:
        client = live.client()
        held = [client.infer_stream("g", [1, 2, 3], timeout=CALL_TIMEOUT_S) for _ in range(2)]
        live.wait_until(lambda: live.server.gate.num_active == 2)
        with pytest.raises(AdmissionRejectedError, match="calls are in progress"):
            client.infer("g", [1], timeout=CALL_TIMEOUT_S)
        live.call(live.gate.open)  # type: ignore[union-attr]
        assert [len(s.collect().steps) for s in held] == [3, 3]
        live.wait_idle()
        assert len(client.infer("g", [1], timeout=CALL_TIMEOUT_S).steps) == 1


def test_requests_over_the_servers_length_limit_are_invalid() -> None:
    cfg = ServerConfig(port=0, warmup=False, max_request_length=4)
    with LiveServer(models, server_config=cfg) as live:
        client = live.client()
        assert len(client.infer("g", [1, 2, 3, 4], timeout=CALL_TIMEOUT_S).steps) == 4
        with pytest.raises(InvalidRequestError, match="over this server's limit of 4"):
            client.infer_stream("g", [1, 2, 3, 4, 5], timeout=CALL_TIMEOUT_S).collect()
        assert len(client.infer("g", [5], timeout=CALL_TIMEOUT_S).steps) == 1


def test_limits_are_validated() -> None:
    for bad in ({"max_concurrent_streams": 0}, {"max_request_length": -1}, {"idle_timeout_s": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(**bad)  # type: ignore[arg-type]


# ---- idle timeout ---------------------------------------------------------------------


def test_idle_timeout_waits_for_calls_in_progress() -> None:
    with LiveServer(models, config=e2e_config(), gated=True) as live:
        client = live.client()
        held = client.infer_stream("g", [1, 2], timeout=CALL_TIMEOUT_S)
        live.wait_until(lambda: live.server.gate.num_active == 1)
        idle = live.submit(live.server.idle_timeout(0.2))
        with pytest.raises(TimeoutError):
            idle.result(0.6)  # a call is in progress: not idle, however long it takes
        live.call(live.gate.open)  # type: ignore[union-attr]
        assert len(held.collect().steps) == 2
        idle.result(5.0)  # returns once the call has been over for 0.2 s


def test_an_idle_server_exits_cleanly() -> None:
    with ServerProcess(
        ["--models=lstm-lm", "--model-repository=none", "--idle-timeout=0.5"]
    ) as proc:
        returncode, log = proc.wait(timeout=60)
    assert returncode == 0
    assert "idle timeout" in log
