"""Golden logits: the C++ CPU backend (tests/tools/logits_dump) against the float64 PyTorch reference
with the span rule's mask, on tiny random models exported as Hugging Face directories.

For each model, sequence, mode, phase (prefill, decode, chunked) and KV block size, the engine's
logits of every position must match the reference: max over rows of ||cpp - ref|| / ||ref|| < 1e-4.
The reference for DENSE mode is causal attention; for SELF_SELECTED the mask of span_rule.py.
"""
import numpy as np
import pytest
import sentencepiece as spm
import torch

from engine_logits import row_errors, run_logits_dump
from spanserve_train import hf_export
from spanserve_train.data import make_span_vocab
from spanserve_train.model import LlamaConfig, LlamaForCausalLM
from spanserve_train.span_rule import DENSE, SELF_SELECTED, attention_mask, encode_prompt, track

TOLERANCE = 1e-4
MAX_HEADER_TOKENS = 8
PHASES = ("prefill", "decode", "chunked")
BLOCK_SIZES = (4, 16, 32)

# name: (query heads, kv heads, layers, tied, stored dtype, rope theta)
MODELS = {
    "gqa_tied_f32": (4, 2, 2, True, "float32", 10000.0),
    "mha_untied_f32": (4, 4, 3, False, "float32", 500000.0),
    "gqa_untied_bf16": (4, 2, 2, False, "bfloat16", 10000.0),
    "mha_tied_f16": (4, 4, 3, True, "float16", 10000.0),
}

# (prompt segment texts, output text): references to prompt and output segments, an empty
# header, `*`, malformed headers (a letter, a later segment), a stray </a>, an unfinished header.
SEQUENCES = {
    "chain": (["12+3=", "4*5-6", "7"],
              "<a>0</a>12+3<a>1</a>45<a>0,1</a>6*7<a>2</a>8<a>x</a>9<a></a>1+2<a>*</a>3"
              "<a>5,3</a>44</a>5<a>12</a>6<a>4,0</a>7"),
    "unfinished": (["((3+4)*(5-2))+6="],
                   "<a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27<a>0,2"),
}


def make_config(name):
    heads, kv_heads, layers, tied, _, theta = MODELS[name]
    return LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=tied,
                       bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def sp(test_tokenizer_path):
    return spm.SentencePieceProcessor(model_file=test_tokenizer_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, test_tokenizer_path):
    """name -> (model directory, float64 model with the stored weights), made once."""
    cache = {}

    def get(name):
        if name not in cache:
            config = make_config(name)
            model = LlamaForCausalLM(config)
            model.init_weights(0.15, norm_std=0.2,
                               generator=torch.Generator().manual_seed(sum(map(ord, name))))
            out = str(tmp_path_factory.mktemp(name))
            hf_export.save_hf_dir(model, config, out, dtype=MODELS[name][4],
                                  tokenizer_path=test_tokenizer_path,
                                  span_config={"max_header_tokens": MAX_HEADER_TOKENS})
            # The reference reads back what was stored: bf16/f16 rounding included.
            ref, _ = hf_export.load_hf_dir(out, dtype=torch.float64)
            cache[name] = (out, ref.eval())
        return cache[name]
    return get


def sequence(sp, name):
    texts, output = SEQUENCES[name]
    anchor = sp.piece_to_id("<a>")
    prompt = encode_prompt(sp, anchor, texts)
    return prompt + sp.encode(output), len(prompt)


def span_vocab(sp):
    return make_span_vocab(sp, MAX_HEADER_TOKENS)


def test_sequences_have_real_span_structure(sp):
    for name in SEQUENCES:
        tokens, prompt_len = sequence(sp, name)
        tracker = track(span_vocab(sp), tokens, prompt_len)
        mask = attention_mask(tracker)
        causal = torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
        assert (mask != causal).sum() > len(tokens), name  # many positions read a sparse span
        assert any(s.restricted for s in tracker.segments), name
    tokens, prompt_len = sequence(sp, "chain")
    segs = track(span_vocab(sp), tokens, prompt_len).segments
    assert [s.refs for s in segs if s.restricted] == [[0], [1], [0, 1], [2], [], [5, 3], [4, 0]]
    assert sum(s.malformed for s in segs) == 2 and sum(s.star for s in segs) == 1


@pytest.fixture(scope="module")
def golden(sp, exported):
    """(model, sequence, mode) -> float64 reference logits [T, V], made once."""
    cache = {}

    def get(model_name, seq_name, mode):
        key = (model_name, seq_name, mode)
        if key not in cache:
            tokens, prompt_len = sequence(sp, seq_name)
            mask = None
            if mode == SELF_SELECTED:
                mask = attention_mask(track(span_vocab(sp), tokens, prompt_len, mode))
            _, ref = exported(model_name)
            with torch.no_grad():
                cache[key] = ref(torch.tensor([tokens]), mask)[0].numpy()
        return cache[key]
    return get


def test_span_mask_changes_the_reference_logits(golden):
    """The span mask must move the logits far beyond the tolerance, or the test proves nothing."""
    for name in MODELS:
        span, dense = golden(name, "chain", SELF_SELECTED), golden(name, "chain", DENSE)
        assert row_errors(span, dense).max() > 100 * TOLERANCE, name


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("mode", [SELF_SELECTED, DENSE])
@pytest.mark.parametrize("seq_name", list(SEQUENCES))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_cpp_logits_match_reference(find_binary, sp, exported, golden, tmp_path, model_name,
                                    seq_name, mode, phase, block_size):
    binary = find_binary("logits_dump")
    model_dir, _ = exported(model_name)
    tokens, prompt_len = sequence(sp, seq_name)
    ref = golden(model_name, seq_name, mode)
    got = run_logits_dump(binary, model_dir, tokens, prompt_len, mode, phase, block_size,
                          str(tmp_path / "logits.bin"))
    assert got.size == ref.size, f"{got.size} floats, want {len(tokens)} x {ref.shape[1]}"
    got = got.reshape(ref.shape).astype(np.float64)
    rel = row_errors(got, ref)
    worst = int(rel.argmax())
    assert rel[worst] < TOLERANCE, (
        f"position {worst} (prompt_len {prompt_len}): relative error {rel[worst]:.3g}")
