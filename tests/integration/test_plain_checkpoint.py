"""A plain Hugging Face directory (the shipped model's files without spanserve.json) through the
real server: served DENSE, said once in the log and in GetModelInfo; SELF_SELECTED asked for is
FAILED_PRECONDITION naming the span config; generation_config.json's EOS list ends generation.
"""
from __future__ import annotations

import json
import shutil

import grpc
import pytest

from server_harness import REPO, ServerProcess, pb, request

MODEL = REPO / "models" / "arith-small"
PROMPT = "((3+4)*(5-2))+6="


def plain_copy(dest, generation_config: dict | None = None):
    dest.mkdir()
    for path in MODEL.iterdir():
        if path.is_file() and path.name not in ("spanserve.json", "generation_config.json"):
            shutil.copy(path, dest / path.name)
    if generation_config is not None:
        (dest / "generation_config.json").write_text(json.dumps(generation_config))
    return dest


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("plain")
    started = []
    try:
        def start(name, model):
            workdir = base / f"{name}-run"
            workdir.mkdir()
            process = ServerProcess(workdir, model)
            started.append(process)
            return process

        shipped = start("shipped", MODEL)
        plain = start("plain", plain_copy(base / "plain"))
        yield {"shipped": shipped.wait_serving(), "plain": plain.wait_serving(), "base": base,
               "start": start}
    finally:
        for process in started:
            process.close()


def generate(server, **fields):
    return server.stub().Generate(request(prompt=PROMPT, max_tokens=64, temperature=0.0, **fields),
                                timeout=60)


def test_model_info_and_log_say_dense_only(servers):
    plain, shipped = servers["plain"], servers["shipped"]
    info = plain.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.span_support is False
    assert info.default_span_mode == pb.SPAN_MODE_DENSE
    shipped_info = shipped.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert shipped_info.span_support is True
    assert shipped_info.default_span_mode == pb.SPAN_MODE_SELF_SELECTED
    warnings = [e for e in plain.events() if e["event"] == "plain_checkpoint"]
    assert len(warnings) == 1 and "spanserve.json" in warnings[0]["message"]
    assert shipped.event("plain_checkpoint") is None


def test_unset_and_dense_modes_serve_dense(servers):
    plain = servers["plain"]
    unset = generate(plain)
    dense = generate(plain, span_mode=pb.SPAN_MODE_DENSE)
    assert unset.usage.generated_tokens > 0
    assert list(unset.token_ids) == list(dense.token_ids)
    assert unset.attention.kv_blocks_read == unset.attention.kv_blocks_dense
    # Without anchors the prompt is one token shorter than the span model's ([BOS] <a> text).
    shipped = generate(servers["shipped"], span_mode=pb.SPAN_MODE_DENSE)
    assert unset.usage.prompt_tokens == shipped.usage.prompt_tokens - 1


def test_self_selected_is_refused_naming_the_span_config(servers):
    plain = servers["plain"]
    with pytest.raises(grpc.RpcError) as error:
        generate(plain, span_mode=pb.SPAN_MODE_SELF_SELECTED)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "spanserve.json" in error.value.details()
    with pytest.raises(grpc.RpcError) as streamed:
        list(plain.stub().GenerateStream(
            request(prompt=PROMPT, max_tokens=8, span_mode=pb.SPAN_MODE_SELF_SELECTED), timeout=30))
    assert streamed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert generate(plain).usage.generated_tokens > 0  # the server serves on


def test_generation_config_eos_list_ends_generation(servers):
    tokens = list(generate(servers["plain"], ignore_eos=True).token_ids)
    # A token first seen at position k >= 2 of the output, made an EOS id by generation_config.
    k = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    model = plain_copy(servers["base"] / "with-eos", {"eos_token_id": [tokens[k]],
                                                      "do_sample": False})
    server = servers["start"]("with-eos", model).wait_serving()
    # temperature left out: do_sample false makes the default greedy
    reply = server.stub().Generate(request(prompt=PROMPT, max_tokens=64), timeout=60)
    assert reply.finish_reason == pb.FINISH_REASON_EOS
    assert list(reply.token_ids)[:k] == tokens[:k]
    assert len(reply.token_ids) in (k, k + 1)  # the EOS token itself, if the server reports it
