"""The merged LoRA export made on the GPU machine (tests/data/lora-merged, see its README) loads in
the C++ engine, whose logits match those transformers computed there (causal, DENSE mode) and
those of the float64 PyTorch reference under the span mask (SELF_SELECTED)."""
import json
import os

import numpy as np
import pytest
import torch

from engine_logits import model_span_vocab, row_errors, run_logits_dump
from spanserve_train import hf_export
from spanserve_train.span_rule import SELF_SELECTED, attention_mask, encode_prompt, track

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def export_dir(repo_root):
    return os.path.join(repo_root, "tests", "data", "lora-merged")


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_engine_matches_transformers(find_binary, export_dir, tmp_path, phase):
    with open(os.path.join(export_dir, "transformers_logits.json"), encoding="utf-8") as f:
        ref = json.load(f)
    want = np.array(ref["logits"], dtype=np.float64)
    got = run_logits_dump(find_binary("logits_dump"), export_dir, ref["tokens"], 1, "dense",
                          phase, 16, str(tmp_path / "logits.bin"))
    got = got.reshape(want.shape).astype(np.float64)
    assert row_errors(got, want).max() < TOLERANCE


def test_engine_matches_the_reference_under_spans(find_binary, export_dir, tmp_path):
    sp, vocab = model_span_vocab(export_dir)
    # added to the base tokenizer by the LoRA mode
    assert (vocab.anchor_id, vocab.header_end_id) == (31, 32)
    prompt = encode_prompt(sp, vocab.anchor_id, ["(3+4)*(5-2)="])
    tokens = prompt + sp.encode("<a>0</a>7*(5-2)<a>1</a>7*3<a>2</a>21")
    tracker = track(vocab, tokens, len(prompt), SELF_SELECTED)
    assert any(s.restricted for s in tracker.segments)
    model, _ = hf_export.load_hf_dir(export_dir, dtype=torch.float64)
    with torch.no_grad():
        want = model.eval()(torch.tensor([tokens]), attention_mask(tracker)[None])[0].numpy()
        causal = model(torch.tensor([tokens]))[0].numpy()
    assert row_errors(causal, want).max() > 100 * TOLERANCE  # the spans matter here
    got = run_logits_dump(find_binary("logits_dump"), export_dir, tokens, len(prompt),
                          "self_selected", "decode", 16, str(tmp_path / "logits.bin"))
    assert row_errors(got.reshape(want.shape).astype(np.float64), want).max() < TOLERANCE
