"""TLS and mutual TLS between the real server and the real client.

Certificates are made for each run by the ``openssl`` command line in a
temporary directory: a CA, a server certificate for 127.0.0.1, and a client
certificate, all signed by it.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from live_server import LiveServer, e2e_models
from reference import assert_matches_alone

from batchmaker import UnavailableError
from batchmaker.client import TLSConfig
from batchmaker.config import ServerConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=batchmaker test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d,
    )  # fmt: skip
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=d,
        )  # fmt: skip
    return d


def _tls_server(pki: Path, *, mutual: bool, http: bool = False) -> LiveServer:
    return LiveServer(
        server_config=ServerConfig(
            port=0,
            http_port=0 if http else None,
            warmup=False,
            tls_cert_file=str(pki / "server.pem"),
            tls_key_file=str(pki / "server.key"),
            tls_client_ca_file=str(pki / "ca.pem") if mutual else None,
        )
    )


def test_tls_serves_a_verifying_client_and_refuses_plaintext(pki: Path) -> None:
    gru = e2e_models()[2]
    with _tls_server(pki, mutual=False) as live:
        tls = TLSConfig(root_certificates=(pki / "ca.pem").read_bytes())
        client = live.client(tls=tls)
        assert_matches_alone(
            gru, [1, 2, 3], list(client.infer_stream("gru", [1, 2, 3], return_vectors=True))
        )
        with pytest.raises(UnavailableError):
            live.client().infer("gru", [1, 2, 3], timeout=5)


def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    with _tls_server(pki, mutual=True) as live:
        with pytest.raises(UnavailableError):
            live.client(tls=TLSConfig(root_certificates=ca)).infer("gru", [1, 2], timeout=5)
        client = live.client(
            tls=TLSConfig(
                root_certificates=ca,
                private_key=(pki / "client.key").read_bytes(),
                certificate_chain=(pki / "client.pem").read_bytes(),
            )
        )
        assert len(client.infer("gru", [1, 2]).steps) == 2


def test_tls_files_must_come_in_pairs() -> None:
    with pytest.raises(ValueError, match="together"):
        ServerConfig(tls_cert_file="server.pem")
    with pytest.raises(ValueError, match="needs"):
        ServerConfig(tls_client_ca_file="ca.pem")


def test_infer_cli_over_tls(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from batchmaker.cli.main import main

    with _tls_server(pki, mutual=False) as live:
        args = ["infer", "--address", live.address, "--ca-cert", str(pki / "ca.pem")]
        assert main([*args, "-m", "gru", "-t", "1", "2"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "finished: completed"


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return int(response.status)


@pytest.mark.parametrize("mutual", [False, True])
def test_the_rest_door_serves_https_from_the_same_files(pki: Path, mutual: bool) -> None:
    """The KServe v2 REST door takes TLS from the gRPC door's files: HTTPS for a client that
    trusts the CA (and, with a client CA, presents a certificate), nothing over plain HTTP."""
    with _tls_server(pki, mutual=mutual, http=True) as live:
        url = live.server.http_url
        assert url is not None
        assert url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if mutual:
            # TLS 1.3 refuses a missing client certificate after the handshake: the client
            # sees the connection closed rather than a handshake error.
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                _get(url + "/v2/health/ready", trusting)
            trusting.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        assert _get(url + "/v2/health/ready", trusting) == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(url.replace("https://", "http://") + "/v2/health/ready")
