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
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .span_rule import DENSE, SELF_SELECTED, SpanVocab, attention_mask, encode_prompt, \
    segment_prompt_text, track
from .model import SpanRows
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


def _pack_lines(job) -> tuple:
    """(Packed, kept, dropped, malformed) of JSONL lines [begin, end) of a file."""
    import sentencepiece as spm
    path, begin, end, tokenizer_path, max_header_tokens, segmentation, max_len = job
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    vocab = make_span_vocab(sp, max_header_tokens)
    examples, layouts, dropped, malformed = [], [], 0, 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= end:
                break
            if i < begin or not line.strip():
                continue
            ex = encode_record(json.loads(line), sp, vocab, segmentation)
            if len(ex) > max_len:
                dropped += 1
                continue
            tracker = track(vocab, ex.ids, ex.prompt_len)
            malformed += tracker.malformed_count
            examples.append(ex)
            layouts.append(span_layout(tracker))
    return Packed(examples, layouts), len(examples), dropped, malformed


def pack_jsonl(path: str, tokenizer_path: str, max_header_tokens: int, segmentation: str,
               max_len: int, workers: int = 0) -> tuple:
    """(Packed, kept, dropped, malformed) of a JSONL file, examples longer than max_len dropped;
    `workers` processes take contiguous slices, so the order is the file's."""
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    pieces = max(1, workers)
    jobs = [(path, n * w // pieces, n * (w + 1) // pieces, tokenizer_path, max_header_tokens,
             segmentation, max_len) for w in range(pieces)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_pack_lines, jobs)
    else:
        results = [_pack_lines(job) for job in jobs]
    return (Packed.concat([r[0] for r in results]),
            *(sum(r[k] for r in results) for k in (1, 2, 3)))


# ----------------------------------------------------------------------------- span layouts
#
# A [T, T] mask per example is T^2 bytes made in Python; a batch's masks would keep a GPU
# waiting. What the rule decides fits in O(T): each position's segment (-1 in the sink),
# whether the position attends densely, and which earlier segments each segment names. The
# mask follows (layout_mask, on any device): q attends k <= q when q is dense, or k is in the
# sink, in q's own segment or in a segment q's segment names. tests/python/test_span_batches.py
# checks it against span_rule.attention_mask.

@dataclass
class Layout:
    segment: List[int]          # per position; -1 in the sink
    dense: List[bool]           # per position: attends all of [0, q]
    refs: List[Tuple[int, int]]  # (segment, a segment it names), restricted segments only


def span_layout(tracker) -> Layout:
    """The layout of a tracker's positions: tracker.is_dense(q) segment by segment (a
    restricted segment is dense up to its header's end, any other one all through)."""
    T, segments = len(tracker), tracker.segments
    segment, dense = [-1] * tracker.sink_end, [True] * tracker.sink_end
    for i, seg in enumerate(segments):
        n = (segments[i + 1].start if i + 1 < len(segments) else T) - seg.start
        segment += [i] * n
        head = seg.header_end - seg.start if seg.restricted else n
        dense += [True] * head + [False] * (n - head)
    refs = [(i, r) for i, seg in enumerate(tracker.segments) if seg.restricted for r in seg.refs]
    return Layout(segment, dense, refs)


def _named_keys(row_segment: torch.Tensor, segment: torch.Tensor,
                refs: torch.Tensor) -> torch.Tensor:
    """bool [B, Q, T]: the keys a row of segment row_segment[b, i] may read by segment (its
    own, those it names, the sink), before causality and padding."""
    S = refs.shape[1]

    def onehot(seg):
        return (F.one_hot(seg.clamp(min=0), S) * (seg >= 0)[..., None]).float()  # [B, *, S]
    rows = onehot(row_segment)
    named = torch.bmm(rows, refs.float()) + rows  # segments the row reads whole (or causally)
    wanted = torch.bmm(named, onehot(segment).transpose(1, 2)) > 0
    return wanted | (segment < 0)[:, None, :]  # the sink


def layout_mask(segment: torch.Tensor, dense: torch.Tensor, refs: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
    """bool [B, T, T] from segment [B, T] (long, -1 sink), dense [B, T] (bool), refs [B, S, S]
    (bool, refs[b, s, r]: segment s names r) and lengths [B]. Positions past an example's length
    are padding: no real position attends them and they attend only themselves."""
    B, T = segment.shape
    pos = torch.arange(T, device=segment.device)
    valid = pos[None] < lengths[:, None]
    wanted = _named_keys(segment, segment, refs)
    mask = (pos[:, None] >= pos[None, :]) & (dense[:, :, None] | wanted)
    mask &= valid[:, None, :] & valid[:, :, None]
    return mask | (torch.eye(T, dtype=torch.bool, device=segment.device) & ~valid[:, :, None])


def span_rows(segment: torch.Tensor, dense: torch.Tensor, refs: torch.Tensor,
              lengths: torch.Tensor) -> SpanRows:
    """layout_mask as SpanRows: the restricted rows (real, not dense) with their masks; every
    other real row of layout_mask is causal. Padding rows differ (causal here), but nothing
    reads them and they carry no loss."""
    B, T = segment.shape
    pos = torch.arange(T, device=segment.device)
    valid = pos[None] < lengths[:, None]
    listed = valid & ~dense
    b, t = listed.nonzero(as_tuple=True)
    slot = (listed.cumsum(1) - 1)[b, t]
    counts = listed.sum(1)
    O = int(counts.max()) if b.numel() else 0
    row_segment = segment.new_full((B, O), -1).index_put((b, slot), segment[b, t])
    row_pos = segment.new_zeros((B, O)).index_put((b, slot), t)
    used = torch.arange(O, device=segment.device) < counts[:, None]
    mask = (row_pos[:, :, None] >= pos) & _named_keys(row_segment, segment, refs)
    mask &= valid[:, None, :]
    mask[:, :, 0] |= ~used  # an unused slot reads key 0, not nothing (NaN)
    return SpanRows(b, t, slot, mask)


def batch_rows(batch: dict, device=None) -> SpanRows:
    """The batch's span mask as SpanRows, made on `device` from its layout."""
    return span_rows(*(batch[k].to(device) for k in ("segment", "dense", "refs", "lengths")))


class Packed:
    """Examples with their SELF_SELECTED layouts, flat in numpy arrays (cheap to slice in
    DataLoader workers, which share them with the parent)."""

    def __init__(self, examples: Sequence[Example], layouts: Sequence[Layout]):
        lengths = [len(ex) for ex in examples]
        self.starts = np.zeros(len(examples) + 1, dtype=np.int64)
        self.starts[1:] = np.cumsum(lengths)
        self.ids = np.fromiter((t for ex in examples for t in ex.ids), np.int32, self.starts[-1])
        self.segment = np.fromiter((s for lo in layouts for s in lo.segment), np.int16,
                                   self.starts[-1])
        self.dense = np.fromiter((d for lo in layouts for d in lo.dense), np.bool_,
                                 self.starts[-1])
        self.prompt_len = np.array([ex.prompt_len for ex in examples], dtype=np.int32)
        self.segments = np.array([max(lo.segment, default=-1) + 1 for lo in layouts], np.int32)
        self.ref_starts = np.zeros(len(examples) + 1, dtype=np.int64)
        self.ref_starts[1:] = np.cumsum([len(lo.refs) for lo in layouts])
        self.refs = np.array([r for lo in layouts for r in lo.refs], np.int32).reshape(-1, 2)

    @classmethod
    def of(cls, examples: Sequence[Example], vocab: SpanVocab) -> "Packed":
        return cls(examples, [span_layout(track(vocab, ex.ids, ex.prompt_len))
                              for ex in examples])

    @classmethod
    def concat(cls, parts: Sequence["Packed"]) -> "Packed":
        out = cls([], [])
        for name in ("ids", "segment", "dense", "prompt_len", "segments", "refs"):
            setattr(out, name, np.concatenate([getattr(p, name) for p in parts]))
        for name in ("starts", "ref_starts"):
            offsets = np.cumsum([0] + [getattr(p, name)[-1] for p in parts])
            setattr(out, name, np.concatenate([[0]] + [getattr(p, name)[1:] + o
                                                       for p, o in zip(parts, offsets)]))
        return out

    def __len__(self) -> int:
        return len(self.prompt_len)

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


def collate_packed(packed: Packed, indices: Sequence[int], pad_id: int,
                   dense: Sequence[bool] = (), with_mask: bool = True, pad_to: int = 1) -> dict:
    """A padded batch of packed examples: input_ids, labels, positions, the layout tensors
    (segment, dense, refs, lengths) and, with_mask, attention_mask [B, T, T] made from them.
    Examples flagged in `dense` attend densely everywhere (the DENSE mode's mask). T is the
    longest example's length rounded up to a multiple of `pad_to` (fused attention kernels
    want aligned rows: a key length off the alignment makes a padded copy of the mask)."""
    lengths = packed.lengths()[list(indices)]
    B, T = len(indices), -(-int(lengths.max()) // pad_to) * pad_to
    S = max(1, int(packed.segments[list(indices)].max()))
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE, dtype=np.int64)
    segment = np.full((B, T), -1, dtype=np.int64)
    dense_rows = np.zeros((B, T), dtype=np.bool_)
    refs = np.zeros((B, S, S), dtype=np.bool_)
    for b, i in enumerate(indices):
        lo, hi, p = packed.starts[i], packed.starts[i + 1], packed.prompt_len[i]
        n = hi - lo
        input_ids[b, :n] = packed.ids[lo:hi]
        labels[b, p - 1:n - 1] = packed.ids[lo + p:hi]
        segment[b, :n] = packed.segment[lo:hi]
        dense_rows[b, :n] = True if b < len(dense) and dense[b] else packed.dense[lo:hi]
        pairs = packed.refs[packed.ref_starts[i]:packed.ref_starts[i + 1]]
        refs[b, pairs[:, 0], pairs[:, 1]] = True
    batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
             "positions": torch.arange(T).expand(B, T).contiguous(),
             "segment": torch.from_numpy(segment), "dense": torch.from_numpy(dense_rows),
             "refs": torch.from_numpy(refs), "lengths": torch.from_numpy(lengths.astype(np.int64)),
             "tokens": int(lengths.sum())}
    if with_mask:
        batch["attention_mask"] = batch_mask(batch)
    return batch


def batch_mask(batch: dict, device=None) -> torch.Tensor:
    """The batch's attention mask, made on `device` from its layout (or as collated)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].to(device)
    return layout_mask(*(batch[k].to(device) for k in ("segment", "dense", "refs", "lengths")))


def collate(examples: Sequence[Example], vocab: SpanVocab, pad_id: int,
            dense: Sequence[bool] = ()) -> dict:
    """Pads to the longest example. Padded positions get no loss and attend only themselves
    (a query with nothing to attend would give NaN); no real position attends them. Examples
    flagged in `dense` get the DENSE mode's causal mask instead of their spans."""
    return collate_packed(Packed.of(examples, vocab), range(len(examples)), pad_id, dense)


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
    for batch in batch_indices([len(ex) for ex in examples], batch_size, seed, start_step):
        yield [examples[i] for i in batch]


def batch_indices(lengths: Sequence[int], batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[List[int]]:
    """Endless stream of the examples' indices of each batch, from `start_step`."""
    per_epoch = len(lengths) // batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(lengths)} examples are fewer than a batch of {batch_size}")
    step = start_step
    while True:
        epoch, index = divmod(step, per_epoch)
        for batch in batch_order(lengths, batch_size, seed, epoch)[index:]:
            yield batch
            step += 1


class CollatedBatches(torch.utils.data.IterableDataset):
    """The stream of `batch_indices` from `start_step`, collated. With DataLoader workers,
    worker w of W collates steps start + w, start + w + W, ...; DataLoader reads workers in
    turn, so the order is the single-process order and a resumed run still sees the same
    batches."""

    def __init__(self, packed, batch_size, seed, start_step, pad_id, dense_fraction, with_mask,
                 pad_to=1):
        super().__init__()
        self.packed, self.batch_size, self.seed, self.start_step = \
            packed, batch_size, seed, start_step
        self.pad_id, self.dense_fraction, self.with_mask = pad_id, dense_fraction, with_mask
        self.pad_to = pad_to

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream = batch_indices(self.packed.lengths().tolist(), self.batch_size, self.seed,
                               self.start_step)
        for i, batch in enumerate(stream):  # DataLoader reads worker 0 first: i, not the step
            if i % workers == worker:
                step = self.start_step + i
                rng = random.Random(f"dense-{self.seed}-{step}")  # a function of the step
                dense = [rng.random() < self.dense_fraction for _ in batch]
                yield collate_packed(self.packed, batch, self.pad_id, dense, self.with_mask,
                                     self.pad_to)


def collated_batches(examples, batch_size: int, seed: int, start_step: int, vocab, pad_id: int,
                     workers: int = 0, dense_fraction: float = 0.0,
                     with_mask: bool = True, pad_to: int = 1) -> Iterator[dict]:
    """Endless collated batches of `examples` (a list of Example, or Packed); `workers` > 0
    collates in that many processes. A `dense_fraction` of the examples, drawn per step, get
    the DENSE mode's causal mask (see train.py --dense-fraction). Without with_mask a batch
    carries only its layout: batch_mask makes the mask where it is used (on the GPU)."""
    packed = examples if isinstance(examples, Packed) else Packed.of(examples, vocab)
    dataset = CollatedBatches(packed, batch_size, seed, start_step, pad_id, dense_fraction,
                              with_mask, pad_to)
    if workers <= 0:
        return iter(dataset)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                            prefetch_factor=4, persistent_workers=True))
