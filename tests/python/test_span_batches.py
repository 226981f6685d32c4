"""Span layouts (training/spanserve_train/data.py): the O(T) per-example summary of the span rule
that batches carry, and the mask made from it, against span_rule.attention_mask on every case of
the shared vectors file (malformed, star, empty and unfinished headers, DENSE mode) and on
arithmetic records, alone and padded into batches."""
import json
import os
import random

import torch

from spanserve_train import arith_data as ad
from spanserve_train import data as D
from spanserve_train.span_rule import SpanVocab, attention_mask, track

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(REPO, "tests", "vectors", "span_rule_vectors.json")


def vector_trackers():
    with open(VECTORS, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    for c in cases:
        vocab = SpanVocab(c["anchor_id"], c["header_end_id"], c["max_header_tokens"], c["pieces"])
        yield c["name"], track(vocab, c["tokens"], c["prompt_len"], c["mode"])


def batch_tensors(layouts):
    """segment, dense, refs and lengths of several layouts padded into one batch."""
    B, T = len(layouts), max(len(lo.segment) for lo in layouts)
    S = max(1, max(max(lo.segment, default=-1) + 1 for lo in layouts))
    segment = torch.full((B, T), -1, dtype=torch.long)
    dense = torch.zeros(B, T, dtype=torch.bool)
    refs = torch.zeros(B, S, S, dtype=torch.bool)
    for b, lo in enumerate(layouts):
        segment[b, :len(lo.segment)] = torch.tensor(lo.segment, dtype=torch.long)
        dense[b, :len(lo.dense)] = torch.tensor(lo.dense, dtype=torch.bool)
        for s, r in lo.refs:
            refs[b, s, r] = True
    return segment, dense, refs, torch.tensor([len(lo.segment) for lo in layouts])


def mask_of_layouts(layouts):
    """layout_mask over several layouts padded into one batch."""
    return D.layout_mask(*batch_tensors(layouts))


def test_layout_mask_is_the_rules_mask_on_every_vector_case():
    checked = 0
    for name, tracker in vector_trackers():
        want = attention_mask(tracker)
        got = mask_of_layouts([D.span_layout(tracker)])[0]
        assert torch.equal(got, want), name
        checked += 1
    assert checked > 200


def test_padded_batches_keep_each_mask_and_isolate_the_padding():
    trackers = [t for _, t in vector_trackers()]
    rng = random.Random(3)
    for _ in range(20):
        group = rng.sample(trackers, 5)
        masks = mask_of_layouts([D.span_layout(t) for t in group])
        T = masks.shape[1]
        for b, t in enumerate(group):
            n = len(t)
            assert torch.equal(masks[b, :n, :n], attention_mask(t))
            assert not masks[b, :n, n:].any()  # no real position attends the padding
            assert torch.equal(masks[b, n:, :], torch.eye(T, dtype=torch.bool)[n:])


def test_collated_arithmetic_batches_carry_the_rules_masks(test_tokenizer_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, "models", "arith-small",
                                                            "tokenizer.model"))
    vocab = D.make_span_vocab(sp, 16)
    spec = ad.spec_from_preset(ad.load_preset("arith-range"))
    records = ad.generate(spec, 24, "layout", set())
    examples = [D.encode_record(r, sp, vocab, "whole") for r in records]
    dense = [i % 3 == 0 for i in range(len(examples))]
    batch = D.collate(examples, vocab, sp.eos_id(), dense)
    packed = D.collate_packed(D.Packed.of(examples, vocab), range(len(examples)), sp.eos_id(),
                              dense, with_mask=False)
    assert "attention_mask" not in packed
    assert torch.equal(D.batch_mask(packed), batch["attention_mask"])
    for b, ex in enumerate(examples):
        n = len(ex)
        want = D.example_mask(ex, vocab, "dense" if dense[b] else "self_selected")
        assert torch.equal(batch["attention_mask"][b, :n, :n], want)
