"""Summarisation data in the span protocol: each summary sentence names its article sentences.

Input: JSONL of {"article", "summary"}. The article is cut by the serving rule
(segment_prompt_text(article, "sentences")): its sentences are the prompt segments 0..N-1.
The summary is cut the same way; each summary sentence becomes one output segment whose header
lists the article sentences it draws from:

    <a>2,5</a>First summary sentence.<a>7</a> Second summary sentence.

(every sentence after the first keeps a leading space, so the visible text reads right).

Alignment, per summary sentence, by greedy ROUGE: start from the empty set; repeatedly add the
article sentence that most raises ROUGE-1 F1 + ROUGE-2 F1 of the chosen set against the summary
sentence; stop when no sentence raises it or when 3 are chosen. Ties go to the earlier sentence.
ROUGE here: lower-cased alphanumeric words, no stemming, no stop-word removal; n-grams are
counted within each sentence (no bigram spans two article sentences) and summed over the set.
The ids are written in increasing order. A summary sentence that shares no word with the article
gets the empty header `<a></a>` (sink and itself only).

Output records: {"segments": [article sentences], "output", "alignment": [[ids], ...]}.
CLI: python3 -m spanserve_train.summ_annotate in.jsonl out.jsonl
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import List, Sequence

from .span_rule import segment_prompt_text
from .tokenizer import ANCHOR, HEADER_END

MAX_REFS = 3


def words(text: str) -> List[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def f1(candidate: Counter, reference: Counter) -> float:
    overlap = sum((candidate & reference).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(candidate.values())
    recall = overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def align_sentence(sentence: str, article: List[str], max_refs: int = MAX_REFS) -> List[int]:
    """Greedy ROUGE-1 + ROUGE-2 F1 choice of article sentences for one summary sentence."""
    ref = [ngrams(words(sentence), n) for n in (1, 2)]
    grams = [[ngrams(words(s), n) for n in (1, 2)] for s in article]
    chosen: List[int] = []
    sums = [Counter(), Counter()]
    best = 0.0
    while len(chosen) < max_refs:
        pick, pick_score = -1, best
        for i in range(len(article)):
            if i in chosen:
                continue
            score = sum(f1(sums[n] + grams[i][n], ref[n]) for n in (0, 1))
            if score > pick_score:
                pick, pick_score = i, score
        if pick < 0:
            break
        chosen.append(pick)
        sums = [sums[n] + grams[pick][n] for n in (0, 1)]
        best = pick_score
    return sorted(chosen)


def make_output(summary_sentences: List[str], alignment: List[List[int]]) -> str:
    parts = []
    for k, (sentence, refs) in enumerate(zip(summary_sentences, alignment)):
        header = ",".join(str(r) for r in refs)
        parts.append(f"{ANCHOR}{header}{HEADER_END}{' ' if k else ''}{sentence}")
    return "".join(parts)


def annotate(article: str, summary: str, max_refs: int = MAX_REFS) -> dict:
    segments = segment_prompt_text(article, "sentences")
    summary_sentences = segment_prompt_text(summary, "sentences")
    alignment = [align_sentence(s, segments, max_refs) for s in summary_sentences]
    return {"segments": segments, "output": make_output(summary_sentences, alignment),
            "alignment": alignment}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Annotates summaries with span headers.")
    parser.add_argument("input", help="JSONL with an article and a summary per line")
    parser.add_argument("output", help="JSONL of {segments, output, alignment}")
    parser.add_argument("--article-field", default="article")
    parser.add_argument("--summary-field", default="summary", help="e.g. highlights")
    parser.add_argument("--max-refs", type=int, default=MAX_REFS)
    parser.add_argument("--max-article-sentences", type=int, default=0,
                        help="skip longer articles (0: keep all)")
    args = parser.parse_args(argv)
    kept = skipped = refs = empty = sentences = 0
    with open(args.input, encoding="utf-8") as fin, \
            open(args.output, "w", encoding="utf-8") as fout:
        for line in fin:
            if not line.strip():
                continue
            raw = json.loads(line)
            record = annotate(raw[args.article_field], raw[args.summary_field], args.max_refs)
            too_long = 0 < args.max_article_sentences < len(record["segments"])
            if too_long or not record["segments"] or not record["alignment"]:
                skipped += 1
                continue
            fout.write(json.dumps(record) + "\n")
            kept += 1
            sentences += len(record["alignment"])
            refs += sum(len(a) for a in record["alignment"])
            empty += sum(1 for a in record["alignment"] if not a)
    print(f"{kept} records written, {skipped} skipped; {sentences} summary sentences, "
          f"{refs / max(1, sentences):.2f} references each, {empty} with none")


if __name__ == "__main__":
    main()
