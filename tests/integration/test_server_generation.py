"""The real server over gRPC: unary and streaming agree, seeds reproduce, the last message
carries the finish, spans are reported, model info answers, 64 concurrent streams complete,
and cancelled streams and expired deadlines free their KV blocks at once."""
import threading
import time

import grpc
import pytest

from server_harness import pb, request, stream_text, wait_for


@pytest.mark.parametrize("sampling", [
    {},  # greedy
    {"temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 1234},
    {"temperature": 1.5, "seed": 99},
])
def test_unary_and_stream_give_the_same_text(server, sampling):
    stub = server.stub()
    req = request(max_tokens=40, ignore_eos=True, **sampling)
    unary = stub.Generate(req, timeout=60)
    text, tokens, messages = stream_text(stub, req)
    assert len(unary.token_ids) == 40
    assert list(unary.token_ids) == tokens
    assert unary.text == text
    if "seed" in sampling:
        assert unary.seed == messages[-1].seed == sampling["seed"]
    assert unary.usage == messages[-1].usage
    assert unary.attention == messages[-1].attention


def test_different_seeds_sample_differently(server):
    stub = server.stub()
    outputs = {tuple(stub.Generate(request(max_tokens=24, ignore_eos=True, temperature=2.0,
                                           seed=seed), timeout=60).token_ids)
               for seed in range(4)}
    assert len(outputs) > 1


def test_unset_seed_is_drawn_reported_and_reproduces(server):
    stub = server.stub()
    first = stub.Generate(request(max_tokens=24, ignore_eos=True, temperature=1.0), timeout=60)
    second = stub.Generate(request(max_tokens=24, ignore_eos=True, temperature=1.0), timeout=60)
    assert first.seed != second.seed
    again = stub.Generate(request(max_tokens=24, ignore_eos=True, temperature=1.0,
                                  seed=first.seed), timeout=60)
    assert again.token_ids == first.token_ids


def test_stream_messages_and_last_message(server):
    _, tokens, messages = stream_text(server.stub(), request(max_tokens=30, ignore_eos=True))
    assert len(tokens) == 30
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
    last = messages[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.generated_tokens == 30
    assert last.usage.prompt_tokens > 0
    assert last.attention.kv_blocks_dense > 0
    assert 0 < last.attention.kv_blocks_read <= last.attention.kv_blocks_dense
    # One message per token or small group of tokens.
    assert all(1 <= len(m.token_ids) for m in messages[:-1])
    assert len(messages) > 1


def test_unset_fields_take_the_configured_defaults(server):
    response = server.stub().Generate(request(ignore_eos=True), timeout=120)
    # defaults.max_tokens 0: the room the prompt leaves (1024 - 14), cut to limits.max_tokens
    assert len(response.token_ids) == 512
    greedy = server.stub().Generate(request(ignore_eos=True, max_tokens=16, temperature=0.0,
                                            seed=5), timeout=60)
    assert list(greedy.token_ids) == list(response.token_ids[:16])  # default temperature 0


def test_return_spans_reports_the_segments(server):
    prompt = "((3+4)*(5-2))+6="
    response = server.stub().Generate(request(prompt=prompt, max_tokens=20, return_spans=True),
                                      timeout=60)
    assert response.segments, "return_spans asked for segments"
    assert response.segments[0].id == 0 and response.segments[0].in_prompt
    assert response.segments[0].text.startswith(prompt)
    assert [s.id for s in response.segments] == list(range(len(response.segments)))
    without = server.stub().Generate(request(prompt=prompt, max_tokens=20), timeout=60)
    assert not without.segments


def test_client_segments_become_prompt_segments(server):
    response = server.stub().Generate(
        pb.GenerateRequest(segments=["3+4=7.", "7*2=14."], max_tokens=4, return_spans=True),
        timeout=60)
    prompt_segments = [s for s in response.segments if s.in_prompt]
    assert len(prompt_segments) == 2
    assert prompt_segments[0].text == "3+4=7."
    # The last prompt segment runs on into the output until the model opens a segment.
    assert prompt_segments[1].text.startswith("7*2=14.")


def test_dense_mode_reads_every_block(server):
    response = server.stub().Generate(request(max_tokens=30, ignore_eos=True,
                                              span_mode=pb.SPAN_MODE_DENSE), timeout=60)
    assert response.attention.kv_blocks_read == response.attention.kv_blocks_dense
    assert response.attention.saved_fraction == 0


def test_stop_sequence_ends_the_text(server):
    stub = server.stub()
    full = stub.Generate(request(max_tokens=60, ignore_eos=True, seed=3, temperature=1.0),
                         timeout=60)
    assert len(full.text) > 6
    stop = full.text[3:5]
    stopped = stub.Generate(request(max_tokens=60, ignore_eos=True, seed=3, temperature=1.0,
                                    stop=[stop]), timeout=60)
    assert stopped.finish_reason == pb.FINISH_REASON_STOP
    assert stopped.text == full.text[:full.text.index(stop)]


def test_model_info(server):
    info = server.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.vocab_size == 320
    assert info.max_context == 1024
    assert info.num_layers == 2
    assert info.anchor_token == "<a>" and info.header_end_token == "</a>"
    assert info.backend == "cpu"
    assert info.max_tokens_limit == 512
    assert info.default_max_tokens == 0  # the room the prompt leaves
    assert info.kv_block_size == 16 and info.kv_blocks_total > 0
    assert info.default_span_mode == pb.SPAN_MODE_SELF_SELECTED


def test_64_concurrent_streams_complete(server):
    stub = server.stub()
    results, errors = {}, []

    def client(i):
        try:
            text, tokens, messages = stream_text(
                stub, request(max_tokens=24, ignore_eos=True, temperature=1.0, seed=i),
                timeout=120)
            results[i] = (tokens, messages[-1].finish_reason)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors
    assert len(results) == 64
    assert all(len(tokens) == 24 and reason == pb.FINISH_REASON_LENGTH
               for tokens, reason in results.values())
    # Batching did not change what a seed samples.
    alone = stub.Generate(request(max_tokens=24, ignore_eos=True, temperature=1.0, seed=5),
                          timeout=60)
    assert list(alone.token_ids) == results[5][0]


# ---- Cancellation and deadlines free the sequence at once ----

def kv_free(server):
    return (server.metric("spanserve_kv_blocks_used") == 0
            and server.metric("spanserve_requests_running") == 0)


def test_cancelled_stream_frees_its_kv_blocks(slow_server):
    server = slow_server
    wait_for(lambda: kv_free(server), 10, what="an idle server")
    cancelled_before = server.metric("spanserve_generations_finished_total",
                                     {"reason": "cancelled"})
    # 1000 tokens at 20 ms a step would take 20 s: only a cancel ends it soon.
    call = server.stub().GenerateStream(request(max_tokens=1000, ignore_eos=True), timeout=60)
    received = 0
    for message in call:
        received += len(message.token_ids)
        if received >= 5:
            break
    assert server.metric("spanserve_kv_blocks_used") > 0
    assert server.metric("spanserve_requests_running") == 1
    start = time.monotonic()
    call.cancel()
    wait_for(lambda: kv_free(server), 5, what="the cancelled stream's KV blocks to be freed")
    assert time.monotonic() - start < 5
    assert server.metric("spanserve_generations_finished_total",
                         {"reason": "cancelled"}) == cancelled_before + 1
    wait_for(lambda: server.metric("spanserve_requests_total",
                                   {"rpc": "GenerateStream", "code": "CANCELLED"}) >= 1,
             5, what="the cancelled RPC to be counted")
    assert server.metric("spanserve_generated_tokens_total") < 1000


def test_expired_deadline_frees_its_kv_blocks(slow_server):
    server = slow_server
    wait_for(lambda: kv_free(server), 10, what="an idle server")
    cancelled_before = server.metric("spanserve_generations_finished_total",
                                     {"reason": "cancelled"})
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        server.stub().Generate(request(max_tokens=1000, ignore_eos=True), timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: kv_free(server), 5, what="the expired request's KV blocks to be freed")
    assert time.monotonic() - start < 5
    assert server.metric("spanserve_generations_finished_total",
                         {"reason": "cancelled"}) == cancelled_before + 1
    wait_for(lambda: server.metric("spanserve_requests_total",
                                   {"rpc": "Generate", "code": "DEADLINE_EXCEEDED"}) == 1,
             5, what="the expired RPC to be counted")


def test_stream_deadline_frees_its_kv_blocks(slow_server):
    server = slow_server
    wait_for(lambda: kv_free(server), 10, what="an idle server")
    with pytest.raises(grpc.RpcError) as error:
        for _ in server.stub().GenerateStream(request(max_tokens=1000, ignore_eos=True),
                                              timeout=0.5):
            pass
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: kv_free(server), 5, what="the expired stream's KV blocks to be freed")


def test_default_max_tokens_fits_what_the_prompt_leaves(server):
    """An unset max_tokens is the room the prompt leaves in the context (1024); an explicit one
    that does not fit is refused."""
    prompt = "1+" * 470 + "1="
    response = server.stub().Generate(request(prompt=prompt), timeout=120)
    room = 1024 - response.usage.prompt_tokens
    assert 0 < room < 128, room
    assert response.usage.generated_tokens <= room
    filled = server.stub().Generate(request(prompt=prompt, ignore_eos=True), timeout=120)
    assert filled.usage.generated_tokens == room
    assert filled.finish_reason == pb.FINISH_REASON_LENGTH
    with pytest.raises(grpc.RpcError) as error:
        server.stub().Generate(request(prompt=prompt, max_tokens=128), timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens" in error.value.details()
