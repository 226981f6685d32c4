"""Soak (issue 21, part 6): a bounded load on one server whose KV pool is small enough to force
preemption. Client threads send unary and streaming requests, greedy and seeded, self-selected
and dense, for ISSUE_SECONDS; some cancel (mid-stream, or a unary call while it waits or runs),
some carry deadlines short enough to expire, and one stream is left unread for the whole soak.
Every request that completes gives exactly its output alone (computed first, one at a time, on
the same server), every cut one a prefix of it; at the end no block is used, nothing runs or
waits, and the server finished no request with an error. Bounded: issuing stops after
ISSUE_SECONDS and every wait has a deadline (about 75 s in all on 2 cores); loopback only."""
import random
import re
import threading
import time

import grpc

from server_harness import pb, pb_grpc, request, wait_for

THREADS = 10
ISSUE_SECONDS = 60        # no new request after this; what runs then is finished
MIN_REQUESTS = 600        # a loaded 2-core machine still issues this many (about 2500 idle)
POOL_BLOCKS = 16          # 256 tokens of KV cache: 10 clients at once need about 4 times that

KINDS = ["unary", "stream", "cancel", "unary_cancel", "unary_deadline", "stream_deadline"]
# The smallest receive window: a client that does not read blocks the server's writes to it.
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]


def templates():
    """Varied requests that each fit the pool alone: prompts of 5 to ~80 tokens, outputs of 16
    to 64, greedy and seeded, self-selected and dense."""
    out = []
    for i in range(16):
        prompt = f"({i * 37 % 100}+{i})*{i % 7}=" + " the cat sat on a mat." * (i % 4)
        fields = {"prompt": prompt, "max_tokens": 16 + (i * 13) % 49, "ignore_eos": True}
        if i % 2:
            fields.update(temperature=0.9, top_p=0.95, top_k=50, seed=1000 + i)
        if i % 5 == 4:
            fields["span_mode"] = pb.SPAN_MODE_DENSE
        out.append(request(**fields))
    return out


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {k: 0 for k in ("requests", "completed", "cancels", "deadline_hits")}
        self.failures = []

    def add(self, key):
        with self.lock:
            self.counts[key] += 1

    def fail(self, what):
        with self.lock:
            self.failures.append(what)


def run_unary(stub, kind, req, ref, rng, tally):
    timeout = rng.uniform(0.02, 0.4) if kind == "unary_deadline" else 60
    future = stub.Generate.future(req, timeout=timeout)
    if kind == "unary_cancel":
        time.sleep(rng.uniform(0.0, 0.3))  # cancelled while waiting, running or done
        if future.cancel():
            tally.add("cancels")
            return
    try:
        response = future.result()
    except grpc.RpcError as error:
        if kind == "unary_deadline" and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.add("deadline_hits")
            return
        return tally.fail(f"{kind}: {error.code()} {error.details()}")
    if list(response.token_ids) != ref:
        return tally.fail(f"{kind}: tokens differ from alone for {req.prompt!r}")
    tally.add("completed")


def run_stream(stub, kind, req, ref, rng, tally):
    timeout = rng.uniform(0.02, 0.4) if kind == "stream_deadline" else 60
    cancel_after = rng.randint(1, 12) if kind == "cancel" else None
    call = stub.GenerateStream(req, timeout=timeout)
    tokens, last = [], None
    try:
        for message in call:
            tokens += message.token_ids
            last = message
            if cancel_after is not None and len(tokens) >= cancel_after:
                call.cancel()
                tally.add("cancels")
                break
    except grpc.RpcError as error:
        if kind == "stream_deadline" and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.add("deadline_hits")
        else:
            return tally.fail(f"{kind}: {error.code()} {error.details()}")
    if tokens != ref[:len(tokens)]:
        return tally.fail(f"{kind}: streamed tokens are not a prefix of alone for {req.prompt!r}")
    if last is not None and last.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
        if tokens != ref or last.finish_reason != pb.FINISH_REASON_LENGTH:
            return tally.fail(f"{kind}: a finished stream differs from alone for {req.prompt!r}")
        tally.add("completed")


def run_one(stub, kind, req, ref, rng, tally):
    """One request of the given kind; checks what came back against ref (its tokens alone)."""
    tally.add("requests")
    if kind.startswith("unary"):
        run_unary(stub, kind, req, ref, rng, tally)
    else:
        run_stream(stub, kind, req, ref, rng, tally)


def samples(scrape, name):
    """{labels text: value} of every sample of a metric in a scrape."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^" + re.escape(name) + r"\{([^}]*)\} (\S+)$", scrape, re.M)}


def test_soak_with_preemption_cancels_and_deadlines(start_server):
    server = start_server({"kv_cache.num_blocks": POOL_BLOCKS, "scheduler.max_batched_tokens": 64,
                           "debug.step_delay_ms": 2})
    stub = server.stub()
    reqs = templates()
    refs = [list(stub.Generate(r, timeout=60).token_ids) for r in reqs]  # alone, in turn
    assert all(len(ref) == r.max_tokens for ref, r in zip(refs, reqs))
    assert server.metric("spanserve_preemptions_total") == 0

    tally = Tally()
    start = time.monotonic()

    def client(index):
        rng = random.Random(index)
        while time.monotonic() - start < ISSUE_SECONDS:
            i = rng.randrange(len(reqs))
            try:
                run_one(stub, rng.choice(KINDS), reqs[i], refs[i], rng, tally)
            except Exception as e:  # reported below
                tally.fail(f"client {index}: {e!r}")

    with grpc.insecure_channel(server.address, options=SMALL_WINDOW) as stall_channel:
        # Left unread for the whole soak: its generation finishes, its writes wait for it.
        unread = pb_grpc.SpanServeStub(stall_channel).GenerateStream(reqs[-1], timeout=120)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        join_deadline = start + ISSUE_SECONDS + 60
        for t in threads:
            t.join(max(0.0, join_deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a client hung"
        unread_tokens = [t for m in unread for t in m.token_ids]

    def idle():
        return (server.metric("spanserve_kv_blocks_used") == 0
                and server.metric("spanserve_requests_running") == 0
                and server.metric("spanserve_requests_waiting") == 0)
    wait_for(idle, 15, what="no block used, nothing running or waiting")
    seconds = time.monotonic() - start
    scrape = server.scrape()
    codes = samples(scrape, "spanserve_requests_total")
    reasons = samples(scrape, "spanserve_generations_finished_total")
    preemptions = server.metric("spanserve_preemptions_total")
    c = tally.counts
    print(f"\nsoak: {c['requests']} requests ({c['completed']} completed, {c['cancels']} "
          f"cancelled, {c['deadline_hits']} deadline hits), {preemptions:.0f} preemptions, "
          f"{server.metric('spanserve_generated_tokens_total'):.0f} tokens, {seconds:.1f} s; "
          f"server codes {codes}")
    assert not tally.failures, tally.failures[:10]
    assert unread_tokens == refs[-1]
    assert c["requests"] >= MIN_REQUESTS
    assert c["completed"] > c["requests"] // 4  # 2 kinds of 6 always complete
    assert c["cancels"] > 0 and c["deadline_hits"] > 0
    assert preemptions > 0
    # The server saw the cancels and the deadlines, and ended nothing any other way.
    for code in ("OK", "CANCELLED", "DEADLINE_EXCEEDED"):
        assert any(f'code="{code}"' in labels and v > 0 for labels, v in codes.items()), code
    other = {labels: v for labels, v in codes.items()
             if not re.search(r'code="(OK|CANCELLED|DEADLINE_EXCEEDED)"', labels) and v > 0}
    assert not other, other
    assert reasons.get('reason="cancelled"', 0) > 0
    assert reasons.get('reason="error"', 0) == 0
