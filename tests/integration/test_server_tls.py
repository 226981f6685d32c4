"""TLS and mutual TLS (tls.cert_file, tls.key_file, tls.client_ca_file) on gRPC and on the HTTP
API, with certificates made here by the `openssl` command: a CA, a server certificate for
127.0.0.1 and localhost signed by it, a client certificate signed by it, and a second, unrelated
CA with a client certificate of its own."""
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from server_harness import (BUILD, CLI_BIN, PYTHON, REPO, ServerProcess, free_port, pb, pb_grpc,
                            request)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
            "-subj", f"/CN={name}", cwd=directory)


def make_cert(directory: Path, name: str, ca: str, extensions: str):
    """A certificate `name`.pem (key `name`.key) signed by the CA `ca`."""
    (directory / f"{name}.ext").write_text(extensions + "\nbasicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
            cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
            cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Paths of the PEM files by name: ca, server(.key), client(.key), other_ca,
    other_client(.key)."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other_ca")
    make_cert(d, "server", "ca",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    make_cert(d, "client", "ca", "extendedKeyUsage=clientAuth")
    make_cert(d, "other_client", "other_ca", "extendedKeyUsage=clientAuth")
    return {p.stem + (".key" if p.suffix == ".key" else ""): p for p in d.iterdir()
            if p.suffix in (".pem", ".key")}


def start(workdir, model_dir, pki, mutual=False, extra=None):
    settings = {"tls.cert_file": str(pki["server"]), "tls.key_file": str(pki["server.key"]),
                "server.http_port": free_port()}
    if mutual:
        settings["tls.client_ca_file"] = str(pki["ca"])
    settings.update(extra or {})
    return ServerProcess(workdir, model_dir, settings).wait_serving()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, model_dir, pki):
    server = start(tmp_path_factory.mktemp("tls"), model_dir, pki)
    yield server
    server.close()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, model_dir, pki):
    server = start(tmp_path_factory.mktemp("mtls"), model_dir, pki, mutual=True)
    yield server
    server.close()


def generate(address, credentials=None, metadata=None):
    """Three tokens through a channel: TLS with `credentials`, plaintext without."""
    channel = (grpc.secure_channel(address, credentials) if credentials
               else grpc.insecure_channel(address))
    with channel:
        return pb_grpc.SpanServeStub(channel).Generate(request(max_tokens=3, ignore_eos=True),
                                                       timeout=10, metadata=metadata)


def tls(pki, ca="ca", client=None):
    return grpc.ssl_channel_credentials(
        root_certificates=pki[ca].read_bytes(),
        private_key=pki[f"{client}.key"].read_bytes() if client else None,
        certificate_chain=pki[client].read_bytes() if client else None)


def assert_refused(address, credentials=None):
    with pytest.raises(grpc.RpcError) as error:
        generate(address, credentials)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def https_get(server, path, pki, ca="ca", client=None):
    """The status of a GET on the HTTP API over HTTPS; raises on a failed handshake."""
    context = ssl.create_default_context(cafile=str(pki[ca]))
    if client:
        context.load_cert_chain(str(pki[client]), str(pki[f"{client}.key"]))
    port = int(server.event("listening")["http_port"])
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context,
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def run_cli(server, *args):
    return subprocess.run([str(CLI_BIN), "--address", server.address, "--info", *args],
                          capture_output=True, text=True, timeout=30)


def test_the_right_ca_succeeds(tls_server, pki):
    assert tls_server.event("listening")["tls"] == "true"
    assert len(generate(tls_server.address, tls(pki)).token_ids) == 3
    # The certificate names localhost too.
    port = tls_server.address.rsplit(":", 1)[1]
    with grpc.secure_channel(f"localhost:{port}", tls(pki)) as channel:
        info = pb_grpc.SpanServeStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.vocab_size == 320


def test_a_wrong_ca_fails(tls_server, pki):
    assert_refused(tls_server.address, tls(pki, ca="other_ca"))


def test_a_plaintext_client_fails(tls_server):
    assert_refused(tls_server.address)


def test_cli_with_tls_ca(tls_server, pki):
    result = run_cli(tls_server, "--tls-ca", str(pki["ca"]))
    assert result.returncode == 0, result.stderr
    assert "vocab 320" in result.stdout
    assert run_cli(tls_server, "--tls-ca", str(pki["other_ca"])).returncode == 1
    assert run_cli(tls_server).returncode == 1  # plaintext
    missing = run_cli(tls_server, "--tls-ca", "/nonexistent/ca.pem")
    assert missing.returncode == 2 and "cannot read /nonexistent/ca.pem" in missing.stderr


def test_python_example_with_tls_ca(tls_server, pki):
    result = subprocess.run([PYTHON, str(REPO / "examples/python_client.py"), "1+2=",
                             "--address", tls_server.address, "--max-tokens", "4",
                             "--tls-ca", str(pki["ca"])], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, SPANSERVE_BUILD_DIR=str(BUILD)))
    assert result.returncode == 0, result.stderr
    assert "KV blocks read" in result.stdout


def test_https_api(tls_server, pki):
    assert https_get(tls_server, "/v1/models", pki) == 200
    with pytest.raises(urllib.error.URLError) as error:
        https_get(tls_server, "/v1/models", pki, ca="other_ca")
    assert isinstance(error.value.reason, ssl.SSLCertVerificationError)
    port = int(tls_server.event("listening")["http_port"])
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10).read()


def test_mtls_needs_a_client_certificate(mtls_server, pki):
    assert_refused(mtls_server.address, tls(pki))  # the right CA, no certificate
    assert_refused(mtls_server.address, tls(pki, client="other_client"))  # another CA's
    assert_refused(mtls_server.address)
    assert len(generate(mtls_server.address, tls(pki, client="client")).token_ids) == 3


def test_mtls_cli(mtls_server, pki):
    assert run_cli(mtls_server, "--tls-ca", str(pki["ca"])).returncode == 1
    result = run_cli(mtls_server, "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client"]),
                     "--tls-key", str(pki["client.key"]))
    assert result.returncode == 0, result.stderr
    assert "vocab 320" in result.stdout
    half = run_cli(mtls_server, "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client"]))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr


def test_mtls_https_api(mtls_server, pki):
    assert https_get(mtls_server, "/health", pki, client="client") == 200
    for client in (None, "other_client"):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_get(mtls_server, "/health", pki, client=client)


def test_tls_and_api_keys_together(tmp_path, model_dir, pki):
    key = "sk-test-" + secrets.token_hex(16)
    (tmp_path / "keys.txt").write_text(key + "\n")
    server = start(tmp_path, model_dir, pki,
                   extra={"auth.api_keys_file": str(tmp_path / "keys.txt")})
    try:
        with pytest.raises(grpc.RpcError) as error:
            generate(server.address, tls(pki))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(generate(server.address, tls(pki), [("authorization", f"Bearer {key}")])
                   .token_ids) == 3
        result = run_cli(server, "--tls-ca", str(pki["ca"]), "--api-key", key)
        assert result.returncode == 0, result.stderr
        assert key not in server.log()
    finally:
        server.close()
