"""Training examples: records -> token ids, loss targets and span masks, as the server sees them.

A record is either arithmetic ({"prompt", "output", ...}: the prompt is cut by the model's
segmentation rule, `whole` for arithmetic) or summarisation ({"segments", "output", ...}: the
article sentences are the prompt segments). Then
    prompt_ids = encode_prompt(sp, anchor_id, segment texts)    ([BOS] + [<a>] + text ...)
    output_ids = sp.encode(output) + [EOS]
The loss covers the output tokens only (span headers and EOS included). The attention mask is
span_rule's: a SpanTracker over the prompt, the output appended, attention_mask(tracker), so
training masks and serving masks come from the one rule.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import torch

from .span_rule import DENSE, SELF_SELECTED, SpanVocab, attention_mask, encode_prompt, \
    segment_prompt_text, track
from .tokenizer import ANCHOR, HEADER_END

IGNORE = -100  # label of positions without loss


def load_jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt_texts(record: dict, segmentation: str) -> List[str]:
    if "segments" in record:
        return list(record["segments"])
    return segment_prompt_text(record["prompt"], segmentation)


def record_texts(record: dict) -> List[str]:
    """The plain texts of a record, for training a tokenizer."""
    texts = list(record["segments"]) if "segments" in record else [record["prompt"]]
    return texts + [record["output"]]


def make_span_vocab(sp, max_header_tokens: int) -> SpanVocab:
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    return SpanVocab(sp.piece_to_id(ANCHOR), sp.piece_to_id(HEADER_END), max_header_tokens,
                     pieces)


@dataclass
class Example:
    ids: List[int]    # prompt then output (EOS last)
    prompt_len: int

    def __len__(self) -> int:
        return len(self.ids)


def encode_record(record: dict, sp, vocab: SpanVocab, segmentation: str) -> Example:
    prompt = encode_prompt(sp, vocab.anchor_id, prompt_texts(record, segmentation))
    output = sp.encode(record["output"]) + [sp.eos_id()]
    return Example(list(prompt) + list(output), len(prompt))


def example_mask(ex: Example, vocab: SpanVocab, mode: str = SELF_SELECTED) -> torch.Tensor:
    """bool [T, T]: mask[q, k] is True when position q attends position k, as the server's
    request mode `mode` decides (DENSE: causal, headers still parsed)."""
    return attention_mask(track(vocab, ex.ids, ex.prompt_len, mode))


def malformed_segments(ex: Example, vocab: SpanVocab) -> int:
    return track(vocab, ex.ids, ex.prompt_len).malformed_count


def collate(examples: Sequence[Example], vocab: SpanVocab, pad_id: int,
            dense: Sequence[bool] = ()) -> dict:
    """Pads to the longest example. Padded positions get no loss and attend only themselves
    (a query with nothing to attend would give NaN); no real position attends them. Examples
    flagged in `dense` get the DENSE mode's causal mask instead of their spans."""
    T = max(len(ex) for ex in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    mask = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)
    for b, ex in enumerate(examples):
        n = len(ex)
        input_ids[b, :n] = torch.tensor(ex.ids)
        labels[b, ex.prompt_len - 1:n - 1] = torch.tensor(ex.ids[ex.prompt_len:])
        mode = DENSE if b < len(dense) and dense[b] else SELF_SELECTED
        mask[b, :n, :n] = example_mask(ex, vocab, mode)
    positions = torch.arange(T).expand(B, T).contiguous()
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
            "positions": positions, "tokens": sum(len(ex) for ex in examples)}


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                bucket_batches: int = 64) -> List[List[int]]:
    """The batches of one epoch, a function of (seed, epoch) alone, so a resumed run at step s
    sees the same batches as an uninterrupted one. The shuffled examples are sorted by length
    within windows of `bucket_batches` batches, so a batch pads little, and the batches are
    shuffled again."""
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    for i in range(0, len(order), window):
        order[i:i + window] = sorted(order[i:i + window], key=lambda j: lengths[j])
    out = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    rng.shuffle(out)
    return out


def batches(examples: Sequence[Example], batch_size: int, seed: int,
            start_step: int = 0) -> Iterator[List[Example]]:
    """Endless stream of batches starting at `start_step`."""
    per_epoch = len(examples) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(examples)} examples are fewer than a batch of {batch_size}")
    lengths = [len(ex) for ex in examples]
    step = start_step
    while True:
        epoch, index = divmod(step, per_epoch)
        for batch in batch_order(lengths, batch_size, seed, epoch)[index:]:
            yield [examples[i] for i in batch]
            step += 1


class CollatedBatches(torch.utils.data.IterableDataset):
    """The stream of `batches` from `start_step`, collated. With DataLoader workers, worker w of
    W collates steps start + w, start + w + W, ...; DataLoader reads workers in turn, so the
    order is the single-process order and a resumed run still sees the same batches."""

    def __init__(self, examples, batch_size, seed, start_step, vocab, pad_id, dense_fraction):
        super().__init__()
        self.examples, self.batch_size, self.seed, self.start_step = \
            examples, batch_size, seed, start_step
        self.vocab, self.pad_id, self.dense_fraction = vocab, pad_id, dense_fraction

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = batches(self.examples, self.batch_size, self.seed, self.start_step)
        for i, batch in enumerate(stream):  # DataLoader reads worker 0 first: i, not the step
            if i % workers == worker:
                step = self.start_step + i
                rng = random.Random(f"dense-{self.seed}-{step}")  # a function of the step
                dense = [rng.random() < self.dense_fraction for _ in batch]
                yield collate(batch, self.vocab, self.pad_id, dense)


def collated_batches(examples, batch_size: int, seed: int, start_step: int, vocab, pad_id: int,
                     workers: int = 0, dense_fraction: float = 0.0) -> Iterator[dict]:
    """Endless collated batches; `workers` > 0 collates in that many processes (the span masks
    are built in Python and would otherwise keep a GPU waiting). A `dense_fraction` of the
    examples, drawn per step, get the DENSE mode's causal mask (see train.py --dense-fraction)."""
    dataset = CollatedBatches(examples, batch_size, seed, start_step, vocab, pad_id,
                              dense_fraction)
    if workers <= 0:
        return iter(dataset)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                            prefetch_factor=4, persistent_workers=True))
