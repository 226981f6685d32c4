"""API keys (auth.api_keys_file): every SpanServe RPC and the HTTP API need
`authorization: Bearer <key>`, health stays open, reflection is off, /metrics optionally protected,
SIGHUP re-reads the file, and no key ever reaches the log or an error message."""
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request

import grpc
import pytest

from server_harness import (BUILD, CLI_BIN, PYTHON, REPO, ServerProcess, free_port, pb, request,
                            wait_for)

UNAUTHENTICATED = "missing or invalid API key"


def new_key() -> str:
    return "sk-test-" + secrets.token_hex(16)


KEY_A, KEY_B = new_key(), new_key()
WRONG_KEY = new_key()  # never in any key file
# Every string that must never appear in a log: the keys, refused or not.
SECRETS = [KEY_A, KEY_B, WRONG_KEY]


def key_file(path, *keys, comment="the test's keys"):
    path.write_text(f"# {comment}\n\n" + "".join(f"  {key}  \n" for key in keys))
    return path


def bearer(key):
    return [("authorization", f"Bearer {key}")]


def call(stub, rpc, metadata=None):
    """One call of a SpanServe RPC; returns its result (a stream read to the end)."""
    if rpc == "Generate":
        return stub.Generate(request(max_tokens=2, ignore_eos=True), timeout=30, metadata=metadata)
    if rpc == "GenerateStream":
        return list(stub.GenerateStream(request(max_tokens=2, ignore_eos=True), timeout=30,
                                        metadata=metadata))
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=metadata)


def http_get(port, path, key=None, header=None):
    """(status, body) of a plain HTTP GET on loopback."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key is not None or header is not None:
        req.add_header("Authorization", header if header is not None else f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_no_secrets(text):
    for key in SECRETS:
        assert key not in text


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, model_dir):
    """A server with two keys and the HTTP API on; /metrics open (the default)."""
    workdir = tmp_path_factory.mktemp("auth")
    keys = key_file(workdir / "keys.txt", KEY_A, KEY_B)
    process = ServerProcess(workdir, model_dir, {"auth.api_keys_file": str(keys),
                                                 "server.http_port": free_port()})
    try:
        yield process.wait_serving()
    finally:
        process.close()


RPCS = ["Generate", "GenerateStream", "GetModelInfo"]
BAD_METADATA = {
    "no key": None,
    "wrong key": bearer(WRONG_KEY),
    "no scheme": [("authorization", KEY_A)],
    "basic scheme": [("authorization", f"Basic {KEY_A}")],
    "empty bearer": [("authorization", "Bearer ")],
    "two keys": [("authorization", f"Bearer {KEY_A} {KEY_B}")],
    "a prefix of a key": bearer(KEY_A[:-1]),
}


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("case", BAD_METADATA)
def test_rpcs_refuse_a_missing_or_bad_key(auth_server, rpc, case):
    with pytest.raises(grpc.RpcError) as error:
        call(auth_server.stub(), rpc, BAD_METADATA[case])
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.value.details() == UNAUTHENTICATED  # names no key, valid or not


@pytest.mark.parametrize("rpc", RPCS)
def test_rpcs_take_any_key_of_the_file(auth_server, rpc):
    for metadata in (bearer(KEY_A), [("authorization", f"bearer {KEY_B}")]):
        result = call(auth_server.stub(), rpc, metadata)
        if rpc == "Generate":
            assert len(result.token_ids) == 2
        elif rpc == "GenerateStream":
            assert sum(len(m.token_ids) for m in result) == 2
        else:
            assert result.vocab_size == 320


def test_refusals_are_counted(auth_server):
    labels = {"rpc": "GetModelInfo", "code": "UNAUTHENTICATED"}
    before = auth_server.metric("spanserve_requests_total", labels)
    with pytest.raises(grpc.RpcError):
        call(auth_server.stub(), "GetModelInfo")
    assert auth_server.metric("spanserve_requests_total", labels) == before + 1


def test_health_needs_no_key(auth_server, std_protos):
    stub = std_protos["health_pb2_grpc"].HealthStub(auth_server.channel())
    for service in ("", "spanserve.v1.SpanServe"):
        response = stub.Check(std_protos["health_pb2"].HealthCheckRequest(service=service),
                              timeout=5)
        assert response.status == std_protos["health_pb2"].HealthCheckResponse.SERVING


def test_reflection_is_off_with_keys(auth_server, std_protos):
    stub = std_protos["reflection_pb2_grpc"].ServerReflectionStub(auth_server.channel())
    req = std_protos["reflection_pb2"].ServerReflectionRequest(list_services="")
    for metadata in (None, bearer(KEY_A)):
        with pytest.raises(grpc.RpcError) as error:
            list(stub.ServerReflectionInfo(iter([req]), timeout=10, metadata=metadata))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_open_by_default(auth_server):
    status, body = http_get(auth_server.metrics_port, "/metrics")
    assert status == 200 and "spanserve_requests_total" in body


def test_http_api_needs_a_key(auth_server):
    port = int(auth_server.event("listening")["http_port"])
    for header in (None, f"Bearer {WRONG_KEY}", f"Basic {KEY_A}", KEY_A):
        status, body = http_get(port, "/v1/models", header=header)
        assert status == 401, header
        assert "invalid_api_key" in body
        assert_no_secrets(body)
    status, body = http_get(port, "/v1/models", key=KEY_A)
    assert status == 200 and '"object"' in body
    status, _ = http_get(port, "/v1/models", header=f"BEARER {KEY_B}")
    assert status == 200
    assert http_get(port, "/health")[0] == 200  # health stays open


def test_cli_takes_the_key_by_flag_or_environment(auth_server):
    env = {k: v for k, v in os.environ.items() if k != "SPANSERVE_API_KEY"}
    args = [str(CLI_BIN), "--address", auth_server.address, "--info"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    assert refused.returncode == 1
    assert UNAUTHENTICATED in refused.stderr

    by_flag = subprocess.run(args + ["--api-key", KEY_A], capture_output=True, text=True,
                             timeout=30, env=env)
    assert by_flag.returncode == 0, by_flag.stderr
    assert "vocab 320" in by_flag.stdout

    by_env = subprocess.run([str(CLI_BIN), "--address", auth_server.address, "1+2=",
                             "--max-tokens", "4", "--ignore-eos"], capture_output=True, text=True,
                            timeout=30, env=dict(env, SPANSERVE_API_KEY=KEY_B))
    assert by_env.returncode == 0, by_env.stderr  # streams, after a GetModelInfo: both keyed
    assert "generated tokens: 4" in by_env.stderr


def test_python_example_takes_the_key(auth_server):
    env = {k: v for k, v in os.environ.items() if k != "SPANSERVE_API_KEY"}
    env["SPANSERVE_BUILD_DIR"] = str(BUILD)
    args = [PYTHON, str(REPO / "examples/python_client.py"), "1+2=", "--address",
            auth_server.address, "--max-tokens", "4"]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    for extra, extra_env in ((["--api-key", KEY_A], {}), ([], {"SPANSERVE_API_KEY": KEY_B})):
        result = subprocess.run(args + extra, capture_output=True, text=True, timeout=60,
                                env=dict(env, **extra_env))
        assert result.returncode == 0, result.stderr
        assert "KV blocks read" in result.stdout


def test_no_key_in_the_log(auth_server):
    # Runs last in the module: every refusal and success above went through this server.
    log = auth_server.log()
    assert "request_failed" in log and UNAUTHENTICATED in log
    assert "event=api_keys_loaded count=2" in log
    assert_no_secrets(log)


def test_metrics_behind_the_keys(start_server, tmp_path):
    keys = key_file(tmp_path / "keys.txt", KEY_A)
    server = start_server({"auth.api_keys_file": str(keys), "auth.protect_metrics": True,
                           "server.http_port": 0})
    assert http_get(server.metrics_port, "/metrics")[0] == 401
    assert http_get(server.metrics_port, "/metrics", key=WRONG_KEY)[0] == 401
    assert http_get(server.metrics_port, "/metrics", header=KEY_A)[0] == 401
    status, body = http_get(server.metrics_port, "/metrics", key=KEY_A)
    assert status == 200 and "spanserve_prompt_tokens_total" in body
    assert_no_secrets(server.log())


def test_sighup_reloads_the_keys(start_server, tmp_path):
    keys = key_file(tmp_path / "keys.txt", KEY_A)
    # The most verbose log level: no key reaches the log at any level.
    server = start_server({"auth.api_keys_file": str(keys), "server.http_port": 0,
                           "logging.level": "trace"})
    stub = server.stub()
    assert call(stub, "GetModelInfo", bearer(KEY_A)).vocab_size == 320

    key_file(keys, KEY_B, comment="rotated")
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.event("api_keys_reloaded"), 10, what="the reload")
    assert server.event("api_keys_reloaded")["count"] == "1"
    assert call(stub, "GetModelInfo", bearer(KEY_B)).vocab_size == 320
    with pytest.raises(grpc.RpcError) as error:
        call(stub, "GetModelInfo", bearer(KEY_A))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A broken file (a key with a space in it) keeps the keys in force.
    keys.write_text(f"{KEY_A} {WRONG_KEY}\n")
    server.signal(signal.SIGHUP)
    failed = wait_for(lambda: server.event("api_keys_reload_failed"), 10, what="the failure")
    assert failed["message"] == f"api key file {keys}: line 1: a key must not contain whitespace"
    assert call(stub, "GetModelInfo", bearer(KEY_B)).vocab_size == 320
    with pytest.raises(grpc.RpcError):
        call(stub, "GetModelInfo", bearer(KEY_A))
    # So does a missing one.
    keys.unlink()
    server.signal(signal.SIGHUP)
    wait_for(lambda: len([e for e in server.events() if e["event"] == "api_keys_reload_failed"])
             == 2, 10, what="the second failure")
    assert call(stub, "GetModelInfo", bearer(KEY_B)).vocab_size == 320

    # SIGHUP changed nothing about the drain.
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert "event=draining signal=SIGTERM" in server.log()
    assert_no_secrets(server.log())


def test_sighup_without_keys_is_harmless(start_server):
    server = start_server({"server.http_port": 0})
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.event("sighup_ignored"), 10, what="the SIGHUP's log line")
    assert server.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size == 320
    server.signal(signal.SIGINT)
    assert server.wait_exit(30) == 0


@pytest.mark.parametrize("contents,message", [
    ("", "holds no key"),
    (f"# {KEY_A}\n\n", "holds no key"),
    (f"{KEY_B}\n{KEY_A} {WRONG_KEY}\n", "line 2: a key must not contain whitespace"),
    (None, "cannot be read"),
])
def test_bad_key_file_stops_the_server(start_server, tmp_path, contents, message):
    keys = tmp_path / "keys.txt"
    if contents is not None:
        keys.write_text(contents)
    server = start_server({"auth.api_keys_file": str(keys), "server.http_port": 0}, wait=False)
    assert server.wait_exit(30) == 1
    event = server.event("api_keys_error")
    assert event["message"] == f"api key file {keys}: {message}"
    assert_no_secrets(server.log())


def test_api_key_file_flag(start_server, tmp_path):
    keys = key_file(tmp_path / "keys.txt", KEY_A)
    server = start_server({"server.http_port": 0}, args=["--api-key-file", str(keys)])
    with pytest.raises(grpc.RpcError) as error:
        call(server.stub(), "GetModelInfo")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call(server.stub(), "GetModelInfo", bearer(KEY_A)).vocab_size == 320
