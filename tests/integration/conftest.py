"""Fixtures of the integration tests: a tiny random model, servers (server_harness.py), and the
standard health and reflection protocols compiled from Debian's grpc-proto. Every process started
here is killed at the end.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server_harness import PYTHON, REPO, ServerProcess

GRPC_PROTO_DIR = Path("/usr/share/grpc-proto")


# ---- The model ----

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA (2 layers, hidden 64, the test tokenizer, context 1024)."""
    out = tmp_path_factory.mktemp("model") / "tiny-random"
    subprocess.run([PYTHON, str(REPO / "training/tools/make_random_model.py"), str(out),
                    "--hidden", "64", "--intermediate", "128", "--layers", "2", "--heads", "4",
                    "--kv-heads", "2", "--context", "1024", "--seed", "7"],
                   check=True, timeout=300)
    return out


# ---- Health and reflection protocols ----

@pytest.fixture(scope="session")
def std_protos(tmp_path_factory):
    """health_pb2(_grpc) and reflection_pb2(_grpc), compiled at the root of a temporary
    directory (their own package path would shadow grpcio's `grpc` package)."""
    out = tmp_path_factory.mktemp("std_protos")
    sources = {"health.proto": GRPC_PROTO_DIR / "grpc/health/v1/health.proto",
               "reflection.proto": GRPC_PROTO_DIR / "grpc/reflection/v1alpha/reflection.proto"}
    for name, source in sources.items():
        shutil.copy(source, out / name)
    plugin = shutil.which("grpc_python_plugin")
    subprocess.run(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                    f"--plugin=protoc-gen-grpc_python={plugin}", *sources], cwd=out,
                   check=True, timeout=60)
    sys.path.insert(0, str(out))
    names = ["health_pb2", "health_pb2_grpc", "reflection_pb2", "reflection_pb2_grpc"]
    return {name: importlib.import_module(name) for name in names}


@pytest.fixture
def start_server(tmp_path_factory, model_dir):
    """start_server(settings=None, args=None, wait=True) -> a ServerProcess, killed at the end."""
    started = []

    def start(settings=None, args=None, wait=True):
        server = ServerProcess(tmp_path_factory.mktemp("server"), model_dir, settings, args)
        started.append(server)
        return server.wait_serving() if wait else server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    """A server shared by the tests of a module: limits small enough to test against."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), model_dir,
                            {"limits.max_tokens": 512, "scheduler.max_running": 64})
    try:
        yield process.wait_serving()
    finally:
        process.close()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, model_dir):
    """A server whose steps take 20 ms more: generations last long enough to cancel."""
    process = ServerProcess(tmp_path_factory.mktemp("server"), model_dir,
                            {"debug.step_delay_ms": 20})
    try:
        yield process.wait_serving()
    finally:
        process.close()
