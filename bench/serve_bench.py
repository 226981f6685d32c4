"""Serving benchmark of a running spanserve: SELF_SELECTED against DENSE under the same load.

    /usr/bin/python3 bench/serve_bench.py --port 50051 --dataset arith --num-prompts 100 \
        --request-rate 1,2,4 --out results.json --plot plot.png

Sends the same prompts, at the same arrival times, once per span mode (runs interleaved: every
mode at one load, then the next load), streaming, over gRPC (GenerateStream) or the
OpenAI-compatible HTTP API (POST /v1/completions, SSE). Loads: a closed loop of N requests in
flight (--concurrency N[,N2...]) or Poisson arrivals at R requests/s (--request-rate R[,R2...],
`inf` sends them all at once). Reports per run: completed and failed requests (failures by
code, never dropped), requests/s, output tokens/s, TTFT, TPOT, ITL and end-to-end latency (mean,
p50, p90, p99, in ms) and the KV blocks the spans saved; writes JSON (--out) and a plot of
throughput and p99 latency against the load, both modes (--plot). Progress goes to stderr.

Definitions (as vLLM's benchmark_serving): TTFT is the time to the first message that carries
a token; end-to-end the time to the end of the stream; TPOT = (e2e - TTFT) / (output tokens - 1);
ITL is per token over gRPC (a message of k tokens after a gap g adds k gaps of g/k) and per
message over HTTP (its chunks do not say how many tokens they carry); the tokens of the first
message have no ITL. Output tokens are the server's count (usage) of completed requests.
Latencies are measured from the moment a request is sent, which in --request-rate mode can be
after its arrival time when --max-concurrency requests are already in flight (`late_starts`).

gRPC stubs come from <build>/python ($SPANSERVE_BUILD_DIR or --build-dir, default build/);
plots need matplotlib (Debian: python3-matplotlib). --api-key or $SPANSERVE_API_KEY is sent as
`authorization: Bearer <key>`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import http.client
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAN_MODES = ("self_selected", "dense")
# The shipped arithmetic task's levels (training/configs/arith-l<N>.json).
ARITH_LEVELS = ("l1", "l2")


# ----------------------------------------------------------------------------- datasets

@dataclass
class BenchRequest:
    prompt: str
    max_tokens: int


def load_jsonl(path: str, default_max_tokens: int) -> List[BenchRequest]:
    """Records with `prompt` and optional `max_tokens`; raises ValueError naming the line."""
    requests = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt = record["prompt"]
                max_tokens = int(record.get("max_tokens", default_max_tokens))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a record with a prompt ({err})") from err
            if not isinstance(prompt, str) or not prompt or max_tokens < 1:
                raise ValueError(f"{path}:{number}: needs a non-empty prompt and max_tokens >= 1")
            requests.append(BenchRequest(prompt, max_tokens))
    if not requests:
        raise ValueError(f"{path}: no records")
    return requests


def arith_max_tokens(output: str) -> int:
    """An upper bound on the tokens of an arithmetic answer: its characters, the span tags
    counted as one each (every piece has at least one character), plus the EOS and a margin."""
    return len(output.replace("<a>", "a").replace("</a>", "b")) + 16


def arith_requests(n: int, seed: int, levels: Iterable[str] = ARITH_LEVELS) -> List[BenchRequest]:
    """n prompts of the shipped arithmetic task, alternating between levels, from a fixed seed
    (the training generator, seeds disjoint from the training splits' `arith-<seed>-<split>`)."""
    sys.path.insert(0, os.path.join(REPO, "training"))
    from spanserve_train import arith_data  # noqa: E402 (needs training/ on the path)
    levels = list(levels)
    per_level = {}
    for level in levels:
        spec = arith_data.spec_from_preset(arith_data.load_preset(f"arith-{level}"))
        count = (n + len(levels) - 1) // len(levels)
        per_level[level] = arith_data.generate(spec, count, f"serve-bench-{seed}-{level}", set())
    records = [per_level[levels[i % len(levels)]][i // len(levels)] for i in range(n)]
    return [BenchRequest(r["prompt"], arith_max_tokens(r["output"])) for r in records]


def load_dataset(spec: str, n: int, seed: int, max_tokens: Optional[int]) -> List[BenchRequest]:
    """`jsonl:PATH` (cycled to n prompts), `arith` or `arith:l1` / `arith:l2`. max_tokens, when
    given, overrides every request's."""
    if spec.startswith("jsonl:"):
        records = load_jsonl(spec[len("jsonl:"):], max_tokens or 128)
        requests = [records[i % len(records)] for i in range(n)]
    elif spec == "arith" or spec.startswith("arith:"):
        levels = spec.split(":", 1)[1].split(",") if ":" in spec else ARITH_LEVELS
        unknown = [level for level in levels if level not in ARITH_LEVELS]
        if unknown:
            raise ValueError(f"--dataset: unknown arith level {unknown[0]!r} "
                             f"(levels: {', '.join(ARITH_LEVELS)})")
        requests = arith_requests(n, seed, levels)
    else:
        raise ValueError(f"--dataset: {spec!r} is neither jsonl:PATH nor arith[:LEVEL]")
    if max_tokens is not None:
        requests = [BenchRequest(r.prompt, max_tokens) for r in requests]
    return requests


# ----------------------------------------------------------------------------- loads

@dataclass(frozen=True)
class Load:
    kind: str     # "rate" (Poisson arrivals, requests/s) or "concurrency" (closed loop)
    value: float  # math.inf for a rate: every request at once

    def label(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency {int(self.value)}"
        return "rate inf" if math.isinf(self.value) else f"rate {self.value:g}/s"

    def to_json(self):
        return {"kind": self.kind, "value": "inf" if math.isinf(self.value) else self.value}


def parse_loads(rates: Optional[str], concurrencies: Optional[str]) -> List[Load]:
    if rates and concurrencies:
        raise ValueError("give --request-rate or --concurrency, not both")
    if rates:
        values = [math.inf if r.strip() == "inf" else float(r) for r in rates.split(",")]
        if any(not v > 0 for v in values):
            raise ValueError("--request-rate: every rate must be > 0 (or inf)")
        return [Load("rate", v) for v in values]
    values = [int(c) for c in (concurrencies or "1").split(",")]
    if any(v < 1 for v in values):
        raise ValueError("--concurrency: every value must be >= 1")
    return [Load("concurrency", v) for v in values]


def poisson_schedule(n: int, rate: float, seed: int) -> List[float]:
    """Arrival times (s from the start) of n requests, exponential gaps of mean 1/rate; the
    first arrives at 0. An infinite rate sends all at 0."""
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=max(n - 1, 0))
    return [0.0] + np.cumsum(gaps).tolist()


# ----------------------------------------------------------------------------- one request

@dataclass
class Outcome:
    """What one request did. Times in seconds from its send."""
    ok: bool = False
    error: str = ""            # gRPC code, HTTP status or what went wrong; "" when ok
    sent: bool = True          # False: never sent (the run's time limit came first)
    start: float = 0.0         # send time, from the start of the run
    late: float = 0.0          # send time minus scheduled arrival (rate mode)
    ttft: Optional[float] = None
    e2e: float = 0.0
    itl: List[float] = field(default_factory=list)
    messages: int = 0          # messages (chunks) that carried tokens
    streamed_tokens: int = 0   # tokens counted from the messages (gRPC only)
    prompt_tokens: int = 0
    output_tokens: int = 0     # the server's usage count
    finish_reason: str = ""
    kv_blocks_read: int = 0
    kv_blocks_dense: int = 0
    attended_tokens: int = 0
    context_tokens: int = 0
    text: str = ""             # the output with its span markup (gRPC with --save-text only)


def token_timings(events: List[tuple], per_token: bool):
    """(TTFT, ITL list) from [(time, tokens)] of the messages that carried tokens, in order.
    per_token: a message of k tokens after a gap g gives k gaps of g/k; else one gap."""
    if not events:
        return None, []
    itl = []
    for (before, _), (now, tokens) in zip(events, events[1:]):
        gap = now - before
        itl += [gap / tokens] * tokens if per_token and tokens > 0 else [gap]
    return events[0][0], itl


def tpot(outcome: Outcome) -> Optional[float]:
    if outcome.ttft is None or outcome.output_tokens < 2:
        return None
    return (outcome.e2e - outcome.ttft) / (outcome.output_tokens - 1)


class GrpcBackend:
    itl_basis = "token"

    def __init__(self, host: str, port: int, api_key: str, timeout: float, build_dir: str,
                 save_text: bool = False):
        self.save_text = save_text  # ask for the span markup and keep the text
        sys.path.insert(0, os.path.join(build_dir, "python"))
        import grpc
        from spanserve.v1 import spanserve_pb2, spanserve_pb2_grpc
        self.grpc, self.pb = grpc, spanserve_pb2
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.stub = spanserve_pb2_grpc.SpanServeStub(self.channel)
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
        self.timeout = timeout

    def model_info(self) -> dict:
        from google.protobuf import json_format
        info = self.stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=self.timeout,
                                      metadata=self.metadata)
        return json_format.MessageToDict(info, preserving_proto_field_name=True)

    def generate(self, req: BenchRequest, mode: str, ignore_eos: bool) -> Outcome:
        pb = self.pb
        request = pb.GenerateRequest(prompt=req.prompt, max_tokens=req.max_tokens, temperature=0,
                                     span_mode=pb.SpanMode.Value("SPAN_MODE_" + mode.upper()),
                                     ignore_eos=ignore_eos, include_span_markup=self.save_text)
        out, events, last, texts = Outcome(), [], None, []
        t0 = time.perf_counter()
        try:
            for message in self.stub.GenerateStream(request, timeout=self.timeout,
                                                    metadata=self.metadata):
                now = time.perf_counter() - t0
                if message.token_ids:
                    events.append((now, len(message.token_ids)))
                    out.streamed_tokens += len(message.token_ids)
                if self.save_text:
                    texts.append(message.text)
                last = message
        except self.grpc.RpcError as err:
            out.error = err.code().name
        out.e2e = time.perf_counter() - t0
        out.text = "".join(texts)
        out.ttft, out.itl = token_timings(events, per_token=True)
        out.messages = len(events)
        if not out.error and (last is None or last.finish_reason == 0):
            out.error = "stream ended without a finish reason"
        if not out.error:
            out.ok = True
            out.finish_reason = pb.FinishReason.Name(last.finish_reason)
            out.prompt_tokens = last.usage.prompt_tokens
            out.output_tokens = last.usage.generated_tokens
            a = last.attention
            out.kv_blocks_read, out.kv_blocks_dense = a.kv_blocks_read, a.kv_blocks_dense
            out.attended_tokens, out.context_tokens = a.attended_tokens, a.context_tokens
        return out

    def close(self):
        self.channel.close()


def sse_data(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, one per event (multi-line data
    joined by newlines), until `data: [DONE]` or the end of the stream."""
    data: List[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                payload = "\n".join(data)
                data = []
                if payload == "[DONE]":
                    return
                yield payload
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
    if data and "\n".join(data) != "[DONE]":
        yield "\n".join(data)


def completion_outcome(chunks: List[tuple], e2e: float, error: str = "") -> Outcome:
    """The Outcome of a streamed /v1/completions from its [(time, chunk)]: a chunk whose choice
    has text is a message; the one with finish_reason carries the `spanserve` extension (beside
    its choices); the include_usage chunk the token counts."""
    out, events, finish, usage, extension = Outcome(error=error, e2e=e2e), [], None, None, {}
    for now, chunk in chunks:
        if chunk.get("error") and not out.error:  # an error event in the stream
            kind = chunk["error"].get("type") if isinstance(chunk["error"], dict) else None
            out.error = f"stream error: {kind or 'unknown'}"
        for choice in chunk.get("choices", []):
            if choice.get("text"):
                events.append((now, 1))
            if choice.get("finish_reason"):
                finish = choice
                extension = chunk.get("spanserve") or choice.get("spanserve") or {}
        usage = chunk.get("usage") or usage
    out.ttft, out.itl = token_timings(events, per_token=False)
    out.messages = len(events)
    if not out.error and (finish is None or usage is None):
        out.error = "stream ended without a finish reason and usage"
    if out.error:
        return out
    out.ok = True
    out.finish_reason = finish["finish_reason"]
    out.prompt_tokens = usage.get("prompt_tokens", 0)
    out.output_tokens = usage.get("completion_tokens", 0)
    a = extension.get("attention", {})
    out.kv_blocks_read = a.get("kv_blocks_read", 0)
    out.kv_blocks_dense = a.get("kv_blocks_dense", 0)
    out.attended_tokens = a.get("attended_tokens", 0)
    out.context_tokens = a.get("context_tokens", 0)
    return out


class HttpBackend:
    """The OpenAI-compatible API: POST /v1/completions, stream with include_usage."""
    itl_basis = "message"

    def __init__(self, host: str, port: int, api_key: str, timeout: float, model: str):
        self.host, self.port, self.timeout, self.model = host, port, timeout, model
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _get(self, path: str) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers=self.headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            conn.close()

    def model_info(self) -> dict:
        models = self._get("/v1/models")
        if not self.model and models.get("data"):
            self.model = models["data"][0]["id"]
        return {"models": models.get("data", [])}

    def generate(self, req: BenchRequest, mode: str, ignore_eos: bool) -> Outcome:
        body = {"prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True},
                "span_mode": mode, "ignore_eos": ignore_eos}
        if self.model:
            body["model"] = self.model
        chunks, error = [], ""
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers=self.headers)
            response = conn.getresponse()
            if response.status != 200:
                error = f"HTTP {response.status}"
                response.read()
            else:
                for payload in sse_data(response):
                    chunks.append((time.perf_counter() - t0, json.loads(payload)))
                    if chunks[-1][0] > self.timeout:
                        error = "timeout"
                        break
        except (OSError, http.client.HTTPException, ValueError) as err:
            error = type(err).__name__
        finally:
            conn.close()
        return completion_outcome(chunks, time.perf_counter() - t0, error)

    def close(self):
        pass


# ----------------------------------------------------------------------------- statistics

def distribution(values: List[float], scale: float = 1000.0) -> dict:
    """mean, p50, p90, p99, min, max of values (times scale: seconds to ms), n; None when empty."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None,
                "min": None, "max": None}
    a = np.asarray(values, dtype=float) * scale
    p50, p90, p99 = np.percentile(a, [50, 90, 99]).tolist()
    return {"n": len(values), "mean": float(a.mean()), "p50": p50, "p90": p90, "p99": p99,
            "min": float(a.min()), "max": float(a.max())}


def count_by(items: Iterable[str]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def summarize(outcomes: List[Outcome], duration: float) -> dict:
    """One run's figures. Latencies, tokens and the saving come from completed requests only;
    failures are counted by error."""
    done = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if o.sent and not o.ok]
    output_tokens = sum(o.output_tokens for o in done)
    read = sum(o.kv_blocks_read for o in done)
    dense = sum(o.kv_blocks_dense for o in done)
    attended = sum(o.attended_tokens for o in done)
    context = sum(o.context_tokens for o in done)
    return {
        "requests": len(outcomes),
        "completed": len(done),
        "failed": len(failed),
        "not_sent": sum(not o.sent for o in outcomes),
        "errors": count_by(o.error for o in failed),
        "finish_reasons": count_by(o.finish_reason for o in done),
        "duration_s": duration,
        "request_throughput": len(done) / duration if duration > 0 else 0.0,
        "output_throughput": output_tokens / duration if duration > 0 else 0.0,
        "total_prompt_tokens": sum(o.prompt_tokens for o in done),
        "total_output_tokens": output_tokens,
        "ttft_ms": distribution([o.ttft for o in done if o.ttft is not None]),
        "tpot_ms": distribution([t for t in map(tpot, done) if t is not None]),
        "itl_ms": distribution([g for o in done for g in o.itl]),
        "e2e_ms": distribution([o.e2e for o in done]),
        "late_starts": sum(o.late > 0.1 for o in outcomes if o.sent),
        "attention": {
            "kv_blocks_read": read, "kv_blocks_dense": dense,
            "saved_fraction": 1 - read / dense if dense else 0.0,
            "attended_tokens": attended, "context_tokens": context,
            "attended_fraction": attended / context if context else 1.0,
        },
    }


def compare(runs: List[dict]) -> List[dict]:
    """Side by side: one row per load, the modes' headline figures, and each other mode's
    throughput and p99 latency as a ratio of the first mode's."""
    rows: Dict[str, dict] = {}
    for run in runs:
        row = rows.setdefault(json.dumps(run["load"], sort_keys=True),
                              {"load": run["load"], "modes": {}})
        s = run["summary"]
        row["modes"][run["mode"]] = {
            "completed": s["completed"], "failed": s["failed"],
            "request_throughput": s["request_throughput"],
            "output_throughput": s["output_throughput"],
            "ttft_p99_ms": s["ttft_ms"]["p99"], "itl_p99_ms": s["itl_ms"]["p99"],
            "e2e_p99_ms": s["e2e_ms"]["p99"],
            "saved_fraction": s["attention"]["saved_fraction"]}
    for row in rows.values():
        modes = list(row["modes"].items())
        if len(modes) < 2:
            continue
        first_name, first = modes[0]
        row["ratios"] = {}
        for name, other in modes[1:]:
            def ratio(key):
                a, b = first[key], other[key]
                return a / b if a is not None and b else None
            row["ratios"][f"{first_name}/{name}"] = {
                "output_throughput": ratio("output_throughput"),
                "e2e_p99_ms": ratio("e2e_p99_ms"), "itl_p99_ms": ratio("itl_p99_ms")}
    return list(rows.values())


def parse_metrics(text: str) -> Dict[str, float]:
    """Samples of a Prometheus text exposition: `name{labels}` -> value."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


# The server's counters a run moves; deltas go in the JSON next to the client's figures.
SERVER_COUNTERS = ("spanserve_generated_tokens_total", "spanserve_prompt_tokens_total",
                   "spanserve_kv_blocks_read_total", "spanserve_kv_blocks_dense_total",
                   "spanserve_preemptions_total", "spanserve_span_header_fallbacks_total",
                   "spanserve_time_to_first_token_seconds_count",
                   *(f'spanserve_step_duration_seconds_{part}{{phase="{phase}"}}'
                     for phase in ("decode", "prefill") for part in ("sum", "count")),
                   "spanserve_batch_size_sum")


def metric_deltas(before: Dict[str, float], after: Dict[str, float]) -> dict:
    """The SERVER_COUNTERS' increases, and spanserve_requests_total's as {"rpc code": n}."""
    deltas = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in SERVER_COUNTERS}
    pattern = re.compile(r'^spanserve_requests_total\{rpc="([^"]+)",code="([^"]+)"\}$')
    requests = {}
    for key in sorted(set(before) | set(after)):
        match = pattern.match(key)
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if match and delta:
            requests[f"{match.group(1)} {match.group(2)}"] = delta
    deltas["requests"] = requests
    return deltas


# ----------------------------------------------------------------------------- running

class Progress:
    """Counts finished requests of a run; a thread prints a line to stderr every interval s."""

    def __init__(self, label: str, total: int, interval: float):
        self.label, self.total, self.interval = label, total, interval
        self.done = self.failed = 0
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        if interval > 0:
            self.thread.start()

    def add(self, outcome: Outcome):
        with self.lock:
            self.done += 1
            self.failed += not outcome.ok

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        with self.lock:
            done, failed = self.done, self.failed
        rate = done / elapsed if elapsed > 0 else 0.0
        return (f"serve_bench: [{self.label}] {done}/{self.total} done ({failed} failed), "
                f"{rate:.2f} req/s, {elapsed:.1f} s")

    def _loop(self):
        while not self.stop_event.wait(self.interval):
            print(self.line(), file=sys.stderr, flush=True)

    def close(self):
        self.stop_event.set()
        print(self.line(), file=sys.stderr, flush=True)


def send_all(backend, requests: List[BenchRequest], arrivals: List[float], workers: int,
             start: float, mode: str, args, on_done) -> List[Outcome]:
    """Sends requests[i] at start + arrivals[i] (time.monotonic), at most `workers` in flight;
    nothing after start + args.time_limit. Returns the outcomes in request order."""
    deadline = start + args.time_limit

    def one(i: int) -> Outcome:
        sent_at = time.monotonic()
        if sent_at > deadline:
            return Outcome(sent=False, error="not sent: time limit")
        outcome = backend.generate(requests[i], mode, args.ignore_eos)
        outcome.start = sent_at - start
        outcome.late = outcome.start - arrivals[i]
        on_done(outcome)
        return outcome

    futures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        for i in range(len(requests)):
            wait = start + arrivals[i] - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
            futures.append(pool.submit(one, i))
        return [f.result() for f in futures]


def load_plan(n: int, load: Load, args) -> tuple:
    """(arrival offsets, most requests in flight) of a run."""
    workers = int(load.value) if load.kind == "concurrency" else args.max_concurrency
    arrivals = poisson_schedule(n, load.value, args.seed) if load.kind == "rate" else [0.0] * n
    return arrivals, workers


def run_result(outcomes: List[Outcome], load: Load) -> tuple:
    """(outcomes, duration) of a finished run; lateness counts only against a rate's schedule."""
    if load.kind != "rate":
        for o in outcomes:
            o.late = 0.0
    return outcomes, max((o.start + o.e2e for o in outcomes if o.sent), default=0.0)


def run_load(backend, requests: List[BenchRequest], mode: str, load: Load, args,
             progress: Progress) -> tuple:
    """Sends every request once under the load; returns (outcomes in request order, duration).
    Nothing is sent after args.time_limit seconds; each request has args.request_timeout."""
    arrivals, workers = load_plan(len(requests), load, args)
    outcomes = send_all(backend, requests, arrivals, workers, time.monotonic(), mode, args,
                        progress.add)
    return run_result(outcomes, load)


# One Python process streams about 20k gRPC messages/s at most (the GIL: each message is
# ~50 us of interpreter time); a server that generates faster would be measured at the
# client's speed. ClientProcesses spreads a run over processes, each with its own channel.
_child_backend = None
_child_done = None


def _child_init(make_backend, done_queue, ready):
    global _child_backend, _child_done
    _child_backend, _child_done = make_backend(), done_queue
    ready.wait()  # every process up before the first run, so that they start together


def _child_send(task: tuple) -> List[Outcome]:
    requests, arrivals, workers, start, mode, args = task
    done = lambda o: _child_done.put(o.ok)
    return send_all(_child_backend, requests, arrivals, workers, start, mode, args, done)


class ClientProcesses:
    """N spawned processes, each building its backend with make_backend() (picklable: a
    module-level class, or functools.partial of one), that share each run: request i goes to
    process i % N, the run's concurrency is divided among them, and all start at one instant."""

    def __init__(self, make_backend, n: int):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        self.n, self.done, ready = n, ctx.Queue(), ctx.Barrier(n + 1)
        self.pool = ctx.Pool(n, initializer=_child_init,
                             initargs=(make_backend, self.done, ready))
        ready.wait(timeout=120)

    def run_load(self, requests: List[BenchRequest], mode: str, load: Load, args,
                 progress: Progress) -> tuple:
        arrivals, workers = load_plan(len(requests), load, args)
        start = time.monotonic() + 0.2  # time to hand out the tasks
        tasks = []
        for p in range(self.n):
            part = list(range(p, len(requests), self.n))
            share = workers // self.n + (p < workers % self.n)
            tasks.append(([requests[i] for i in part], [arrivals[i] for i in part], share,
                          start, mode, args))
        pending = self.pool.map_async(_child_send, tasks)
        while not pending.ready():  # forward the children's finishes to the progress line
            self._drain(progress, timeout=0.2)
        self._drain(progress, timeout=0)
        outcomes: List[Optional[Outcome]] = [None] * len(requests)
        for p, part_outcomes in enumerate(pending.get()):
            for i, o in zip(range(p, len(requests), self.n), part_outcomes):
                outcomes[i] = o
        return run_result(outcomes, load)

    def _drain(self, progress: Progress, timeout: float):
        import queue
        try:
            while True:
                ok = self.done.get(timeout=timeout) if timeout else self.done.get_nowait()
                progress.add(Outcome(ok=ok))
                timeout = 0
        except queue.Empty:
            pass

    def close(self):
        self.pool.close()
        self.pool.join()


def scrape(host: str, port: Optional[int], api_key: str) -> Optional[Dict[str, float]]:
    """The server's /metrics (with the key, for servers that protect it); None without a port."""
    if not port:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers)
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_metrics(response.read().decode())


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except OSError:
        return ""


def benchmark(args, backend, requests: List[BenchRequest], clients=None) -> dict:
    """clients: a ClientProcesses to send the measured runs from (warm-up and model info go
    through backend)."""
    modes = [m.strip() for m in args.span_modes.split(",")]
    loads = parse_loads(args.request_rate, args.concurrency)
    server = backend.model_info()
    for mode in modes:
        for i in range(args.warmup):
            warm = backend.generate(requests[i % len(requests)], mode, args.ignore_eos)
            if not warm.ok:
                print(f"serve_bench: warm-up request failed ({mode}): {warm.error}",
                      file=sys.stderr)
    runs = []
    for load in loads:
        for mode in modes:
            progress = Progress(f"{mode}, {load.label()}", len(requests), args.progress_interval)
            before = scrape(args.host, args.metrics_port, args.api_key)
            outcomes, duration = (clients.run_load(requests, mode, load, args, progress)
                                  if clients else
                                  run_load(backend, requests, mode, load, args, progress))
            progress.close()
            run = {"mode": mode, "load": load.to_json(), "summary": summarize(outcomes, duration)}
            if before is not None:
                time.sleep(0.5)  # the engine counts a finish just after the client's answer
                after = scrape(args.host, args.metrics_port, args.api_key)
                run["server_metrics"] = metric_deltas(before, after)
            if args.save_requests:
                run["requests"] = [dataclasses.asdict(o) for o in outcomes]
            runs.append(run)
    return {
        "benchmark": "spanserve serve_bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(sys.argv),
        "config": {"backend": args.backend, "host": args.host, "port": args.port,
                   "dataset": args.dataset, "num_prompts": len(requests), "seed": args.seed,
                   "span_modes": modes, "loads": [load.to_json() for load in loads],
                   "ignore_eos": args.ignore_eos, "max_concurrency": args.max_concurrency,
                   "warmup": args.warmup, "itl_basis": backend.itl_basis,
                   "client_processes": clients.n if clients else 1,
                   "mean_max_tokens": sum(r.max_tokens for r in requests) / len(requests)},
        "server": server,
        "runs": runs,
        "comparison": compare(runs),
    }


# ----------------------------------------------------------------------------- output

def load_axis(load: dict) -> float:
    return math.inf if load["value"] == "inf" else float(load["value"])


def plot(result: dict, path: str):
    """Output tokens/s, p99 end-to-end latency and TTFT, and p99 ITL and TPOT against the load,
    one colour per mode. An infinite rate is drawn at twice the largest finite one; a load
    axis spanning more than 4x is logarithmic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    loads = [load_axis(r["load"]) for r in result["runs"]]
    finite = [x for x in loads if not math.isinf(x)]
    inf_at = 2 * max(finite) if finite else 1.0
    xs_all = sorted({inf_at if math.isinf(x) else x for x in loads})
    kind = result["runs"][0]["load"]["kind"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [(axes[0], "output tokens/s", "throughput",
               [("output_throughput", None, "o-", "")]),
              (axes[1], "p99 latency (ms)", "p99 end to end and TTFT",
               [("e2e_ms", "p99", "o-", " end to end"), ("ttft_ms", "p99", "s--", " TTFT")]),
              (axes[2], "p99 per token (ms)", "p99 ITL and TPOT",
               [("itl_ms", "p99", "o-", " ITL"), ("tpot_ms", "p99", "s--", " TPOT")])]
    for mode, color in zip(result["config"]["span_modes"], ("tab:blue", "tab:orange", "tab:green")):
        runs = sorted((r for r in result["runs"] if r["mode"] == mode),
                      key=lambda r: load_axis(r["load"]))
        xs = [inf_at if math.isinf(load_axis(r["load"])) else load_axis(r["load"]) for r in runs]
        saved = runs[-1]["summary"]["attention"]["saved_fraction"] if runs else 0.0
        for ax, _, _, series in panels:
            for key, stat, style, suffix in series:
                ys = [r["summary"][key] if stat is None else r["summary"][key][stat]
                      for r in runs]
                label = mode + (suffix or f" (KV saved {100 * saved:.0f}%)")
                ax.plot(xs, [math.nan if y is None else y for y in ys], style, color=color,
                        label=label)
    xlabel = "concurrency (requests in flight)" if kind == "concurrency" else \
        "request rate (requests/s, Poisson)"
    for ax, ylabel, title, _ in panels:
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if xs_all[-1] > 4 * xs_all[0]:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.set_xticklabels(["inf" if x == inf_at and len(finite) < len(loads) else f"{x:g}"
                            for x in xs_all])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(bottom=0)
    name = result["server"].get("name") or result["config"]["dataset"]
    config = result["config"]
    fig.suptitle(f"spanserve {name}: {config['dataset']}, {config['num_prompts']} prompts per "
                 f"run, {config['backend']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict) -> str:
    """The runs side by side, one line per load and mode."""
    header = (f"{'load':<16} {'mode':<14} {'ok':>5} {'fail':>4} {'req/s':>7} {'tok/s':>8} "
              f"{'ttft p50/p99 ms':>17} {'tpot p50 ms':>11} {'itl p50/p99 ms':>15} "
              f"{'e2e p50/p99 ms':>17} {'KV saved':>8}")
    lines = [header]
    for run in result["runs"]:
        s = run["summary"]
        lines.append(
            f"{Load(run['load']['kind'], load_axis(run['load'])).label():<16} {run['mode']:<14} "
            f"{s['completed']:>5} {s['failed']:>4} {s['request_throughput']:>7.2f} "
            f"{s['output_throughput']:>8.1f} "
            f"{fmt(s['ttft_ms']['p50']) + '/' + fmt(s['ttft_ms']['p99']):>17} "
            f"{fmt(s['tpot_ms']['p50'], 2):>11} "
            f"{fmt(s['itl_ms']['p50'], 2) + '/' + fmt(s['itl_ms']['p99'], 2):>15} "
            f"{fmt(s['e2e_ms']['p50']) + '/' + fmt(s['e2e_ms']['p99']):>17} "
            f"{100 * s['attention']['saved_fraction']:>7.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("grpc", "http"), default="grpc")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="gRPC or HTTP port (default 50051 / 8080)")
    p.add_argument("--metrics-port", type=int,
                   help="the server's /metrics port: each run's counter deltas go in the JSON")
    p.add_argument("--api-key", default=os.environ.get("SPANSERVE_API_KEY", ""),
                   help="sent as authorization: Bearer (default $SPANSERVE_API_KEY)")
    p.add_argument("--model", default="", help="HTTP: the model field (default: /v1/models)")
    p.add_argument("--dataset", default="arith", help="jsonl:PATH, arith, arith:l1 or arith:l2")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--max-tokens", type=int, help="every request's max_tokens (default: the "
                   "record's, 128 for JSONL records without one, the answer's bound for arith)")
    p.add_argument("--ignore-eos", action="store_true", help="generate max_tokens every time")
    p.add_argument("--seed", type=int, default=0, help="prompts and arrival times")
    p.add_argument("--concurrency", help="closed loop: N[,N2,...] requests in flight")
    p.add_argument("--request-rate", help="Poisson arrivals: R[,R2,...] requests/s (or inf)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="rate mode: most requests in flight")
    p.add_argument("--span-modes", default=",".join(SPAN_MODES))
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests per mode first")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="seconds per run after which nothing more is sent")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds; 0: quiet")
    p.add_argument("--build-dir", default=os.environ.get("SPANSERVE_BUILD_DIR",
                                                         os.path.join(REPO, "build")))
    p.add_argument("--client-processes", type=int, default=1,
                   help="send each run from N processes (one Python process streams ~20k "
                        "gRPC messages/s at most; use more for servers faster than that)")
    p.add_argument("--out", help="JSON results")
    p.add_argument("--plot", help="PNG plot")
    p.add_argument("--save-requests", action="store_true", help="every request in the JSON")
    p.add_argument("--save-text", action="store_true",
                   help="gRPC: ask for the span markup and keep each output's text (with "
                        "--save-requests, in request order: for scoring the outputs)")
    args = p.parse_args(argv)
    try:
        parse_loads(args.request_rate, args.concurrency)
        bad = [m for m in args.span_modes.split(",") if m.strip() not in SPAN_MODES]
        if bad:
            raise ValueError(f"--span-modes: unknown mode {bad[0]!r} ({', '.join(SPAN_MODES)})")
        if args.num_prompts < 1:
            raise ValueError("--num-prompts must be >= 1")
        if args.client_processes < 1:
            raise ValueError("--client-processes must be >= 1")
        requests = load_dataset(args.dataset, args.num_prompts, args.seed, args.max_tokens)
    except (ValueError, OSError) as err:
        p.error(str(err))
    if args.port is None:
        args.port = 50051 if args.backend == "grpc" else 8080
    build_dir = os.path.abspath(args.build_dir)
    make_backend = (functools.partial(GrpcBackend, args.host, args.port, args.api_key,
                                      args.request_timeout, build_dir, args.save_text)
                    if args.backend == "grpc" else
                    functools.partial(HttpBackend, args.host, args.port, args.api_key,
                                      args.request_timeout, args.model))
    backend = make_backend()
    clients = ClientProcesses(make_backend, args.client_processes) if args.client_processes > 1 else None
    try:
        result = benchmark(args, backend, requests, clients)
    finally:
        backend.close()
        if clients:
            clients.close()
    print(table(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if args.plot:
        plot(result, args.plot)
    failed = sum(r["summary"]["failed"] + r["summary"]["not_sent"] for r in result["runs"])
    if failed:
        print(f"serve_bench: {failed} requests failed or were not sent", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
