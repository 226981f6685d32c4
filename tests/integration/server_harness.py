"""What the integration tests share: paths of the build, the generated gRPC stubs, a bounded
wait, and ServerProcess, one real `spanserve` process started on loopback (ports picked by the
server and read from its log). The build directory is $SPANSERVE_BUILD_DIR (default build/).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SPANSERVE_BUILD_DIR", REPO / "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
SERVER_BIN = BUILD / "server" / "spanserve"
CLI_BIN = BUILD / "server" / "spanserve-cli"
PYTHON = "/usr/bin/python3"

sys.path.insert(0, str(BUILD / "python"))

import grpc  # noqa: E402

from spanserve.v1 import spanserve_pb2 as pb  # noqa: E402
from spanserve.v1 import spanserve_pb2_grpc as pb_grpc  # noqa: E402


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls condition() until it returns a true value (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port free right now (for settings that cannot say 0: any free port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- Server processes ----

def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


class ServerProcess:
    """One `spanserve` process. `settings` are config keys by dotted path."""

    def __init__(self, workdir: Path, model: Path, settings: dict | None = None,
                 args: list[str] | None = None):
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        config = {"model.path": str(model), "device": "cpu", "server.bind_address": "127.0.0.1",
                  "server.port": 0, "server.metrics_port": 0, "server.http_port": 0,
                  "kv_cache.memory_mb": 64,
                  "server.drain_grace_seconds": 10}
        config.update(settings or {})
        sections: dict = {}
        for key, value in config.items():
            section, _, leaf = key.rpartition(".")
            sections.setdefault(section, {})[leaf] = value
        lines = []
        for section, values in sections.items():
            if not section:
                lines += [f"{k}: {_yaml(v)}" for k, v in values.items()]
            else:
                lines.append(f"{section}:")
                lines += [f"  {k}: {_yaml(v)}" for k, v in values.items()]
        self.config_path = workdir / "spanserve.yaml"
        self.config_path.write_text("\n".join(lines) + "\n")
        self._log = open(self.log_path, "wb")
        # One compute thread: the tests share two cores with their clients.
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([str(SERVER_BIN), "--config", str(self.config_path),
                                      *(args or [])],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.grpc_port = self.metrics_port = None
        self._channel = None

    # -- start-up --

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        """The log's lines as dicts, from either log format (key=value or JSON)."""
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
                continue
            fields = {}
            for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
                if value.startswith('"'):
                    value = re.sub(r'\\(.)', r'\1', value[1:-1]).replace("\\n", "\n")
                fields[key] = value
            if "event" in fields:
                events.append(fields)
        return events

    def event(self, name: str) -> dict | None:
        """The first log event of that name, or None."""
        return next((e for e in self.events() if e["event"] == name), None)

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"spanserve exited with {self.proc.returncode}:\n{self.log()}")

    def wait_listening(self, timeout: float = 30) -> "ServerProcess":
        def listening():
            event = self.event("listening")
            if event is None:
                self._alive()
            return event
        event = wait_for(listening, timeout, what="the server's listening line")
        self.grpc_port, self.metrics_port = int(event["grpc_port"]), int(event["metrics_port"])
        return self

    def wait_serving(self, timeout: float = 60) -> "ServerProcess":
        self.wait_listening()

        def serving():
            self._alive()
            return self.event("serving")
        wait_for(serving, timeout, what="the model to load")
        return self

    # -- clients --

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def stub(self) -> pb_grpc.SpanServeStub:
        return pb_grpc.SpanServeStub(self.channel())

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str, labels: dict | None = None) -> float:
        """The value of one sample in a fresh scrape; 0 when the sample is absent."""
        want = ",".join(f'{k}="{v}"' for k, v in (labels or {}).items())
        pattern = re.compile(r"^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want
                             else "") + r" (\S+)$", re.M)
        match = pattern.search(self.scrape())
        return float(match.group(1)) if match else 0.0

    # -- shutdown --

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self):
        if self._channel is not None:
            self._channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def request(**fields) -> pb.GenerateRequest:
    """A GenerateRequest; prompt defaults to a short arithmetic expression."""
    fields.setdefault("prompt", "((3+4)*(5-2))+6=")
    return pb.GenerateRequest(**fields)


def stream_text(stub, req, timeout=60):
    """Runs GenerateStream; returns (text, token ids, messages)."""
    messages = list(stub.GenerateStream(req, timeout=timeout))
    text = "".join(m.text for m in messages)
    tokens = [t for m in messages for t in m.token_ids]
    return text, tokens, messages


# ---- Prometheus ----

class PrometheusProcess:
    """A real Prometheus (Debian's `prometheus`) scraping one metrics port every second, on a
    free loopback port, its data and log under workdir."""

    def __init__(self, workdir: Path, metrics_port: int):
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: spanserve\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> dict | None:
        """The API's answer to an instant query (an error's too); None while it is not up."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:  # a bad query: 400 with the parser's message
            return json.load(err)
        except OSError:
            return None

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
