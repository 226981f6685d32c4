"""SpanRows (training/spanserve_train/data.py, model.py): training's span mask given as the rows
where it differs from causal, attention run as a causal kernel plus a masked one over those
rows. Against layout_mask on the shared vectors (every header case, DENSE mode) padded into
batches, and the model's logits and gradients under both forms."""
import os
import random

import torch

from spanserve_train import arith_data as ad
from spanserve_train import data as D
from spanserve_train.model import LlamaConfig, LlamaForCausalLM

from test_span_batches import REPO, batch_tensors, vector_trackers


def expand(rows: D.SpanRows, B: int, T: int) -> torch.Tensor:
    """The full [B, T, T] mask SpanRows stands for: causal, the listed rows replaced."""
    full = torch.ones(B, T, T, dtype=torch.bool).tril()
    full[rows.b, rows.t] = rows.mask[rows.b, rows.slot]
    return full


def test_span_rows_are_layout_mask_on_every_real_row():
    trackers = [t for _, t in vector_trackers()]
    rng = random.Random(5)
    listed = 0
    for _ in range(40):
        group = rng.sample(trackers, 6)
        tensors = batch_tensors([D.span_layout(t) for t in group])
        want = D.layout_mask(*tensors)
        rows = D.span_rows(*tensors)
        B, T = want.shape[:2]
        got = expand(rows, B, T)
        for b, t in enumerate(group):
            n = len(t)
            assert torch.equal(got[b, :n], want[b, :n])
        listed += rows.b.numel()
        # Unused slots read key 0 only, so their softmax is defined.
        used = torch.zeros(rows.mask.shape[:2], dtype=torch.bool)
        used[rows.b, rows.slot] = True
        assert torch.equal(rows.mask[~used], torch.nn.functional.one_hot(
            torch.zeros((~used).sum(), dtype=torch.long), T).bool())
    assert listed > 300  # the vectors do hold restricted rows


def test_all_dense_batch_lists_no_rows():
    tensors = batch_tensors([D.span_layout(t) for _, t in list(vector_trackers())[:4]])
    segment, dense, refs, lengths = tensors
    rows = D.span_rows(segment, torch.ones_like(dense), refs, lengths)
    assert rows.b.numel() == 0 and rows.mask.shape[1] == 0


def arith_batch():
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(REPO, "models", "arith-small",
                                                            "tokenizer.model"))
    vocab = D.make_span_vocab(sp, 16)
    records = ad.generate(ad.spec_from_preset(ad.load_preset("arith-range")), 10, "rows", set())
    examples = [D.encode_record(r, sp, vocab, "whole") for r in records]
    dense = [i % 4 == 0 for i in range(len(examples))]
    return D.collate_packed(D.Packed.of(examples, vocab), range(len(examples)), sp.eos_id(),
                            dense, with_mask=False), sp.get_piece_size()


def test_model_logits_and_gradients_match_the_full_mask():
    batch, vocab_size = arith_batch()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).double()
    model.init_weights(std=0.2, norm_std=0.1)
    ids, pos, labels = batch["input_ids"], batch["positions"], batch["labels"]
    at = labels != D.IGNORE

    def loss_and_grads(mask):
        model.zero_grad()
        logits = model(ids, mask, pos, logits_at=at)
        loss = torch.nn.functional.cross_entropy(logits, labels[at])
        loss.backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_grads = loss_and_grads(D.batch_mask(batch))
    got, got_grads = loss_and_grads(D.batch_rows(batch))
    assert D.batch_rows(batch).b.numel() > 100
    assert torch.allclose(got, want, atol=1e-9, rtol=0)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-9, rtol=0)
    # logits_at picks rows of the full logits.
    full = model(ids, D.batch_mask(batch), pos)
    assert torch.allclose(full[at], want, atol=1e-12, rtol=0)
