"""ROUGE-1, ROUGE-2 and ROUGE-L (precision, recall, F1), with rouge-score's conventions.

Debian packages no ROUGE (no python3-rouge-score), so this is a small implementation of what
google-research's rouge-score computes by default: text lower-cased and cut into runs of ASCII
letters and digits (everything else separates tokens), no stemming, no stop words.
- ROUGE-N: clipped n-gram overlap; P = overlap / prediction n-grams, R = overlap / target
  n-grams.
- ROUGE-L: the longest common subsequence of the two token lists (the whole text, rouge-score's
  `rougeL`, not the per-sentence `rougeLsum`); P = LCS / prediction tokens, R = LCS / target.
- F = 2PR / (P + R), 0 when P + R = 0. An empty target or prediction scores 0, 0, 0.
Arguments are (target, prediction), in rouge-score's order.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

from .summ_annotate import ngrams, words as tokenize


class Score(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


def _score(overlap: int, target_count: int, prediction_count: int) -> Score:
    precision = overlap / prediction_count if prediction_count else 0.0
    recall = overlap / target_count if target_count else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Score(precision, recall, f)


def rouge_n(target: str, prediction: str, n: int) -> Score:
    t, p = ngrams(tokenize(target), n), ngrams(tokenize(prediction), n)
    return _score(sum((t & p).values()), sum(t.values()), sum(p.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one row of the table at a time)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], (diagonal + 1 if x == y else max(row[j], row[j - 1]))
    return row[-1]


def rouge_l(target: str, prediction: str) -> Score:
    t, p = tokenize(target), tokenize(prediction)
    return _score(lcs_length(t, p), len(t), len(p))


def score(target: str, prediction: str) -> Dict[str, Score]:
    """{"rouge1", "rouge2", "rougeL"} -> Score, as rouge_scorer.RougeScorer(...).score."""
    return {"rouge1": rouge_n(target, prediction, 1), "rouge2": rouge_n(target, prediction, 2),
            "rougeL": rouge_l(target, prediction)}


def mean_scores(scores: List[Dict[str, Score]]) -> Dict[str, Score]:
    """Per-metric mean of precision, recall and F over examples (each example counts once)."""
    if not scores:
        return {}
    out = {}
    for name in scores[0]:
        values = [s[name] for s in scores]
        out[name] = Score(*(sum(v[i] for v in values) / len(values) for i in range(3)))
    return out

