"""``batchmaker serve`` refuses a ``BATCHMAKER_*`` variable that no command reads, naming it.

Every setting falls back to a variable, so a misspelt one would be ignored and the server
would run on the default without a word; in a container that is easy to miss. The
variables the client reads (``BATCHMAKER_TOKEN``) and Kubernetes' service links must pass.
"""

from __future__ import annotations

import argparse

import pytest

from batchmaker.cli.flags import known_env_vars, refuse_unknown_env
from batchmaker.cli.main import build_parser, main


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_known_variables_come_from_every_commands_help(parser: argparse.ArgumentParser) -> None:
    known = known_env_vars(parser)
    # serve's flags, the top-level logging flags, variables without a flag, the client's.
    assert {
        "BATCHMAKER_PORT",
        "BATCHMAKER_METRICS_PORT",
        "BATCHMAKER_DEVICES",
        "BATCHMAKER_FINISHING_FIRST",
        "BATCHMAKER_LOG_LEVEL",
        "BATCHMAKER_AUTH_TOKENS",
        "BATCHMAKER_ADMIN_TOKENS",
        "BATCHMAKER_TOKEN",
        "BATCHMAKER_ADDRESS",
    } <= known, sorted(known)
    assert all(name.startswith("BATCHMAKER_") and name.isupper() for name in known)


def test_an_unknown_variable_is_refused_by_name(parser: argparse.ArgumentParser) -> None:
    env = {"BATCHMAKER_PORT": "50051", "BATCHMAKER_MAX_BATCHES": "8", "HOME": "/root"}
    with pytest.raises(ValueError, match="BATCHMAKER_MAX_BATCHES") as info:
        refuse_unknown_env(parser, env)
    assert "did you mean BATCHMAKER_MAX_BATCH?" in str(info.value)


def test_known_and_foreign_variables_pass(parser: argparse.ArgumentParser) -> None:
    env = dict.fromkeys(known_env_vars(parser), "1")
    env.update({"PATH": "/bin", "SM_MODEL_DIR": "/opt/ml/model", "batchmaker_port": "x"})
    refuse_unknown_env(parser, env)


def test_kubernetes_service_links_pass_but_a_misspelt_port_does_not(
    parser: argparse.ArgumentParser,
) -> None:
    # What a pod gets for a Service named batchmaker, and one named batchmaker-grpc.
    links = {
        "BATCHMAKER_SERVICE_HOST": "10.0.0.1",
        "BATCHMAKER_SERVICE_PORT": "50051",
        "BATCHMAKER_SERVICE_PORT_METRICS": "8002",
        "BATCHMAKER_PORT_50051_TCP": "tcp://10.0.0.1:50051",
        "BATCHMAKER_PORT_50051_TCP_ADDR": "10.0.0.1",
        "BATCHMAKER_GRPC_PORT": "tcp://10.0.0.2:50051",
        "BATCHMAKER_GRPC_SERVICE_HOST": "10.0.0.2",
    }
    refuse_unknown_env(parser, links)
    with pytest.raises(ValueError, match="BATCHMAKER_METRIC_PORT"):
        refuse_unknown_env(parser, {**links, "BATCHMAKER_METRIC_PORT": "8002"})


def test_serve_exits_2_naming_the_variable_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHMAKER_GRACE_SECONDS", "30")
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "0", "--host", "127.0.0.1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown environment variable BATCHMAKER_GRACE_SECONDS" in err
    assert "BATCHMAKER_GRACE_S?" in err


def test_transform_runs_in_process_whatever_batchmaker_address_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shell that holds a client's ``BATCHMAKER_ADDRESS`` must not send a transform to
    that server, and the help must not say the variable applies (it said ``[ADDRESS]``)."""
    monkeypatch.setenv("BATCHMAKER_ADDRESS", "10.0.0.1:50051")
    parser = build_parser()
    args = parser.parse_args(["transform", "in.jsonl", "out.jsonl", "-m", "counting-lm"])
    assert args.address is None
    args = parser.parse_args(["--log-level", "INFO", "infer", "-m", "m", "--text", "a"])
    assert args.address == "10.0.0.1:50051"  # a client command still honours it
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    address = next(a for a in sub.choices["transform"]._actions if "--address" in a.option_strings)
    assert address.help is not None
    assert "[ADDRESS]" not in address.help
