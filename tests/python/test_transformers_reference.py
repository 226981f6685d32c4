"""The C++ CPU backend against Hugging Face transformers itself: tiny random checkpoints of each
family (LLaMA, LLaMA-2 with GQA, LLaMA-3 with llama3 rope scaling, Qwen2 with q/k/v biases and
tied embeddings, Mistral with a sliding window shorter than the sequence), saved by
`save_pretrained` with a tokenizer.json, and their logits from transformers 5.17 (fp32), made on
the GPU machine by training/tools/make_hf_references.py and committed in tests/data/hf_families.
Every position's logits within 1e-4 (relative, row-wise), prefill, decode and chunked prefill.
"""
import json
import os

import numpy as np
import pytest

from engine_logits import row_errors, run_logits_dump

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "hf_families")
FAMILIES = ["llama", "llama2-gqa", "llama3", "qwen2", "mistral"]
TOLERANCE = 1e-4


def reference(name):
    with open(os.path.join(DATA, name, "reference.json"), encoding="utf-8") as f:
        return json.load(f)


def test_references_are_what_the_test_says():
    """The data exercises each family's feature (a wrong reading would be caught)."""
    configs = {n: json.load(open(os.path.join(DATA, n, "config.json"))) for n in FAMILIES}
    assert configs["llama3"]["rope_parameters"]["rope_type"] == "llama3"
    assert configs["qwen2"]["model_type"] == "qwen2" and configs["qwen2"]["tie_word_embeddings"]
    assert configs["mistral"]["sliding_window"] < len(reference("mistral")["tokens"])
    assert configs["llama2-gqa"]["num_key_value_heads"] < configs["llama2-gqa"][
        "num_attention_heads"]
    for name in FAMILIES:
        assert not os.path.exists(os.path.join(DATA, name, "spanserve.json"))  # plain
        assert reference(name)["transformers"].startswith("5.")


@pytest.mark.parametrize("phase", ("prefill", "decode", "chunked"))
@pytest.mark.parametrize("name", FAMILIES)
def test_cpu_logits_match_transformers(find_binary, tmp_path, name, phase):
    ref = reference(name)
    want = np.array(ref["logits"], dtype=np.float64)
    got = run_logits_dump(find_binary("logits_dump"), os.path.join(DATA, name), ref["tokens"], 20,
                          "dense", phase, 16, str(tmp_path / "logits.bin"))
    assert got.size == want.size
    rel = row_errors(got.reshape(want.shape).astype(np.float64), want)
    worst = int(rel.argmax())
    assert rel[worst] < TOLERANCE, f"{name} {phase}: position {worst}: relative error {rel[worst]:.3g}"
