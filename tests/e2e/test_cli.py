"""The ``batchmaker`` command: ``infer`` and ``metadata`` against a live server, and how
``serve`` builds its configuration from flags and ``BATCHMAKER_*`` variables."""

from __future__ import annotations

import json

import pytest
from live_server import LiveServer, e2e_models
from reference import run_alone

from batchmaker.cli.main import build_parser, main
from batchmaker.cli.serve import serve_configs


def test_infer_streams_each_step_and_its_top_k(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["infer", "--address", live.address, "-m", "gru", "-t", "3", "1", "4", "-k", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == "finished: completed"
    want = run_alone(e2e_models()[2], [3, 1, 4]).argsort(axis=1)[:, ::-1][:, :2]
    for i, line in enumerate(out[:-1]):
        assert line.startswith(f"step {i:4d}: ")
        ids = [int(tok) for tok in line.split(": ", 1)[1].split() if not tok.startswith("(")]
        assert ids == want[i].tolist()


def test_infer_json_unary_and_length_cap(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["infer", "--address", live.address, "-m", "lstm", "--version", "1"]
    code = main([*args, "-t", "5", "6", "7", "--max-length", "2", "--json", "--unary"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [line["step"] for line in lines[:-1]] == [0, 1]
    assert lines[-1] == {"finish_reason": "length"}


def test_infer_vectors_and_errors_exit_one(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["infer", "--address", live.address, "-m", "vec"]
    assert main([*args, "--vectors", json.dumps([[0.5] * 6] * 3), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main([*args, "--vectors", json.dumps([[0.5] * 5])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT: inputs:")
    assert main(["infer", "--address", live.address, "-m", "nope", "-t", "1"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_metadata_prints_json(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metadata", "--address", live.address]) == 0
    server = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in server["models"]} == {"lstm", "gru", "vec"}
    assert main(["metadata", "--address", live.address, "-m", "vec"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["shape"] == ["-1", "6"]


def test_health_exits_zero_only_when_serving(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a container HEALTHCHECK runs: 0 and SERVING, else 1 with the reason."""
    assert main(["health", "--address", live.address]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    args = ["health", "--address", live.address, "--service", "batchmaker.v1.Inference"]
    assert main(args) == 0
    assert main(["health", "--address", live.address, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["health", "--address", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE")


def test_serve_config_from_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "6000",
            "--models",
            "lstm-lm",
            "--max-batch",
            "32",
            "--max-batch-per-cell",
            "lstm-lm/step=16",
            "--max-live",
            "9",
            "--max-message-bytes",
            "65536",
            "--grace",
            "5",
            "--log-level",
            "INFO",
        ]
    )
    assert args.log_level == "INFO"
    server, engine, names = serve_configs(args)
    assert (server.port, server.max_receive_message_bytes, server.grace_s) == (6000, 65536, 5.0)
    assert names == ["lstm-lm"]
    assert engine.max_batch == 32
    assert engine.max_batch_for("lstm-lm@1/step") == 16
    assert engine.max_batch_for("gru-lm@1/step") == 32
    assert engine.max_num_live_requests == 9


def test_serve_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BATCHMAKER_HOST": "0.0.0.0",
        "BATCHMAKER_PORT": "7000",
        "BATCHMAKER_MODELS": "gru-lm,lstm-512",
        "BATCHMAKER_DEVICES": "cpu",
        "BATCHMAKER_MAX_BATCH": "96",
        "BATCHMAKER_MAX_BATCH_PER_CELL": "gru-lm/step=8, lstm-512@1/step=24",
        "BATCHMAKER_MAX_LIVE": "100",
        "BATCHMAKER_MAX_MESSAGE_BYTES": "2048",
        "BATCHMAKER_MODE": "padded",
        "BATCHMAKER_LOG_LEVEL": "DEBUG",
        "BATCHMAKER_SLO_P99_MS": "250",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(["serve"])
    assert args.log_level == "DEBUG"
    server, engine, names = serve_configs(args)
    assert (server.host, server.port, server.max_receive_message_bytes) == ("0.0.0.0", 7000, 2048)
    assert names == ["gru-lm", "lstm-512"]
    assert engine.mode == "padded"
    assert engine.devices == ("cpu",)
    assert engine.max_batch_for("gru-lm@1/step") == 8
    assert engine.max_batch_for("lstm-512@1/step") == 24
    assert engine.max_num_live_requests == 100
    assert engine.slo_p99_s == 0.25
    # A flag wins over its variable.
    server, engine, _ = serve_configs(
        build_parser().parse_args(["serve", "--port", "7001", "--slo-p99-ms", "80"])
    )
    assert server.port == 7001
    assert engine.slo_p99_s == 0.08


def test_serve_rejects_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--models", "no-such-model"])
    assert "unknown 'no-such-model'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--max-batch-per-cell", "nonsense"])
    assert "expected CELL=N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--slo-p99-ms", "0"])
    assert "slo_p99_s must be in (0, 3600)" in capsys.readouterr().err


def test_the_client_and_the_cli_start_without_torch() -> None:
    """A client process needs grpc, protobuf and numpy only; torch costs a second to import."""
    import subprocess
    import sys

    code = (
        "import sys, batchmaker.client, batchmaker.cli.main;"
        "batchmaker.cli.main.build_parser();"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_cell_type_policy_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert (engine.finishing_first, engine.max_wait_steps) == (True, 16)
    flags = ["serve", "--no-finishing-first", "--max-wait-steps", "3"]
    _, engine, _ = serve_configs(build_parser().parse_args(flags))
    assert (engine.finishing_first, engine.max_wait_steps) == (False, 3)
    monkeypatch.setenv("BATCHMAKER_FINISHING_FIRST", "0")
    monkeypatch.setenv("BATCHMAKER_MAX_WAIT_STEPS", "5")
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert (engine.finishing_first, engine.max_wait_steps) == (False, 5)
    with pytest.raises(ValueError, match="max_wait_steps"):
        serve_configs(build_parser().parse_args(["serve", "--max-wait-steps", "0"]))


def test_steps_per_plan_and_the_baselines_form_are_configurable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert (engine.max_steps_per_plan, engine.fused_baselines) == (128, True)
    flags = ["serve", "--max-steps-per-plan", "1", "--step-by-step-baselines"]
    _, engine, _ = serve_configs(build_parser().parse_args(flags))
    assert (engine.max_steps_per_plan, engine.fused_baselines) == (1, False)
    assert engine.scheduler_config().max_steps_per_plan == 1
    monkeypatch.setenv("BATCHMAKER_MAX_STEPS_PER_PLAN", "8")
    monkeypatch.setenv("BATCHMAKER_FUSED_BASELINES", "0")
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert (engine.max_steps_per_plan, engine.fused_baselines) == (8, False)
    with pytest.raises(ValueError, match="max_steps_per_plan"):
        serve_configs(build_parser().parse_args(["serve", "--max-steps-per-plan", "0"]))


def test_overlapped_steps_are_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert engine.overlap_steps is False
    _, engine, _ = serve_configs(build_parser().parse_args(["serve", "--overlap-steps"]))
    assert engine.overlap_steps is True
    monkeypatch.setenv("BATCHMAKER_OVERLAP_STEPS", "1")
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert engine.overlap_steps is True
    monkeypatch.setenv("BATCHMAKER_OVERLAP_STEPS", "false")
    _, engine, _ = serve_configs(build_parser().parse_args(["serve"]))
    assert engine.overlap_steps is False
