"""Bad input gets a clear status, never a crash: one test per row of the table, on both the
unary and the streaming RPC, and the server still answers afterwards."""
import threading

import grpc
import pytest

from server_harness import pb, request, wait_for

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# (row name, request fields, status code, the field the message must name)
ROWS = [
    ("empty prompt", {"prompt": ""}, INVALID, "prompt"),
    ("prompt longer than the context", {"prompt": "1+2 " * 2000}, INVALID, "prompt"),
    ("max_tokens of 0", {"max_tokens": 0}, INVALID, "max_tokens"),
    ("max_tokens over the limit", {"max_tokens": 513}, INVALID, "max_tokens"),
    ("negative temperature", {"temperature": -0.5}, INVALID, "temperature"),
    ("NaN temperature", {"temperature": float("nan")}, INVALID, "temperature"),
    ("top_p of 0", {"top_p": 0.0}, INVALID, "top_p"),
    ("top_p over 1", {"top_p": 1.5}, INVALID, "top_p"),
    ("negative top_k", {"top_k": -1}, INVALID, "top_k"),
    ("too many stop sequences", {"stop": [f"s{i}" for i in range(9)]}, INVALID, "stop"),
    ("too long stop sequence", {"stop": ["x" * 65]}, INVALID, "stop"),
    ("unknown span mode", {"span_mode": 7}, INVALID, "span_mode"),
]


def call(stub, rpc, req, timeout=30):
    if rpc == "unary":
        return stub.Generate(req, timeout=timeout)
    return list(stub.GenerateStream(req, timeout=timeout))


@pytest.mark.parametrize("rpc", ["unary", "stream"])
@pytest.mark.parametrize("row,fields,code,field", ROWS, ids=[r[0] for r in ROWS])
def test_bad_request(server, rpc, row, fields, code, field):
    req = request(**{"max_tokens": 8, **fields})
    with pytest.raises(grpc.RpcError) as error:
        call(server.stub(), rpc, req)
    assert error.value.code() == code, error.value.details()
    assert error.value.details().startswith(field), error.value.details()
    # The server is still there and well.
    assert len(server.stub().Generate(request(max_tokens=2, ignore_eos=True),
                                      timeout=30).token_ids) == 2


def test_bad_requests_are_counted_by_code(server):
    with pytest.raises(grpc.RpcError):
        server.stub().Generate(request(top_k=-3), timeout=30)
    assert server.metric("spanserve_requests_total",
                         {"rpc": "Generate", "code": "INVALID_ARGUMENT"}) >= 1


def test_full_queue_is_resource_exhausted(start_server):
    # One sequence runs, one waits; the queue holds no more.
    server = start_server({"scheduler.max_running": 1, "scheduler.max_waiting": 1,
                           "debug.step_delay_ms": 20})
    stub = server.stub()
    running = stub.GenerateStream(request(max_tokens=1000, ignore_eos=True), timeout=60)
    next(running)  # it is running now
    waiting = stub.GenerateStream(request(max_tokens=1000, ignore_eos=True), timeout=60)
    wait_for(lambda: server.metric("spanserve_requests_waiting") == 1, 10,
             what="the second request to wait")
    for rpc in ("unary", "stream"):
        with pytest.raises(grpc.RpcError) as error:
            call(stub, rpc, request(max_tokens=4))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in error.value.details()
    running.cancel()
    waiting.cancel()


def test_shutting_down_is_unavailable(start_server):
    server = start_server({"debug.step_delay_ms": 20, "server.drain_grace_seconds": 30})
    stub = server.stub()
    # 100 tokens at 20 ms a step: the drain waits about 2 s for it.
    in_flight = stub.GenerateStream(request(max_tokens=100, ignore_eos=True), timeout=60)
    first = next(in_flight)
    server.signal()
    wait_for(lambda: "event=draining" in server.log(), 10, what="the drain to begin")
    for rpc in ("unary", "stream"):
        with pytest.raises(grpc.RpcError) as error:
            call(stub, rpc, request(max_tokens=4))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details() == "the server is shutting down"
    # The in-flight stream finishes normally, then the server exits 0.
    rest = list(in_flight)
    assert len(first.token_ids) + sum(len(m.token_ids) for m in rest) == 100
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert server.wait_exit(30) == 0


def test_stream_past_the_grace_period_is_unavailable(start_server):
    server = start_server({"debug.step_delay_ms": 20, "server.drain_grace_seconds": 0.5})
    in_flight = server.stub().GenerateStream(request(max_tokens=1000, ignore_eos=True),
                                             timeout=60)
    next(in_flight)
    server.signal()
    with pytest.raises(grpc.RpcError) as error:
        for _ in in_flight:
            pass
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shut down before the generation finished" in error.value.details()
    assert server.wait_exit(30) == 0


def test_concurrent_bad_and_good_requests(server):
    """A burst of bad requests among good ones disturbs nothing."""
    stub = server.stub()
    codes, lock = [], threading.Lock()

    def client(i):
        bad = i % 2 == 0
        req = request(max_tokens=0 if bad else 6, ignore_eos=True, seed=i)
        try:
            stub.Generate(req, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        with lock:
            codes.append((bad, code))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(codes, key=lambda c: c[0]) == sorted(
        [(False, grpc.StatusCode.OK)] * 8 + [(True, INVALID)] * 8, key=lambda c: c[0])
