"""bench/serve_bench.py against a real server (the tiny random model): a short run of each load
kind, both span modes; the JSON's counts and tokens agree with what the server's metrics
counted, its percentiles are ordered, failures are reported, and it draws the plot."""
import json
import subprocess

import pytest

from server_harness import BUILD, PYTHON, REPO

BENCH = REPO / "bench" / "serve_bench.py"
DISTRIBUTIONS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def run_bench(server, tmp_path, *args, timeout=300):
    out = tmp_path / "result.json"
    proc = subprocess.run([PYTHON, str(BENCH), "--port", str(server.grpc_port),
                           "--metrics-port", str(server.metrics_port), "--build-dir", str(BUILD),
                           "--warmup", "0", "--progress-interval", "0.5", "--save-requests",
                           "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc


def counters(server):
    names = ("spanserve_generated_tokens_total", "spanserve_prompt_tokens_total",
             "spanserve_kv_blocks_read_total", "spanserve_kv_blocks_dense_total")
    values = {name: server.metric(name) for name in names}
    values["ok"] = server.metric("spanserve_requests_total", {"rpc": "GenerateStream", "code": "OK"})
    return values


def check_run(run, n):
    s = run["summary"]
    assert s["requests"] == n and s["completed"] + s["failed"] + s["not_sent"] == n
    requests = [r for r in run["requests"] if r["ok"]]
    assert len(requests) == s["completed"]
    assert s["total_output_tokens"] == sum(r["output_tokens"] for r in requests)
    assert s["total_prompt_tokens"] == sum(r["prompt_tokens"] for r in requests)
    for r in requests:
        assert 0 < r["ttft"] <= r["e2e"] and r["streamed_tokens"] == r["output_tokens"]
        assert 1 <= r["messages"] <= r["output_tokens"]
        # One gap per token after the first message's.
        assert len(r["itl"]) <= r["output_tokens"] - 1
        assert r["kv_blocks_read"] <= r["kv_blocks_dense"]
    for key in DISTRIBUTIONS:
        d = s[key]
        assert d["min"] <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"], (key, d)
        assert d["min"] <= d["mean"] <= d["max"], (key, d)
    assert s["ttft_ms"]["n"] == s["e2e_ms"]["n"] == s["completed"]
    assert s["itl_ms"]["n"] == sum(len(r["itl"]) for r in requests)
    assert s["request_throughput"] == pytest.approx(s["completed"] / s["duration_s"])
    assert s["output_throughput"] == pytest.approx(s["total_output_tokens"] / s["duration_s"])
    # The run's own scrape of the server's counters agrees with the client's sums.
    m = run["server_metrics"]
    assert m["spanserve_generated_tokens_total"] == s["total_output_tokens"]
    assert m["spanserve_prompt_tokens_total"] == s["total_prompt_tokens"]
    assert m["spanserve_kv_blocks_read_total"] == s["attention"]["kv_blocks_read"]
    assert m["spanserve_kv_blocks_dense_total"] == s["attention"]["kv_blocks_dense"]
    assert m["requests"].get("GenerateStream OK", 0) == s["completed"]


def test_rate_sweep_both_modes_agrees_with_the_server(server, tmp_path):
    before = counters(server)
    result, proc = run_bench(server, tmp_path, "--dataset", "arith", "--num-prompts", "6",
                             "--request-rate", "8,inf", "--max-tokens", "24", "--ignore-eos",
                             "--plot", str(tmp_path / "plot.png"))
    after = counters(server)
    runs = result["runs"]
    # Interleaved: both modes at one rate, then the next rate.
    assert [(r["load"]["value"], r["mode"]) for r in runs] == [
        (8.0, "self_selected"), (8.0, "dense"), ("inf", "self_selected"), ("inf", "dense")]
    for run in runs:
        check_run(run, 6)
        assert run["summary"]["completed"] == 6
        # ignore_eos with max_tokens 24: every request generates exactly 24 tokens.
        assert run["summary"]["finish_reasons"] == {"FINISH_REASON_LENGTH": 6}
        assert run["summary"]["total_output_tokens"] == 6 * 24
        assert run["summary"]["tpot_ms"]["n"] == 6
    dense = [r for r in runs if r["mode"] == "dense"]
    assert all(r["summary"]["attention"]["saved_fraction"] == 0 for r in dense)
    # Our own scrapes around the whole benchmark: it sent nothing the JSON leaves out.
    total = lambda key: sum(r["summary"][key] for r in runs)  # noqa: E731
    assert after["spanserve_generated_tokens_total"] - before["spanserve_generated_tokens_total"] \
        == total("total_output_tokens")
    assert after["spanserve_prompt_tokens_total"] - before["spanserve_prompt_tokens_total"] == \
        total("total_prompt_tokens")
    assert after["ok"] - before["ok"] == total("completed") == 24
    assert [row["load"]["value"] for row in result["comparison"]] == [8.0, "inf"]
    assert all(set(row["modes"]) == {"self_selected", "dense"} for row in result["comparison"])
    assert result["server"]["backend"] == "cpu" and result["config"]["itl_basis"] == "token"
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "done (0 failed)" in proc.stderr and "6/6" in proc.stderr  # progress lines
    assert "self_selected" in proc.stdout and "dense" in proc.stdout  # the table


def test_closed_loop_and_failures_are_reported(server, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # The third asks for more than the server's limit (512): INVALID_ARGUMENT, counted.
    prompts.write_text('{"prompt": "1+2=", "max_tokens": 8}\n'
                       '{"prompt": "(3*4)-5=", "max_tokens": 16}\n'
                       '{"prompt": "1+1=", "max_tokens": 100000}\n')
    result, proc = run_bench(server, tmp_path, "--dataset", f"jsonl:{prompts}",
                             "--num-prompts", "6", "--concurrency", "2",
                             "--span-modes", "self_selected")
    [run] = result["runs"]
    check_run(run, 6)
    s = run["summary"]
    assert (s["completed"], s["failed"]) == (4, 2)
    assert s["errors"] == {"INVALID_ARGUMENT": 2}
    assert run["server_metrics"]["requests"]["GenerateStream INVALID_ARGUMENT"] == 2
    assert all(r["output_tokens"] <= r_max for r, r_max in
               zip([r for r in run["requests"] if r["ok"]], [8, 16, 8, 16]))
    assert "2 requests failed" in proc.stderr


def test_client_processes_send_every_request_once_over_grpc(server, tmp_path):
    before = counters(server)
    result, proc = run_bench(server, tmp_path, "--dataset", "arith", "--num-prompts", "8",
                             "--concurrency", "4", "--max-tokens", "16", "--ignore-eos",
                             "--client-processes", "2", "--save-text")
    after = counters(server)
    assert result["config"]["client_processes"] == 2
    for run in result["runs"]:
        check_run(run, 8)
        assert run["summary"]["completed"] == 8
        assert run["summary"]["total_output_tokens"] == 8 * 16
        assert all(r["text"] for r in run["requests"])
    assert after["ok"] - before["ok"] == 16
    assert "8/8 done (0 failed)" in proc.stderr  # the children's finishes reach the progress
