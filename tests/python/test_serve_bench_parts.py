"""bench/serve_bench.py's pure parts: statistics, timings, the Poisson schedule, loads, result
merging, SSE parsing, metric deltas, datasets, the load generator (against a fake backend that
records what it was sent) and the plot."""
import json
import math
import os
import sys
import threading
import time
import types

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

import serve_bench as sb  # noqa: E402


# ---- statistics ----

def test_distribution_percentiles_and_scale():
    d = sb.distribution([float(i) for i in range(1, 101)], scale=1.0)
    assert d["n"] == 100 and d["mean"] == pytest.approx(50.5)
    assert d["p50"] == pytest.approx(50.5) and d["p90"] == pytest.approx(90.1)
    assert d["p99"] == pytest.approx(99.01) and (d["min"], d["max"]) == (1.0, 100.0)
    assert sb.distribution([0.002])["p99"] == pytest.approx(2.0)  # seconds to ms


def test_distribution_is_ordered_and_empty_is_none():
    rng = np.random.default_rng(3)
    d = sb.distribution(rng.lognormal(size=500).tolist())
    assert d["min"] <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"]
    assert sb.distribution([]) == {"n": 0, "mean": None, "p50": None, "p90": None,
                                   "p99": None, "min": None, "max": None}


def test_token_timings_spread_a_message_over_its_tokens():
    events = [(0.5, 2), (0.7, 1), (1.3, 3)]
    ttft, itl = sb.token_timings(events, per_token=True)
    assert ttft == 0.5
    # The first message's tokens have no gap; 0.2 s for one token, 0.6 s over three.
    assert itl == pytest.approx([0.2, 0.2, 0.2, 0.2])
    ttft, itl = sb.token_timings(events, per_token=False)
    assert ttft == 0.5 and itl == pytest.approx([0.2, 0.6])
    assert sb.token_timings([], per_token=True) == (None, [])


def test_tpot():
    assert sb.tpot(sb.Outcome(ok=True, ttft=0.1, e2e=1.1, output_tokens=11)) == pytest.approx(0.1)
    assert sb.tpot(sb.Outcome(ok=True, ttft=0.1, e2e=0.1, output_tokens=1)) is None
    assert sb.tpot(sb.Outcome(ok=True, ttft=None, e2e=0.1, output_tokens=5)) is None


def done(tokens, read, dense, ttft=0.1, e2e=1.0, itl=(0.05,)):
    return sb.Outcome(ok=True, ttft=ttft, e2e=e2e, itl=list(itl), prompt_tokens=10,
                      output_tokens=tokens, finish_reason="FINISH_REASON_EOS",
                      kv_blocks_read=read, kv_blocks_dense=dense,
                      attended_tokens=read * 16, context_tokens=dense * 16)


def test_summarize_counts_failures_and_weights_the_saving_by_blocks():
    outcomes = [done(10, 1, 10), done(30, 90, 100, ttft=0.3, e2e=2.0),
                sb.Outcome(ok=False, error="RESOURCE_EXHAUSTED", e2e=0.01, output_tokens=0),
                sb.Outcome(ok=False, error="RESOURCE_EXHAUSTED"),
                sb.Outcome(ok=False, error="DEADLINE_EXCEEDED"),
                sb.Outcome(sent=False, error="not sent: time limit")]
    s = sb.summarize(outcomes, duration=4.0)
    assert (s["requests"], s["completed"], s["failed"], s["not_sent"]) == (6, 2, 3, 1)
    assert s["errors"] == {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 2}
    assert s["finish_reasons"] == {"FINISH_REASON_EOS": 2}
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["total_output_tokens"] == 40 and s["output_throughput"] == pytest.approx(10.0)
    assert s["ttft_ms"]["n"] == 2 and s["ttft_ms"]["mean"] == pytest.approx(200.0)
    # TPOT of each request: 0.9 / 9 and 1.7 / 29.
    assert s["tpot_ms"]["mean"] == pytest.approx(1000 * (0.1 + 1.7 / 29) / 2)
    # 1 - 91 / 110, not the mean of the requests' savings (0.9 and 0.1).
    assert s["attention"]["saved_fraction"] == pytest.approx(1 - 91 / 110)
    assert s["attention"]["attended_fraction"] == pytest.approx(91 / 110)


def test_summarize_with_nothing_completed():
    s = sb.summarize([sb.Outcome(ok=False, error="UNAVAILABLE")], duration=0.0)
    assert s["completed"] == 0 and s["failed"] == 1 and s["request_throughput"] == 0
    assert s["e2e_ms"]["p99"] is None and s["attention"]["saved_fraction"] == 0.0


def run(mode, kind, value, throughput, e2e_p99):
    summary = sb.summarize([done(10, 5, 10)], 1.0)
    summary["output_throughput"], summary["e2e_ms"]["p99"] = throughput, e2e_p99
    return {"mode": mode, "load": sb.Load(kind, value).to_json(), "summary": summary}


def test_compare_puts_modes_of_a_load_side_by_side():
    runs = [run("self_selected", "rate", 1.0, 200.0, 50.0), run("dense", "rate", 1.0, 100.0, 100.0),
            run("self_selected", "rate", math.inf, 300.0, 80.0),
            run("dense", "rate", math.inf, 150.0, 40.0)]
    rows = sb.compare(runs)
    assert [row["load"] for row in rows] == [{"kind": "rate", "value": 1.0},
                                             {"kind": "rate", "value": "inf"}]
    assert list(rows[0]["modes"]) == ["self_selected", "dense"]
    assert rows[0]["modes"]["dense"]["output_throughput"] == 100.0
    assert rows[0]["ratios"]["self_selected/dense"]["output_throughput"] == pytest.approx(2.0)
    assert rows[1]["ratios"]["self_selected/dense"]["e2e_p99_ms"] == pytest.approx(2.0)
    assert "ratios" not in sb.compare(runs[:1])[0]


# ---- loads ----

def test_poisson_schedule():
    times = sb.poisson_schedule(20000, 4.0, seed=1)
    assert len(times) == 20000 and times[0] == 0.0
    gaps = np.diff(times)
    assert (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() == pytest.approx(0.25, rel=0.05)  # exponential: std = mean
    assert sb.poisson_schedule(50, 4.0, seed=1) == times[:50]
    assert sb.poisson_schedule(50, 4.0, seed=2) != times[:50]
    assert sb.poisson_schedule(3, math.inf, seed=1) == [0.0, 0.0, 0.0]
    assert sb.poisson_schedule(1, 2.0, seed=1) == [0.0]


def test_parse_loads():
    assert sb.parse_loads("0.5,2,inf", None) == [sb.Load("rate", 0.5), sb.Load("rate", 2.0),
                                                 sb.Load("rate", math.inf)]
    assert sb.parse_loads(None, "1,4") == [sb.Load("concurrency", 1), sb.Load("concurrency", 4)]
    assert sb.parse_loads(None, None) == [sb.Load("concurrency", 1)]
    for rates, concurrency in (("1", "2"), ("0", None), ("-1", None), (None, "0")):
        with pytest.raises(ValueError):
            sb.parse_loads(rates, concurrency)


# ---- protocol helpers ----

def test_sse_data():
    stream = [b'data: {"a": 1}\n', b"\n", b": a comment\n", b'data: {"b":\r\n', b"data: 2}\r\n",
              b"\r\n", b"data: [DONE]\n", b"\n", b'data: {"after": 1}\n', b"\n"]
    assert [json.loads(p) for p in sb.sse_data(stream)] == [{"a": 1}, {"b": 2}]
    assert list(sb.sse_data([b'data: {"x": 0}\n'])) == ['{"x": 0}']  # no final blank line


def completion_chunks():
    """A streamed /v1/completions as server/openai_protocol.cc writes one: text chunks, the
    finish chunk with the spanserve extension beside its choices, the include_usage chunk."""
    envelope = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    text = lambda t, now: (now, dict(envelope, choices=[  # noqa: E731
        {"index": 0, "text": t, "logprobs": None, "finish_reason": None}]))
    attention = {"kv_blocks_read": 30, "kv_blocks_dense": 40, "attended_tokens": 400,
                 "context_tokens": 600, "saved_fraction": 0.25}
    return [text("<a>0</a>", 0.2), text("7", 0.25), text("", 0.3), text("+6", 0.4),
            (0.41, dict(envelope, choices=[{"index": 0, "text": "", "logprobs": None,
                                            "finish_reason": "stop"}],
                        spanserve={"span_mode": "self_selected", "seed": 3,
                                   "attention": attention})),
            (0.42, dict(envelope, choices=[], usage={"prompt_tokens": 9, "completion_tokens": 6,
                                                     "total_tokens": 15}))]


def test_completion_outcome():
    out = sb.completion_outcome(completion_chunks(), e2e=0.45)
    assert out.ok and out.error == "" and out.finish_reason == "stop"
    assert out.ttft == 0.2 and out.itl == pytest.approx([0.05, 0.15])  # chunks with text
    assert (out.messages, out.prompt_tokens, out.output_tokens) == (3, 9, 6)
    assert (out.kv_blocks_read, out.kv_blocks_dense) == (30, 40)
    assert (out.attended_tokens, out.context_tokens) == (400, 600)
    assert sb.tpot(out) == pytest.approx(0.25 / 5)


def test_completion_outcome_failures():
    chunks = completion_chunks()
    assert sb.completion_outcome(chunks[:-1], 0.4).error.startswith("stream ended")  # no usage
    assert not sb.completion_outcome(chunks[:4], 0.4).ok  # no finish
    assert sb.completion_outcome([], 0.01, "HTTP 401").error == "HTTP 401"
    broken = chunks[:2] + [(0.3, {"error": {"type": "server_error", "message": "x"}})]
    assert sb.completion_outcome(broken, 0.3).error == "stream error: server_error"


def test_metric_deltas():
    before = sb.parse_metrics(
        "# TYPE spanserve_generated_tokens_total counter\n"
        "spanserve_generated_tokens_total 100\n"
        'spanserve_requests_total{rpc="GenerateStream",code="OK"} 3\n')
    after = sb.parse_metrics(
        "spanserve_generated_tokens_total 160\nspanserve_kv_blocks_read_total 7\n"
        'spanserve_requests_total{rpc="GenerateStream",code="OK"} 5\n'
        'spanserve_requests_total{rpc="GenerateStream",code="RESOURCE_EXHAUSTED"} 1\n'
        'spanserve_requests_total{rpc="GetModelInfo",code="OK"} 0\n'
        'spanserve_step_duration_seconds_count{phase="decode"} 40\n'
        'spanserve_step_duration_seconds_sum{phase="prefill"} 0.5\n')
    deltas = sb.metric_deltas(before, after)
    assert deltas["spanserve_generated_tokens_total"] == 60
    assert deltas['spanserve_step_duration_seconds_count{phase="decode"}'] == 40
    assert deltas['spanserve_step_duration_seconds_sum{phase="prefill"}'] == 0.5
    assert deltas["spanserve_kv_blocks_read_total"] == 7
    assert deltas["spanserve_preemptions_total"] == 0
    assert deltas["requests"] == {"GenerateStream OK": 2, "GenerateStream RESOURCE_EXHAUSTED": 1}


# ---- datasets ----

def test_load_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+2="}\n\n{"prompt": "3*4=", "max_tokens": 9}\n')
    assert sb.load_jsonl(str(path), 50) == [sb.BenchRequest("1+2=", 50),
                                            sb.BenchRequest("3*4=", 9)]
    requests = sb.load_dataset(f"jsonl:{path}", 5, seed=0, max_tokens=None)
    assert [r.prompt for r in requests] == ["1+2=", "3*4=", "1+2=", "3*4=", "1+2="]
    assert {r.max_tokens for r in sb.load_dataset(f"jsonl:{path}", 2, 0, 7)} == {7}
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="p.jsonl:2"):
        sb.load_jsonl(str(path), 50)
    path.write_text('{"prompt": "x", "max_tokens": 0}\n')
    with pytest.raises(ValueError, match="p.jsonl:1"):
        sb.load_jsonl(str(path), 50)


def test_arith_dataset_is_fixed_by_the_seed_and_alternates_levels():
    a = sb.load_dataset("arith", 12, seed=5, max_tokens=None)
    assert a == sb.load_dataset("arith", 12, seed=5, max_tokens=None)
    assert a != sb.load_dataset("arith", 12, seed=6, max_tokens=None)
    sys.path.insert(0, os.path.join(REPO, "training"))
    from spanserve_train import arith_data
    ops = [arith_data.count_ops(arith_data.parse(r.prompt[:-1])) for r in a]
    assert all(2 <= n <= 4 for n in ops[0::2]) and all(8 <= n <= 10 for n in ops[1::2])
    only_l2 = sb.load_dataset("arith:l2", 4, seed=5, max_tokens=None)
    assert [r.prompt for r in only_l2] == [r.prompt for r in a[1::2][:4]]
    with pytest.raises(ValueError, match="l3"):
        sb.load_dataset("arith:l3", 4, seed=5, max_tokens=None)
    with pytest.raises(ValueError, match="neither"):
        sb.load_dataset("squad", 4, seed=5, max_tokens=None)


def test_arith_max_tokens_bounds_the_answer_with_the_shipped_tokenizer():
    import sentencepiece as spm
    tokenizer = spm.SentencePieceProcessor(
        model_file=os.path.join(REPO, "models", "arith-small", "tokenizer.model"))
    sys.path.insert(0, os.path.join(REPO, "training"))
    from spanserve_train import arith_data
    for level in sb.ARITH_LEVELS:
        spec = arith_data.spec_from_preset(arith_data.load_preset(f"arith-{level}"))
        for record in arith_data.generate(spec, 50, f"bound-{level}", set()):
            tokens = len(tokenizer.encode(record["output"])) + 1  # and the EOS
            assert tokens <= sb.arith_max_tokens(record["output"]) - 15


# ---- the load generator, against a fake backend ----

class FakeBackend:
    """Answers each request after `seconds`, recording when it was sent and how many were in
    flight; the request's max_tokens becomes its output tokens."""
    itl_basis = "token"

    def __init__(self, seconds):
        self.seconds, self.lock = seconds, threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.sent = []

    def generate(self, req, mode, ignore_eos):
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.sent.append((time.perf_counter(), req.prompt, mode))
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight -= 1
        return sb.Outcome(ok=True, ttft=self.seconds / 2, e2e=self.seconds,
                          output_tokens=req.max_tokens, kv_blocks_read=1, kv_blocks_dense=2)


def bench_args(**kw):
    base = dict(seed=0, max_concurrency=64, time_limit=60.0, ignore_eos=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


def requests(n):
    return [sb.BenchRequest(f"p{i}", i + 1) for i in range(n)]


def test_closed_loop_keeps_n_in_flight():
    backend = FakeBackend(0.05)
    progress = sb.Progress("test", 12, interval=0)
    outcomes, duration = sb.run_load(backend, requests(12), "dense", sb.Load("concurrency", 3),
                                     bench_args(), progress)
    assert backend.most_in_flight == 3 and len(outcomes) == 12 and progress.done == 12
    assert [o.output_tokens for o in outcomes] == list(range(1, 13))  # request order
    assert 4 * 0.05 <= duration < 4 * 0.05 + 1.0
    assert all(o.late == 0 for o in outcomes)


def test_rate_mode_sends_on_the_schedule():
    backend = FakeBackend(0.01)
    load = sb.Load("rate", 20.0)
    outcomes, _ = sb.run_load(backend, requests(10), "self_selected", load, bench_args(seed=4),
                              sb.Progress("test", 10, interval=0))
    arrivals = sb.poisson_schedule(10, 20.0, seed=4)
    starts = [o.start for o in outcomes]
    assert all(a <= s < a + 0.2 for a, s in zip(arrivals, starts))
    assert [p for _, p, _ in backend.sent] == [f"p{i}" for i in range(10)]


def test_rate_mode_caps_requests_in_flight_and_counts_late_starts():
    backend = FakeBackend(0.3)
    outcomes, _ = sb.run_load(backend, requests(6), "dense", sb.Load("rate", math.inf),
                              bench_args(max_concurrency=2), sb.Progress("test", 6, interval=0))
    assert backend.most_in_flight == 2
    assert sb.summarize(outcomes, 1.0)["late_starts"] == 4


def test_time_limit_stops_sending_and_counts_what_was_not_sent():
    backend = FakeBackend(0.2)
    outcomes, _ = sb.run_load(backend, requests(10), "dense", sb.Load("concurrency", 1),
                              bench_args(time_limit=0.5), sb.Progress("test", 10, interval=0))
    s = sb.summarize(outcomes, 1.0)
    assert 2 <= s["completed"] <= 4 and s["not_sent"] == 10 - s["completed"]
    assert s["failed"] == 0 and len(backend.sent) == s["completed"]


class SlowFakeBackend:
    """Picklable for spawned clients: answers after 0.2 s with the process that answered."""
    itl_basis = "token"

    def generate(self, req, mode, ignore_eos):
        time.sleep(0.2)
        return sb.Outcome(ok=True, ttft=0.1, e2e=0.2, output_tokens=req.max_tokens,
                          finish_reason=str(os.getpid()))

    def close(self):
        pass


def test_client_processes_share_the_run_and_keep_request_order():
    clients = sb.ClientProcesses(SlowFakeBackend, 3)
    try:
        progress = sb.Progress("test", 12, interval=0)
        outcomes, duration = clients.run_load(requests(12), "dense", sb.Load("concurrency", 6),
                                              bench_args(), progress)
    finally:
        clients.close()
    assert [o.output_tokens for o in outcomes] == list(range(1, 13))  # request order
    assert progress.done == 12 and all(o.ok for o in outcomes)
    pids = [o.finish_reason for o in outcomes]
    assert len(set(pids)) == 3 and os.getpid() not in map(int, pids)
    assert all(pids[i] == pids[i % 3] for i in range(12))  # request i in process i % 3
    # 6 in flight over 3 processes: two waves of 0.2 s, from one common start.
    assert 0.4 <= duration < 0.4 + 0.5
    starts = sorted(o.start for o in outcomes)
    assert all(t < 0.15 for t in starts[:6]) and all(0.2 <= t < 0.6 for t in starts[6:])


# ---- output ----

def test_plot_and_table(tmp_path):
    runs = [run("self_selected", "rate", 1.0, 200.0, 50.0), run("dense", "rate", 1.0, 100.0, 90.0),
            run("self_selected", "rate", 2.0, 300.0, 80.0), run("dense", "rate", 2.0, 150.0, 140.0)]
    result = {"runs": runs, "server": {"name": "m"},
              "config": {"span_modes": ["self_selected", "dense"], "dataset": "arith",
                         "num_prompts": 1, "backend": "grpc"}}
    path = tmp_path / "plot.png"
    sb.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000
    lines = sb.table(result).splitlines()
    assert len(lines) == 5 and lines[1].startswith("rate 1/s") and "self_selected" in lines[1]
