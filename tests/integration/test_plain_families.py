"""Plain checkpoints of each served family (LLaMA with llama3 and linear rope scaling, Qwen2,
Mistral with a sliding window the answer runs past) through a real server over gRPC: greedy
tokens equal the float64 reference's (tests/python/family_reference.py).
"""
from __future__ import annotations

import sys

import pytest
import sentencepiece as spm

from server_harness import REPO, ServerProcess, pb

sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(REPO / "training"))
from family_reference import FAMILIES, greedy, write_family_dir  # noqa: E402

TOKENIZER = REPO / "tests" / "data" / "tokenizer" / "tokenizer.model"
PROMPT = "the cat sat on the mat and 12+34 is"
NEW_TOKENS = 12


@pytest.mark.parametrize("name", list(FAMILIES))
def test_plain_family_directory_serves_its_reference_greedy_tokens(tmp_path, name):
    model = write_family_dir(name, str(tmp_path / name), str(TOKENIZER))
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    prompt_ids = [1] + sp.encode(PROMPT)  # BOS and the text: a plain model's prompt has no anchors
    want, gap = greedy(model, prompt_ids, NEW_TOKENS)
    assert gap > 1e-4, "the reference's top two logits are too close to compare greedy paths"
    assert len(prompt_ids) + NEW_TOKENS > 13  # past the Mistral model's window of 13

    workdir = tmp_path / "server"
    workdir.mkdir()
    server = ServerProcess(workdir, tmp_path / name).wait_serving()
    try:
        info = server.stub().GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.span_support is False
        reply = server.stub().Generate(
            pb.GenerateRequest(prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0.0,
                               ignore_eos=True), timeout=60)
        assert reply.usage.prompt_tokens == len(prompt_ids)
        assert list(reply.token_ids) == want, name
    finally:
        server.close()


HF_DATA = REPO / "tests" / "data" / "hf_families"


@pytest.mark.parametrize("name", ["llama", "llama2-gqa", "llama3", "qwen2", "mistral"])
def test_transformers_checkpoint_serves_transformers_greedy_tokens(tmp_path, name):
    """A directory saved by transformers' save_pretrained (tokenizer.json, generation_config.json
    with sampling defaults, no spanserve.json), served as is: the prompt tokenizes as HF
    tokenizers does and greedy decoding gives transformers' generate() tokens."""
    import json
    ref = json.loads((HF_DATA / name / "reference.json").read_text())
    server = ServerProcess(tmp_path, HF_DATA / name).wait_serving()
    try:
        reply = server.stub().Generate(
            pb.GenerateRequest(prompt=ref["prompt"], max_tokens=len(ref["greedy"]),
                               temperature=0.0, ignore_eos=True), timeout=60)
        assert reply.usage.prompt_tokens == len(ref["prompt_ids"])
        assert list(reply.token_ids) == ref["greedy"], name
    finally:
        server.close()
