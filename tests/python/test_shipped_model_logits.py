"""The shipped model (models/arith-small) in the C++ engine against the float64 PyTorch reference
on a held-out arithmetic record of 12 operators (the shipped range's longest), with its real span
headers: logits of every position within 1e-4 (norm-wise), SELF_SELECTED and DENSE, prefill and
step-by-step decode."""
import os

import numpy as np
import pytest
import torch

from engine_logits import model_span_vocab, row_errors, run_logits_dump
from spanserve_train import arith_data as ad
from spanserve_train import hf_export
from spanserve_train.span_rule import DENSE, SELF_SELECTED, attention_mask, encode_prompt, track

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def shipped(repo_root):
    model_dir = os.path.join(repo_root, "models", "arith-small")
    sp, vocab = model_span_vocab(model_dir)
    spec = ad.spec_from_preset(ad.load_preset("arith-range"))
    test_split = ad.generate(spec, 200, "arith-303-test", set())  # held out (make_splits' seed)
    record = next(r for r in test_split if len(r["steps"]) == 12)
    prompt = encode_prompt(sp, vocab.anchor_id, [record["prompt"]])
    tokens = prompt + sp.encode(record["output"]) + [sp.eos_id()]
    model, _ = hf_export.load_hf_dir(model_dir, dtype=torch.float64)
    return model_dir, vocab, tokens, len(prompt), model.eval()


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("mode", [SELF_SELECTED, DENSE])
def test_engine_logits_match_pytorch(find_binary, shipped, tmp_path, mode, phase):
    model_dir, vocab, tokens, prompt_len, model = shipped
    tracker = track(vocab, tokens, prompt_len, mode)
    if mode == SELF_SELECTED:
        assert sum(s.restricted for s in tracker.segments) == 12  # a chain of 12 spans
    with torch.no_grad():
        want = model(torch.tensor([tokens]), attention_mask(tracker)[None])[0].numpy()
    got = run_logits_dump(find_binary("logits_dump"), model_dir, tokens, prompt_len, mode, phase,
                          16, str(tmp_path / "logits.bin"))
    got = got.reshape(want.shape).astype(np.float64)
    assert row_errors(got, want).max() < TOLERANCE
    # The model predicts its own held-out output under its spans: argmax of every output row.
    assert (got[prompt_len - 1:-1].argmax(axis=1) == np.array(tokens[prompt_len:])).all()
