"""The /metrics endpoint: promtool accepts the exposition, every metric of the issue is there
under Prometheus naming conventions, the counters move with the traffic, and a real Prometheus
server scrapes the endpoint and answers a query for generated tokens."""
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from server_harness import request, stream_text, wait_for

EXPECTED = {
    "spanserve_requests_total": "counter",
    "spanserve_prompt_tokens_total": "counter",
    "spanserve_generated_tokens_total": "counter",
    "spanserve_time_to_first_token_seconds": "histogram",
    "spanserve_inter_token_latency_seconds": "histogram",
    "spanserve_request_duration_seconds": "histogram",
    "spanserve_requests_running": "gauge",
    "spanserve_requests_waiting": "gauge",
    "spanserve_kv_blocks_used": "gauge",
    "spanserve_kv_blocks_capacity": "gauge",
    "spanserve_preemptions_total": "counter",
    "spanserve_batch_size": "histogram",
    "spanserve_step_duration_seconds": "histogram",
    "spanserve_engine_loop_seconds_total": "counter",
    "spanserve_attention_density_ratio": "histogram",
    "spanserve_kv_blocks_read_total": "counter",
    "spanserve_kv_blocks_dense_total": "counter",
    "spanserve_span_header_fallbacks_total": "counter",
    "spanserve_generations_finished_total": "counter",
}


@pytest.fixture(scope="module")
def busy_server(server):
    """The module's server after some traffic of each RPC."""
    stub = server.stub()
    stub.Generate(request(max_tokens=20, ignore_eos=True), timeout=60)
    stream_text(stub, request(max_tokens=20, ignore_eos=True))
    return server


def families(text):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def test_promtool_accepts_the_exposition(busy_server):
    text = busy_server.scrape()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_every_metric_is_there_with_its_type(busy_server):
    found = families(busy_server.scrape())
    for name, kind in EXPECTED.items():
        assert found.get(name) == kind, name
    assert all(name.startswith("spanserve_") for name in found)
    assert all(name.endswith("_total") == (kind == "counter") for name, kind in found.items())


def test_content_type(busy_server):
    url = f"http://127.0.0.1:{busy_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_counters_follow_the_traffic(busy_server):
    server = busy_server
    names = ("spanserve_generated_tokens_total", "spanserve_kv_blocks_dense_total",
             "spanserve_kv_blocks_read_total", "spanserve_time_to_first_token_seconds_count")
    before = {name: server.metric(name) for name in names}
    steps = "spanserve_step_duration_seconds_count"
    decode_before = server.metric(steps, {"phase": "decode"})
    prefill_before = server.metric(steps, {"phase": "prefill"})
    ok_before = server.metric("spanserve_requests_total", {"rpc": "Generate", "code": "OK"})
    response = server.stub().Generate(request(max_tokens=17, ignore_eos=True), timeout=60)
    # The engine reports a step and a finish to the observer just after the client's answer.
    expected = {"spanserve_generated_tokens_total": 17,
                "spanserve_kv_blocks_dense_total": response.attention.kv_blocks_dense,
                "spanserve_kv_blocks_read_total": response.attention.kv_blocks_read,
                "spanserve_time_to_first_token_seconds_count": 1}
    for name, increase in expected.items():
        wait_for(lambda: server.metric(name) == before[name] + increase, 5,
                 what=f"{name} to grow by {increase}")
    assert server.metric("spanserve_requests_total", {"rpc": "Generate", "code": "OK"}) == \
        ok_before + 1
    # The prompt's step(s) gave the first token, one decode step each of the other 16.
    wait_for(lambda: server.metric(steps, {"phase": "decode"}) == decode_before + 16, 5,
             what="16 decode steps")
    assert server.metric(steps, {"phase": "prefill"}) >= prefill_before + 1
    assert server.metric("spanserve_kv_blocks_read_total") <= \
        server.metric("spanserve_kv_blocks_dense_total")
    assert server.metric("spanserve_kv_blocks_capacity") > 0


def test_engine_loop_time_splits_into_phases(busy_server):
    server = busy_server
    loop = "spanserve_engine_loop_seconds_total"
    phases = ("schedule", "build", "backend", "emit")
    before = {p: server.metric(loop, {"phase": p}) for p in phases}
    steps = "spanserve_step_duration_seconds_sum"
    steps_before = sum(server.metric(steps, {"phase": p}) for p in ("decode", "prefill"))
    t0 = time.monotonic()
    server.stub().Generate(request(max_tokens=40, ignore_eos=True), timeout=60)
    wait_for(lambda: server.metric("spanserve_generated_tokens_total") > 0, 5, what="a finish")
    time.sleep(0.2)  # the last step's observation lands just after the answer
    wall = time.monotonic() - t0
    grown = {p: server.metric(loop, {"phase": p}) - before[p] for p in phases}
    assert all(v > 0 for v in grown.values()), grown
    assert sum(grown.values()) <= wall
    # The backend phase is the step time the histograms observe, the same seconds.
    steps_grown = sum(server.metric(steps, {"phase": p}) for p in ("decode", "prefill")) - \
        steps_before
    assert grown["backend"] == pytest.approx(steps_grown, rel=1e-6, abs=1e-9)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_the_endpoint(busy_server, tmp_path):
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: spanserve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{busy_server.metrics_port}']\n")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        expected = busy_server.metric("spanserve_generated_tokens_total")
        assert expected > 0

        def answer():
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "prometheus.log").read_text())
            query = urllib.parse.urlencode({"query": "spanserve_generated_tokens_total"})
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{query}",
                                            timeout=5) as response:
                    body = json.load(response)
            except OSError:
                return None
            results = body.get("data", {}).get("result", [])
            return results[0] if results else None

        result = wait_for(answer, 60, interval=0.5, what="Prometheus to answer the query")
        assert result["metric"]["job"] == "spanserve"
        assert float(result["value"][1]) == expected
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
