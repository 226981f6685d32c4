"""Helpers of the logits tests: the C++ engine's logits (tests/tools/logits_dump), their row-wise
relative error against a reference, and a model directory's span vocabulary."""
import json
import os
import subprocess

import numpy as np
import sentencepiece as spm

from spanserve_train.data import make_span_vocab


def run_logits_dump(binary, model_dir, tokens, prompt_len, mode, phase, block_size, out):
    """The engine's logits of every position, flat float32 [len(tokens) * vocab]."""
    cmd = [binary, "--model", model_dir, "--tokens", ",".join(map(str, tokens)),
           "--prompt-len", str(prompt_len), "--mode", mode, "--phase", phase,
           "--block-size", str(block_size), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nexit {proc.returncode}: {proc.stderr}"
    return np.fromfile(out, dtype="<f4")


def row_errors(got, ref):
    """||got - ref|| / ||ref|| of each row."""
    return np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)


def model_span_vocab(model_dir):
    """(SentencePiece processor, SpanVocab) of a model directory, as the engine reads them."""
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    with open(os.path.join(model_dir, "spanserve.json"), encoding="utf-8") as f:
        return sp, make_span_vocab(sp, json.load(f)["max_header_tokens"])
