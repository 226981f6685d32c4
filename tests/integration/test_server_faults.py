"""Faults against the real server (issue 21, part 5): a step the CPU backend fails (the
fault-injection hook of test builds, config debug.fail_steps) fails the requests in it with
INTERNAL and a message, and every other request (queued during it, or arriving after it) gives
exactly its output alone; a client that stops reading its stream stalls nobody else; a prompt
longer than the whole KV pool is refused at once, and one that fills the pool alone still
finishes among others."""
import threading
import time

import grpc
import pytest

from server_harness import pb, pb_grpc, request, wait_for


def idle(server):
    return (server.metric("spanserve_kv_blocks_used") == 0
            and server.metric("spanserve_requests_running") == 0
            and server.metric("spanserve_requests_waiting") == 0)


def run_in_thread(fn, *args):
    """Starts fn(*args) on a thread; returns (thread, box): box["value"] or box["error"]."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except Exception as e:  # checked by the caller
            box["error"] = e
    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def stream_until_error(stub, req, timeout=60):
    """Runs GenerateStream; returns (tokens received, the RpcError or None)."""
    tokens = []
    try:
        for message in stub.GenerateStream(req, timeout=timeout):
            tokens += message.token_ids
    except grpc.RpcError as error:
        return tokens, error
    return tokens, None


# ---- A failed step ----

def test_failed_step_fails_its_requests_and_no_other(server, start_server):
    """At most 2 running, 150 ms a step: A streams from step 1, B joins at step 2 or 3 (steps
    4-7 leave room for a loaded machine), so step 8 holds both and fails; C waits in the queue
    meanwhile; D and E come after."""
    reqs = {
        "A": request(prompt="(12+34)*5=", max_tokens=40, ignore_eos=True),
        "B": request(prompt="7*(8-9)+10=", max_tokens=40, ignore_eos=True, temperature=0.9,
                     top_p=0.95, seed=77),
        "C": request(prompt="the cat sat. 1+1=", max_tokens=12, ignore_eos=True,
                     temperature=1.0, seed=5),
        "D": request(prompt="99-98=", max_tokens=16, ignore_eos=True),
        "E": request(prompt="(1+2)*(3+4)=", max_tokens=20, ignore_eos=True, temperature=0.8,
                     seed=9),
    }
    alone = {name: list(server.stub().Generate(r, timeout=60).token_ids)
             for name, r in reqs.items()}

    faulty = start_server({"debug.fail_steps": [8], "debug.step_delay_ms": 150,
                           "scheduler.max_running": 2})
    stub = faulty.stub()
    stream_a = stub.GenerateStream(reqs["A"], timeout=60)
    first = next(stream_a)  # step 1 done: A runs
    thread_b, box_b = run_in_thread(lambda: stub.Generate(reqs["B"], timeout=60))
    wait_for(lambda: faulty.metric("spanserve_requests_running")
             + faulty.metric("spanserve_requests_waiting") >= 2, 10, what="B to arrive")
    thread_c, box_c = run_in_thread(stream_until_error, stub, reqs["C"])

    tokens_a = list(first.token_ids)
    with pytest.raises(grpc.RpcError) as error_a:
        for message in stream_a:
            tokens_a += message.token_ids
    thread_b.join(60)
    thread_c.join(60)
    message = "generation failed: injected fault at step 8"
    assert error_a.value.code() == grpc.StatusCode.INTERNAL
    assert error_a.value.details() == message
    assert tokens_a == alone["A"][:7]  # steps 1-7 gave their tokens, then the error
    assert isinstance(box_b.get("error"), grpc.RpcError), box_b
    assert box_b["error"].code() == grpc.StatusCode.INTERNAL
    assert box_b["error"].details() == message
    tokens_c, error_c = box_c["value"]
    assert error_c is None and tokens_c == alone["C"]

    # After the failure: as alone, streamed or not.
    assert list(stub.Generate(reqs["D"], timeout=60).token_ids) == alone["D"]
    assert stream_until_error(stub, reqs["E"]) == (alone["E"], None)

    wait_for(lambda: idle(faulty), 10, what="the pool to be all free")
    assert faulty.metric("spanserve_requests_total",
                         {"rpc": "GenerateStream", "code": "INTERNAL"}) == 1
    assert faulty.metric("spanserve_requests_total", {"rpc": "Generate", "code": "INTERNAL"}) == 1
    assert faulty.metric("spanserve_generations_finished_total", {"reason": "error"}) == 2
    assert faulty.metric("spanserve_generations_finished_total", {"reason": "length"}) == 3
    assert "injected fault at step 8" in faulty.log()  # request_failed lines


# ---- A client that stops reading ----

# The smallest receive window: a client that does not read blocks the server's writes to it
# after its first message (gRPC's default window, 64 KiB and growing, would take every token of
# a generation of this model).
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]


def test_client_that_stops_reading_stalls_no_one(start_server):
    server = start_server({"debug.step_delay_ms": 20})
    others = [request(prompt=f"({i}+{i * 7})*3=", max_tokens=40, ignore_eos=True,
                      temperature=1.0, seed=i) for i in range(3)]
    alone, alone_seconds = [], []
    for r in others:
        start = time.monotonic()
        alone.append(list(server.stub().Generate(r, timeout=60).token_ids))
        alone_seconds.append(time.monotonic() - start)
    stalled_req = request(prompt="1+2=", max_tokens=150, ignore_eos=True, seed=3,
                          temperature=1.0)
    stalled_alone = list(server.stub().Generate(stalled_req, timeout=60).token_ids)

    # Two clients that stop reading: one is cancelled, one reads again later.
    with grpc.insecure_channel(server.address, options=SMALL_WINDOW) as stall_channel:
        stall_stub = pb_grpc.SpanServeStub(stall_channel)
        cancelled = stall_stub.GenerateStream(
            request(prompt="3*4=", max_tokens=900, ignore_eos=True), timeout=120)
        resumed = stall_stub.GenerateStream(stalled_req, timeout=120)
        wait_for(lambda: server.metric("spanserve_requests_running") == 2, 10,
                 what="the stalled streams to run")
        time.sleep(0.5)  # their windows fill

        results = [run_in_thread(lambda r=r: (time.monotonic(),
                                              server.stub().Generate(r, timeout=60),
                                              time.monotonic()))
                   for r in others]
        for i, (thread, box) in enumerate(results):
            thread.join(60)
            assert "value" in box, box
            start, response, end = box["value"]
            assert list(response.token_ids) == alone[i]
            # Liveness, not speed: far from stalled, with room for a loaded machine.
            assert end - start < 4 * alone_seconds[i] + 5, (end - start, alone_seconds[i])

        # The engine finishes the other stalled one without waiting for its reader; read now,
        # it gets every token, in a few messages: the server grouped what it could not write.
        wait_for(lambda: server.metric("spanserve_requests_running") == 1, 30,
                 what="the resumed stream's generation to finish unread")
        messages = list(resumed)
        tokens = [t for m in messages for t in m.token_ids]
        assert tokens == stalled_alone
        assert messages[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert len(messages) < len(tokens) / 10, (len(messages), len(tokens))

        # The other is still generating (900 tokens at 20 ms take 18 s) until cancelled.
        assert server.metric("spanserve_requests_running") == 1
        assert server.metric("spanserve_kv_blocks_used") > 0
        cancelled.cancel()
        wait_for(lambda: idle(server), 5, what="the cancelled stream's blocks to be freed")
    assert server.metric("spanserve_generated_tokens_total") < 2 * 900


# ---- Prompts against the whole KV pool ----

def long_prompt(min_chars):
    return ("12+34*" * (min_chars // 6 + 1))[:min_chars] + "="


def test_prompt_longer_than_the_pool_is_refused_at_once(start_server):
    server = start_server({"kv_cache.num_blocks": 4})  # 64 tokens of cache, context 1024
    stub = server.stub()
    for fields in ({}, {"max_tokens": 1}):
        for call in (lambda r: stub.Generate(r, timeout=30),
                     lambda r: list(stub.GenerateStream(r, timeout=30))):
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                call(request(prompt=long_prompt(200), **fields))
            assert time.monotonic() - start < 5
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details().startswith("prompt: "), error.value.details()
            assert "KV cache of 64 tokens" in error.value.details()
    assert idle(server)


def test_prompt_that_fills_the_pool_alone_finishes_among_others(start_server):
    """A pool of 4 blocks; the big request's prompt takes 3 of them and its default max_tokens
    the rest, so it grows while others hold blocks: they are preempted, and all finish."""
    server = start_server({"kv_cache.num_blocks": 4, "debug.step_delay_ms": 10})
    stub = server.stub()
    big = request(prompt=long_prompt(36), ignore_eos=True)
    others = [request(prompt=f"{i}*{i}=", max_tokens=20, ignore_eos=True, seed=i,
                      temperature=1.0) for i in range(4)]
    big_alone = stub.Generate(big, timeout=60)
    assert 32 < big_alone.usage.prompt_tokens <= 48
    assert big_alone.usage.prompt_tokens + big_alone.usage.generated_tokens == 64
    others_alone = [list(stub.Generate(r, timeout=60).token_ids) for r in others]
    preemptions_before = server.metric("spanserve_preemptions_total")

    thread_big, box_big = run_in_thread(lambda: stub.Generate(big, timeout=60))
    wait_for(lambda: server.metric("spanserve_requests_running") == 1, 10,
             what="the big request to run")
    results = [run_in_thread(lambda r=r: stub.Generate(r, timeout=60)) for r in others]
    thread_big.join(70)
    assert "value" in box_big, box_big
    assert list(box_big["value"].token_ids) == list(big_alone.token_ids)
    for i, (thread, box) in enumerate(results):
        thread.join(70)
        assert "value" in box, box
        assert list(box["value"].token_ids) == others_alone[i]
    assert server.metric("spanserve_preemptions_total") > preemptions_before
    wait_for(lambda: idle(server), 10, what="the pool to be all free")
