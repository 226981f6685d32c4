"""The span rule of docs/span_rule.md in Python: segments, the header state machine, the attended
ranges of every position and the attention mask, prompt segmentation and prompt encoding.

The C++ engine (engine/core/span_rules.*) implements the same rule;
tests/vectors/span_rule_vectors.json is generated from this module
(training/tools/make_span_vectors.py) and checked by both sides.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

SELF_SELECTED = "self_selected"
DENSE = "dense"
MODES = (SELF_SELECTED, DENSE)

SINK, ANCHOR, HEADER, HEADER_END, CONTENT = "sink", "anchor", "header", "header_end", "content"

SEGMENTATIONS = ("whole", "sentences", "paragraphs", "client")

MAX_REF_DIGITS = 9
# ASCII white space, as C's isspace: the engine works on bytes, so U+00A0 and friends are text.
SPACE = " \t\n\v\f\r"


class SpanVocab:
    """The per-model facts the rule needs: the special ids and each token's piece text."""

    def __init__(self, anchor_id: int, header_end_id: int, max_header_tokens: int,
                 pieces: Sequence[str]):
        self.anchor_id = anchor_id
        self.header_end_id = header_end_id
        self.max_header_tokens = max_header_tokens
        self.pieces = list(pieces)

    def piece(self, token: int) -> str:
        # Ids past the tokenizer (a padded model vocabulary) have no text, as in the engine.
        return self.pieces[token] if 0 <= token < len(self.pieces) else ""


@dataclass
class Segment:
    start: int                  # position of the anchor
    in_prompt: bool
    header_end: int = -1        # position of </a>; -1 while open, never closed, or in the prompt
    malformed: bool = False     # fell back to dense
    star: bool = False          # header `*`: dense by request
    restricted: bool = False    # content attends only sink, references and itself
    header_tokens: int = 0
    header_text: str = ""
    refs: List[int] = field(default_factory=list)


def parse_header(text: str, segment: int) -> Tuple[bool, bool, List[int]]:
    """(valid, star, refs) of a closed header of segment number `segment`."""
    if text == "*":
        return True, True, []
    if text == "":
        return True, False, []
    refs: List[int] = []
    for number in text.split(","):
        # ASCII digits only: str.isdigit would take '²' or Arabic-Indic digits.
        if not (0 < len(number) <= MAX_REF_DIGITS) or any(c not in "0123456789" for c in number):
            return False, False, []
        value = int(number)
        if value >= segment or value in refs:
            return False, False, []
        refs.append(value)
    return True, False, refs


class SpanTracker:
    """Span state of one sequence: the prompt at construction, then output tokens one by one.

    Called as SpanTracker(vocab, prompt_ids, mode) or, in the C++ constructor's order,
    SpanTracker(vocab, mode, prompt_ids).
    """

    def __init__(self, vocab: SpanVocab, prompt_ids=(), mode=SELF_SELECTED):
        if isinstance(prompt_ids, str):
            prompt_ids, mode = mode, prompt_ids
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.vocab = vocab
        self.mode = mode
        self.roles: List[str] = []
        self.segments: List[Segment] = []
        self.malformed_count = 0
        self._header_open = False
        prompt = [int(t) for t in prompt_ids]
        self.prompt_len = len(prompt)
        for token in prompt:
            self._append(token, in_prompt=True)

    def __len__(self) -> int:
        return len(self.roles)

    def append(self, token: int) -> Tuple[str, bool]:
        """Appends an output token; returns (its role, whether it made a segment malformed)."""
        return self._append(int(token), in_prompt=False)

    def _mark_malformed(self, seg: Segment) -> bool:
        seg.malformed = True
        seg.restricted = False
        seg.refs = []
        self.malformed_count += 1
        return True

    def _append(self, token: int, in_prompt: bool) -> Tuple[str, bool]:
        v = self.vocab
        found = False
        if token == v.anchor_id:
            if self._header_open:  # the previous header never closed
                found = self._mark_malformed(self.segments[-1])
            self.segments.append(Segment(start=len(self.roles), in_prompt=in_prompt))
            self._header_open = not in_prompt
            role = ANCHOR
        elif self._header_open:
            seg = self.segments[-1]
            if token == v.header_end_id:
                self._header_open = False
                seg.header_end = len(self.roles)
                self._close_header(seg, len(self.segments) - 1)
                found = seg.malformed
                role = HEADER_END
            elif seg.header_tokens == v.max_header_tokens:
                self._header_open = False  # overflow: the rest of the segment is dense content
                found = self._mark_malformed(seg)
                role = CONTENT
            else:
                seg.header_tokens += 1
                seg.header_text += v.piece(token)
                role = HEADER
        else:
            role = CONTENT if self.segments else SINK
        self.roles.append(role)
        return role, found

    def _close_header(self, seg: Segment, index: int) -> None:
        valid, seg.star, refs = parse_header(seg.header_text, index)
        if not valid:
            self._mark_malformed(seg)
            return
        seg.refs = refs
        seg.restricted = not seg.star and self.mode == SELF_SELECTED

    @property
    def sink_end(self) -> int:
        return self.segments[0].start if self.segments else len(self.roles)

    def segment_of(self, q: int) -> int:
        """Index of the segment holding position q; -1 in the sink."""
        lo, hi = 0, len(self.segments)  # first segment starting after q
        while lo < hi:
            mid = (lo + hi) // 2
            if self.segments[mid].start <= q:
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def segment_end(self, index: int) -> int:
        return self.segments[index + 1].start if index + 1 < len(self.segments) else len(self.roles)

    def is_dense(self, q: int) -> bool:
        """True when position q attends all of [0, q]."""
        self._check(q)
        s = self.segment_of(q)
        if s < 0:
            return True
        seg = self.segments[s]
        return not seg.restricted or q < seg.header_end

    def attended_ranges(self, q: int) -> List[Tuple[int, int]]:
        """Sorted, disjoint, merged half-open ranges that position q attends."""
        if self.is_dense(q):
            return [(0, q + 1)]
        s = self.segment_of(q)
        wanted = [(0, self.sink_end)]
        wanted += [(self.segments[r].start, self.segment_end(r))
                   for r in sorted(self.segments[s].refs)]
        wanted.append((self.segments[s].start, q + 1))
        out: List[Tuple[int, int]] = []
        for begin, end in wanted:
            if begin >= end:
                continue
            if out and out[-1][1] >= begin:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((begin, end))
        return out

    def _check(self, q: int) -> None:
        if not 0 <= q < len(self.roles):
            raise IndexError(f"position {q} is outside the {len(self.roles)} tokens appended")


def attention_mask(tracker: SpanTracker) -> torch.Tensor:
    """bool [T, T]: mask[q, k] is True when position q attends position k."""
    T = len(tracker)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for q in range(T):
        if tracker.is_dense(q):
            continue
        mask[q, :q + 1] = False
        for begin, end in tracker.attended_ranges(q):
            mask[q, begin:end] = True
    return mask


def track(vocab: SpanVocab, tokens: Sequence[int], prompt_len: int,
          mode: str = SELF_SELECTED) -> SpanTracker:
    """A tracker over `tokens`, the first `prompt_len` of them the prompt."""
    tracker = SpanTracker(vocab, tokens[:prompt_len], mode)
    for token in tokens[prompt_len:]:
        tracker.append(token)
    return tracker


# ----------------------------------------------------------------------------- prompts

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=[ \t\n\v\f\r])")
_BLANK_LINE = re.compile(r"\n[ \t\v\f\r]*\n")


def segment_prompt_text(text: str, rule: str) -> List[str]:
    """Cuts a prompt into segment texts by a segmentation rule (`client` is the caller's job:
    its texts are the request's own, so the prompt comes back whole, as for `whole`)."""
    if rule in ("whole", "client"):
        return [text]
    if rule == "sentences":
        cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    elif rule == "paragraphs":
        cuts = [m.start() for m in _BLANK_LINE.finditer(text)]
    else:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {rule!r}")
    pieces = []
    for begin, end in zip([0] + cuts, cuts + [len(text)]):
        piece = text[begin:end].strip(SPACE)
        if piece:
            pieces.append(piece)
    return pieces


def encode_prompt(sp, anchor_id: int, texts: Sequence[str], bos_id: Optional[int] = None
                  ) -> List[int]:
    """[BOS] + concat([anchor] + sp.encode(text)) over the segment texts."""
    ids = [sp.bos_id() if bos_id is None else bos_id]
    for text in texts:
        ids.append(anchor_id)
        ids.extend(sp.encode(text))
    return ids
