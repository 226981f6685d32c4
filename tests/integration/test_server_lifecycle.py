"""Start-up, health, reflection, drain and config errors of the real server binary."""
import json
import signal
import subprocess

import grpc
import pytest

from server_harness import CLI_BIN, SERVER_BIN, pb, pb_grpc, request, wait_for

SERVICE = "spanserve.v1.SpanServe"


def health_status(server, protos, service=""):
    stub = protos["health_pb2_grpc"].HealthStub(server.channel())
    return stub.Check(protos["health_pb2"].HealthCheckRequest(service=service), timeout=5).status


def test_health_serving(server, std_protos):
    serving = std_protos["health_pb2"].HealthCheckResponse.SERVING
    assert health_status(server, std_protos) == serving
    assert health_status(server, std_protos, SERVICE) == serving
    with pytest.raises(grpc.RpcError) as error:
        health_status(server, std_protos, "no.such.Service")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_not_serving_until_the_model_is_loaded(start_server, std_protos):
    server = start_server({"debug.load_delay_ms": 2000}, wait=False).wait_listening()
    not_serving = std_protos["health_pb2"].HealthCheckResponse.NOT_SERVING
    assert health_status(server, std_protos) == not_serving
    assert health_status(server, std_protos, SERVICE) == not_serving
    with pytest.raises(grpc.RpcError) as error:
        server.stub().Generate(request(max_tokens=2), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details() == "the model is still loading"
    server.wait_serving()
    assert health_status(server, std_protos) == std_protos["health_pb2"].HealthCheckResponse.SERVING


def test_not_serving_while_draining(start_server, std_protos):
    server = start_server({"debug.step_delay_ms": 20})
    in_flight = server.stub().GenerateStream(request(max_tokens=100, ignore_eos=True), timeout=60)
    next(in_flight)
    server.signal(signal.SIGINT)
    wait_for(lambda: "event=draining" in server.log(), 10, what="the drain to begin")
    not_serving = std_protos["health_pb2"].HealthCheckResponse.NOT_SERVING
    assert health_status(server, std_protos) == not_serving
    assert health_status(server, std_protos, SERVICE) == not_serving
    assert list(in_flight)[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert server.wait_exit(30) == 0


def reflection_call(server, protos, **fields):
    stub = protos["reflection_pb2_grpc"].ServerReflectionStub(server.channel())
    responses = list(stub.ServerReflectionInfo(
        iter([protos["reflection_pb2"].ServerReflectionRequest(**fields)]), timeout=10))
    assert len(responses) == 1
    return responses[0]


def test_reflection_lists_and_describes_the_service(server, std_protos):
    listed = reflection_call(server, std_protos, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

    described = reflection_call(server, std_protos, file_containing_symbol=SERVICE)
    from google.protobuf import descriptor_pb2
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    spanserve = next(f for f in files if f.name == "spanserve/v1/spanserve.proto")
    service = next(s for s in spanserve.service if s.name == "SpanServe")
    methods = {m.name: m for m in service.method}
    assert set(methods) == {"Generate", "GenerateStream", "GetModelInfo"}
    assert methods["GenerateStream"].server_streaming
    assert not methods["Generate"].server_streaming


def test_sigterm_drains_and_exits_zero(start_server):
    server = start_server()
    assert server.stub().Generate(request(max_tokens=3, ignore_eos=True), timeout=30).token_ids
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    log = server.log()
    assert "event=draining signal=SIGTERM" in log
    assert "event=stopped" in log


def test_structured_logs(start_server):
    server = start_server({"logging.format": "json"})
    with pytest.raises(grpc.RpcError):
        server.stub().Generate(request(temperature=-1), timeout=30)
    wait_for(lambda: "request_failed" in server.log(), 5, what="the error's log line")
    server.signal()
    assert server.wait_exit(30) == 0
    events = [json.loads(line) for line in server.log().splitlines()]
    names = [e["event"] for e in events]
    for name in ("start", "listening", "model_load_start", "model_loaded", "serving",
                 "request_failed", "draining", "stopped"):
        assert name in names
    loaded = events[names.index("model_loaded")]
    assert loaded["layers"] == 2 and loaded["backend"] == "cpu" and "seconds" in loaded
    failed = events[names.index("request_failed")]
    assert failed["level"] == "warning" and failed["code"] == "INVALID_ARGUMENT"
    assert failed["message"].startswith("temperature")


@pytest.mark.parametrize("config,message", [
    ("server:\n  prot: 5\n", "unknown key 'server.prot'"),
    ("kv_cache:\n  block_size: 8\n", "kv_cache.block_size: must be between 16 and 256, not 8"),
    ("device: tpu\n", "device: must be one of cpu, cuda, auto, not 'tpu'"),
    ("scheduler:\n  max_running: many\n",
     "scheduler.max_running: expected an integer, got 'many'"),
])
def test_bad_config_is_a_clear_error(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    result = subprocess.run([str(SERVER_BIN), "--config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def test_flags_override_the_file(start_server, model_dir):
    server = start_server({"limits.max_tokens": 100, "defaults.max_tokens": 50},
                          args=["--kv-block-size", "32", "--model", str(model_dir)])
    info = server.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.kv_block_size == 32
    assert info.max_tokens_limit == 100


def test_bad_model_path_exits_with_an_error(start_server):
    server = start_server({"model.path": "/nonexistent/model"}, wait=False)
    assert server.wait_exit(30) == 1
    assert "event=model_load_failed" in server.log()
    assert "/nonexistent/model" in server.log()


def test_tls(start_server, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=spanserve-test",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = start_server({"tls.cert_file": str(cert), "tls.key_file": str(key)})
    assert server.event("listening")["tls"] == "true"
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.address, credentials) as channel:
        response = pb_grpc.SpanServeStub(channel).Generate(
            request(max_tokens=3, ignore_eos=True), timeout=30)
    assert len(response.token_ids) == 3
    result = subprocess.run([str(CLI_BIN), "--address", server.address, "--tls-ca", str(cert),
                             "--info"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    with pytest.raises(grpc.RpcError) as error:  # a plaintext client gets nowhere
        server.stub().Generate(request(max_tokens=3), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
