"""Scores a generated summary against a summ_data record (pure functions, no server).

The output is in the protocol's format, `<a>2,5</a>First sentence.<a>7</a> Second sentence.`:
one output segment per summary sentence. Output segment k of a document of N sentences is
segment N + k, and its header is parsed by the span rule's own parser (span_rule.parse_header):
- malformed: the header never closed (no `</a>` before the next anchor or the end: it has no
  content then), or it does not parse (not digits and commas, a duplicate, a reference to
  itself or a later segment). A malformed header names nothing. Header overflow is counted in
  tokens, which text does not know: a caller with the server's segments (which report it)
  builds the OutSegment list itself and calls score_segments.
- `*` (dense by request) names every document sentence.
Text before the first anchor belongs to no summary sentence: it is reported (`stray_text`) and
scored by ROUGE-L only.

Each reference sentence is compared with the generated sentence `align` pairs it with: the
order-preserving matching (the reference order is fixed by the document: the order of first
mention) that maximises the summed similarity of the pairs, a pair's similarity being the gold
sources its header names plus the ROUGE-L F of the two sentences. So one missing or extra
sentence costs that sentence, not every sentence after it (`facts_in_place` keeps the count of
generated sentence k against reference sentence k, for comparison). Then:
- header precision = sum over pairs of |refs & gold| / sum over generated sentences of |refs|,
  recall = the same overlap / sum over reference sentences of |gold_k| (document sentences);
- fact accuracy = sentences whose facts are right / max(generated, reference sentences): a
  sentence is right when it holds every gold entity (whole words, case-insensitive) and its
  numbers are exactly the gold numbers (every one present, no other one); a missing or an extra
  sentence counts as wrong;
- ROUGE-L F (rouge.py) of all generated content against the reference summary.
`aggregate` sums the counts over records (micro averages) and averages ROUGE-L.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from .rouge import rouge_l
from .span_rule import parse_header
from .tokenizer import ANCHOR, HEADER_END


@dataclass
class OutSegment:
    text: str                       # the content after the header
    refs: List[int] = field(default_factory=list)  # what the header names (none if malformed)
    malformed: bool = False
    star: bool = False


def parse_summary(output: str, n_prompt: int) -> Tuple[List[OutSegment], str]:
    """(segments, stray text before the first anchor) of a generated output."""
    chunks = output.split(ANCHOR)
    segments = []
    for k, chunk in enumerate(chunks[1:]):
        if HEADER_END not in chunk:
            segments.append(OutSegment("", malformed=True))
            continue
        header, text = chunk.split(HEADER_END, 1)
        valid, star, refs = parse_header(header, n_prompt + k)
        if not valid:
            segments.append(OutSegment(text, malformed=True))
        else:
            segments.append(OutSegment(text, list(range(n_prompt)) if star else refs, False, star))
    return segments, chunks[0]


def numbers_in(text: str) -> List[int]:
    return [int(x) for x in re.findall(r"[0-9]+", text)]


def has_entity(text: str, entity: str) -> bool:
    pattern = r"(?<![A-Za-z0-9])" + re.escape(entity) + r"(?![A-Za-z0-9])"
    return re.search(pattern, " ".join(text.split()), re.IGNORECASE) is not None


def facts_correct(text: str, facts: dict) -> bool:
    """Every gold entity present, and the numbers exactly the gold numbers."""
    return (all(has_entity(text, e) for e in facts["entities"])
            and set(numbers_in(text)) == set(facts["numbers"]))


FACT_ERRORS = ("missing_sentence", "entity", "copied_number", "derived_number", "extra_number")


def fact_errors(text: "str | None", facts: dict) -> List[str]:
    """Why a sentence's facts are wrong (empty when facts_correct): a gold entity missing, a
    number copied from a source missing, the difference or total missing, or a number that is
    no gold number. `text` None: no generated sentence in this slot."""
    if text is None:
        return ["missing_sentence"]
    found, gold = set(numbers_in(text)), set(facts["numbers"])
    derived = facts.get("derived")
    copied = set(derived["of"]) if derived else gold
    errors = []
    if not all(has_entity(text, e) for e in facts["entities"]):
        errors.append("entity")
    if not copied <= found:
        errors.append("copied_number")
    if derived and derived["value"] not in found:
        errors.append("derived_number")
    if found - gold:
        errors.append("extra_number")
    return errors


@dataclass
class SummaryScore:
    sentences_ref: int = 0
    sentences_out: int = 0
    malformed: int = 0
    star: int = 0
    header_overlap: int = 0     # sum_k |refs_k & gold_k|
    header_named: int = 0       # sum of |refs_k| over generated sentences
    header_gold: int = 0        # sum of |gold_k| over reference sentences
    facts_correct: int = 0
    facts_in_place: int = 0     # generated sentence k right against reference sentence k
    sentence_facts: List[bool] = field(default_factory=list)  # per reference sentence
    # per reference sentence: its facts' type (who, compare, total) and fact_errors
    sentence_types: List[str] = field(default_factory=list)
    sentence_errors: List[List[str]] = field(default_factory=list)
    rouge_l: float = 0.0        # F
    stray_text: bool = False

    @property
    def header_precision(self) -> float:
        return _ratio(self.header_overlap, self.header_named)

    @property
    def header_recall(self) -> float:
        return _ratio(self.header_overlap, self.header_gold)

    @property
    def fact_accuracy(self) -> float:
        return _ratio(self.facts_correct, max(self.sentences_out, self.sentences_ref))

    @property
    def malformed_rate(self) -> float:
        return self.malformed / self.sentences_out if self.sentences_out else 0.0


def _ratio(part: int, whole: int) -> float:
    """part / whole; with nothing to count (0 / 0) the score is perfect."""
    return part / whole if whole else 1.0


def align(record: dict, segments: Sequence[OutSegment]) -> List[Optional[int]]:
    """For each reference sentence, the index of the generated sentence it is scored against, or
    None: the order-preserving matching of largest summed similarity (gold sources named plus
    the ROUGE-L F of the sentences); a pair of similarity 0 never matches, and ties keep the
    sentences in place."""
    gold_refs, reference = record["alignment"], record["reference"]
    n, m = len(gold_refs), len(segments)
    sim = [[len(set(seg.refs) & set(gold)) + rouge_l(ref, seg.text).fmeasure for seg in segments]
           for gold, ref in zip(gold_refs, reference)]
    # best[k][j]: the largest sum over reference sentences k.. and generated sentences j..
    best = [[0.0] * (m + 1) for _ in range(n + 1)]
    for k in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            pair = sim[k][j] + best[k + 1][j + 1] if sim[k][j] > 0 else -1.0
            best[k][j] = max(pair, best[k + 1][j], best[k][j + 1])
    pairs: List[Optional[int]] = [None] * n
    k = j = 0
    while k < n and j < m:
        if sim[k][j] > 0 and best[k][j] == sim[k][j] + best[k + 1][j + 1]:
            pairs[k] = j
            k, j = k + 1, j + 1
        elif best[k][j] == best[k + 1][j]:
            k += 1
        else:
            j += 1
    return pairs


def score_segments(record: dict, segments: Sequence[OutSegment], stray: str = "") -> SummaryScore:
    gold_refs, gold_facts = record["alignment"], record["facts"]
    s = SummaryScore(sentences_ref=len(gold_refs), sentences_out=len(segments),
                     stray_text=bool(stray.strip()))
    s.malformed = sum(seg.malformed for seg in segments)
    s.star = sum(seg.star for seg in segments)
    s.header_named = sum(len(seg.refs) for seg in segments)
    s.header_gold = sum(len(g) for g in gold_refs)
    for k, (gold, facts, j) in enumerate(zip(gold_refs, gold_facts, align(record, segments))):
        seg = segments[j] if j is not None else None
        s.header_overlap += len(set(seg.refs) & set(gold)) if seg else 0
        s.sentence_facts.append(seg is not None and facts_correct(seg.text, facts))
        s.sentence_types.append(facts.get("type", "?"))
        s.sentence_errors.append(fact_errors(seg.text if seg else None, facts))
        s.facts_in_place += k < len(segments) and facts_correct(segments[k].text, facts)
    s.facts_correct = sum(s.sentence_facts)
    generated = stray + "".join(seg.text for seg in segments)
    s.rouge_l = rouge_l(" ".join(record["reference"]), generated).fmeasure
    return s


def score_output(record: dict, output: str) -> SummaryScore:
    segments, stray = parse_summary(output, len(record["segments"]))
    return score_segments(record, segments, stray)


def aggregate(scores: Sequence[SummaryScore]) -> dict:
    """Micro averages over records (ROUGE-L: the mean of the records' F)."""
    total = SummaryScore()
    for s in scores:
        for name in ("sentences_ref", "sentences_out", "malformed", "star", "header_overlap",
                     "header_named", "header_gold", "facts_correct", "facts_in_place"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    # fact accuracy over records: each record's denominator is its max(generated, reference)
    slots = sum(max(s.sentences_out, s.sentences_ref) for s in scores)
    return {"records": len(scores), "sentences_ref": total.sentences_ref,
            "sentences_out": total.sentences_out,
            "fact_accuracy": _ratio(total.facts_correct, slots),
            "fact_accuracy_in_place": _ratio(total.facts_in_place, slots),
            "header_precision": total.header_precision, "header_recall": total.header_recall,
            "malformed_rate": total.malformed_rate, "star_headers": total.star,
            "rouge_l": sum(s.rouge_l for s in scores) / len(scores) if scores else 0.0,
            "stray_text": sum(s.stray_text for s in scores),
            **fact_breakdown(scores)}


def fact_breakdown(scores: Sequence[SummaryScore]) -> dict:
    """Reference sentences by type (who, compare, total): how many, the fraction right, and the
    fraction with each fact error (a sentence can have several)."""
    by_type: dict = {}
    for s in scores:
        for kind, right, errors in zip(s.sentence_types, s.sentence_facts, s.sentence_errors):
            t = by_type.setdefault(kind, {"sentences": 0, "right": 0,
                                          **{e: 0 for e in FACT_ERRORS}})
            t["sentences"] += 1
            t["right"] += right
            for e in errors:
                t[e] += 1
    return {"facts_by_type": {
        kind: {"sentences": t["sentences"], "fact_accuracy": t["right"] / t["sentences"],
               "errors": {e: t[e] / t["sentences"] for e in FACT_ERRORS}}
        for kind, t in sorted(by_type.items())}}
