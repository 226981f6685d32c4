"""Prefix caching through the real server: a second request sharing a long prefix with the first
has its prefix tokens counted as hits in /metrics, and two servers, one with caching on (the
default) and one started with --no-prefix-caching, give the same tokens (greedy and seeded
sampling, SELF_SELECTED and DENSE)."""
import pytest

from server_harness import pb, request, wait_for

PREFIX = " ".join(f"step {i}: the cat sat on mat {i % 7}." for i in range(40))
SUFFIXES = [" what came next?", " and then the dog.", " so the answer is"]


def requests():
    out = []
    for i, suffix in enumerate(SUFFIXES):
        for mode in (pb.SPAN_MODE_SELF_SELECTED, pb.SPAN_MODE_DENSE):
            fields = dict(prompt=PREFIX + suffix, max_tokens=12, ignore_eos=True, span_mode=mode)
            if i == 1:
                fields.update(temperature=0.9, top_k=40, top_p=0.95, seed=21)
            out.append(request(**fields))
    return out


@pytest.fixture
def servers(start_server):
    # Both at once: the two cores are shared, start-up dominates.
    on = start_server(wait=False)
    off = start_server(args=["--no-prefix-caching"], wait=False)
    return on.wait_serving(), off.wait_serving()


def test_shared_prefix_hits_and_same_tokens_as_without_caching(servers):
    on, off = servers
    for server in servers:
        assert server.metric("spanserve_prefix_cache_queries_total") == 0
    first = on.stub().Generate(requests()[0], timeout=120)
    prompt_tokens = first.usage.prompt_tokens
    assert prompt_tokens > 300  # the prefix spans many blocks of 16
    wait_for(lambda: on.metric("spanserve_prefix_cache_queries_total") == prompt_tokens, 10,
             what="the first request's query")
    assert on.metric("spanserve_prefix_cache_hits_total") == 0
    # Finished: its full prompt blocks stay cached and free (not in kv_blocks_used).
    wait_for(lambda: on.metric("spanserve_kv_blocks_used") == 0, 10, what="blocks released")
    assert on.metric("spanserve_kv_blocks_cached") >= prompt_tokens // 16 - 1

    second = on.stub().Generate(requests()[2], timeout=120)
    hits = on.metric("spanserve_prefix_cache_hits_total")
    # The shared prefix, in whole blocks: all but the block the suffix starts in, at most.
    assert hits >= (prompt_tokens - 16) // 16 * 16 - 16
    assert hits % 16 == 0 and hits < second.usage.prompt_tokens
    assert on.metric("spanserve_prefix_cache_queries_total") == \
        prompt_tokens + second.usage.prompt_tokens

    for req in requests():
        with_cache = on.stub().Generate(req, timeout=120)
        without = off.stub().Generate(req, timeout=120)
        assert len(with_cache.token_ids) == 12
        assert list(with_cache.token_ids) == list(without.token_ids), req.prompt[-20:]
    assert on.metric("spanserve_prefix_cache_hits_total") > hits
    assert off.metric("spanserve_prefix_cache_queries_total") == 0
    assert off.metric("spanserve_prefix_cache_hits_total") == 0
    assert off.metric("spanserve_kv_blocks_cached") == 0


def test_config_key_turns_caching_off(start_server):
    server = start_server({"kv_cache.prefix_caching": False})
    for _ in range(2):
        server.stub().Generate(requests()[0], timeout=120)
    assert server.metric("spanserve_prefix_cache_queries_total") == 0
    assert server.metric("spanserve_kv_blocks_cached") == 0
