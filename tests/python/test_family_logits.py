"""The LLaMA family beyond LLaMA-2 in the C++ CPU backend (tests/tools/logits_dump) against the
float64 reference of family_reference.py, on tiny random checkpoints in the directory layout those
families ship. Every position's logits: max relative error < 1e-4.
"""
import json
import os
import subprocess

import numpy as np
import pytest

from engine_logits import row_errors, run_logits_dump
from family_reference import FAMILIES, reference_logits, write_family_dir
from spanserve_train import hf_export
from spanserve_train.safetensors_io import save_file

TOLERANCE = 1e-4
SEQ_LEN = 48  # past the sliding window and the llama3 model's original context


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, test_tokenizer_path):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = write_family_dir(name, str(tmp_path_factory.mktemp(name)),
                                           test_tokenizer_path)
        return cache[name]
    return get


def sequence():
    return [1] + np.random.default_rng(3).integers(3, 320, SEQ_LEN - 1).tolist()


def test_reference_features_change_the_logits(family_dir):
    """Each family's feature moves the reference away from the same weights read as plain LLaMA
    (the test would pass vacuously otherwise)."""
    tokens = sequence()
    for name in FAMILIES:
        out = family_dir(name)
        feature = reference_logits(out, tokens)
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            plain = json.load(f)
        for key in ("rope_scaling", "rope_parameters"):
            plain.pop(key, None)
        plain["model_type"] = "llama"
        plain["rope_theta"] = 10000.0
        plain_dir = out + "-plain"
        os.makedirs(plain_dir, exist_ok=True)
        hf_export.write_json(os.path.join(plain_dir, "config.json"), plain)
        state = {k: v for k, v in hf_export.load_state(out).items() if not k.endswith(".bias")}
        save_file(state, os.path.join(plain_dir, "model.safetensors"))
        rel = row_errors(feature, reference_logits(plain_dir, tokens))
        assert rel.max() > 1e-3, name


@pytest.mark.parametrize("block_size", (4, 16))
@pytest.mark.parametrize("phase", ("prefill", "decode", "chunked"))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cpp_logits_match_the_family_reference(find_binary, family_dir, tmp_path, name, phase,
                                               block_size):
    out = family_dir(name)
    tokens = sequence()
    ref = reference_logits(out, tokens)
    got = run_logits_dump(find_binary("logits_dump"), out, tokens, 20, "dense", phase, block_size,
                          str(tmp_path / "logits.bin"))
    assert got.size == ref.size
    rel = row_errors(got.reshape(ref.shape).astype(np.float64), ref)
    worst = int(rel.argmax())
    assert rel[worst] < TOLERANCE, f"{name}: position {worst}: relative error {rel[worst]:.3g}"


def test_unknown_architectures_are_refused_naming_the_key(find_binary, family_dir, tmp_path):
    out = family_dir("mistral")
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        original = json.load(f)
    for key, value, needle in (("model_type", "gemma2", "model_type"),
                               ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "yarn")):
        d = dict(original, **{key: value})
        hf_export.write_json(path, d)
        proc = subprocess.run(
            [find_binary("logits_dump"), "--model", out, "--tokens", "1,5,6", "--prompt-len", "2",
             "--mode", "dense", "--phase", "prefill", "--block-size", "16",
             "--out", str(tmp_path / "x.bin")], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and needle in proc.stderr and "not supported" in proc.stderr, (
            proc.stderr)
    hf_export.write_json(path, original)
