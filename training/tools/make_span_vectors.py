"""Writes tests/vectors/span_rule_vectors.json: the span rule's answers (training/spanserve_train/
span_rule.py) on hand-written cases for every row of docs/span_rule.md, seeded random fuzz cases
and prompt segmentation cases. The C++ tests (tests/cpp/test_span_rules.cc) check the engine
against them; tests/python/test_span_rule.py checks that this script reproduces the committed file.

    /usr/bin/python3 training/tools/make_span_vectors.py [--out PATH]

Deterministic: same code, same file.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spanserve_train.span_rule import (DENSE, SELF_SELECTED, SpanTracker, SpanVocab,  # noqa: E402
                                       segment_prompt_text)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "vectors", "span_rule_vectors.json")

# A synthetic vocabulary: single digits, multi-digit pieces, pieces mixing digits and commas,
# SentencePiece's space marker, a non-ASCII digit, and text.
PIECES = ["<unk>", "<s>", "</s>", "<a>", "</a>"] + [str(d) for d in range(10)] + [
    ",", "*", "12", "3,", ",1", "x", "▁y", "▁", ".", "1234567890", "000000000", "²", "*,"]
# The same pieces in another order, so that no id is taken for granted.
PIECES_B = list(reversed(PIECES))

FUZZ_CASES = 240
SEED = 20240415


class Builder:
    """Token ids from piece names written with spaces between them."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.ids = {p: i for i, p in enumerate(pieces)}

    def __call__(self, text: str):
        return [self.ids[p] for p in text.split()]

    def vocab(self, max_header_tokens: int) -> SpanVocab:
        return SpanVocab(self.ids["<a>"], self.ids["</a>"], max_header_tokens, self.pieces)


def run_case(name, pieces, prompt, output, max_header_tokens=8, mode=SELF_SELECTED):
    b = Builder(pieces)
    vocab = b.vocab(max_header_tokens)
    tracker = SpanTracker(vocab, prompt, mode)
    malformed_at = []
    for p, token in enumerate(output, start=len(prompt)):
        if tracker.append(token)[1]:
            malformed_at.append(p)
    tokens = list(prompt) + list(output)
    segments = [{"start": s.start, "header_end": s.header_end, "in_prompt": s.in_prompt,
                 "malformed": s.malformed, "star": s.star, "restricted": s.restricted,
                 "refs": list(s.refs)} for s in tracker.segments]
    return {
        "name": name, "pieces": pieces, "anchor_id": vocab.anchor_id,
        "header_end_id": vocab.header_end_id, "max_header_tokens": max_header_tokens,
        "mode": mode, "prompt_len": len(prompt), "tokens": tokens,
        "expected": {
            "ranges": [[list(r) for r in tracker.attended_ranges(q)] for q in range(len(tokens))],
            "roles": list(tracker.roles),
            "segments": segments,
            "malformed_count": tracker.malformed_count,
            "malformed_at": malformed_at,
        },
    }


# (name, prompt, output, max_header_tokens, mode), pieces written with spaces between them.
P1 = "<s> <a> x ▁y ."                      # one prompt segment
P3 = "<s> x <a> x x <a> ▁y <a> . x"        # sink of two tokens, three prompt segments
P13 = "<s>" + " <a> x" * 13                # thirteen prompt segments, 0..12
HAND = [
    # The protocol's arithmetic chain: step k references step k-1.
    ("arith_chain", "<s> <a> x x x", "<a> 0 </a> x x <a> 1 </a> x x <a> 2 </a> x <a> 3 </a> x </s>"),
    ("arith_chain_dense", "<s> <a> x x x",
     "<a> 0 </a> x x <a> 1 </a> x x <a> 2 </a> x <a> 3 </a> x </s>", 8, DENSE),
    ("valid_chain_several_refs", P3, "<a> 0 , 2 </a> x x <a> 3 , 1 </a> x"),
    ("multi_digit_pieces", P13, "<a> 12 , 3 </a> x <a> 3, 12 </a> x <a> 1 2 ,1 </a> x"),
    ("leading_zeros", P3, "<a> 0 2 </a> x <a> 000000000 , 1 </a> x"),
    ("nine_digits_ok_ten_malformed", P3,
     "<a> 000000000 </a> x <a> 0 000000000 </a> x <a> 1234567890 </a> x"),
    ("empty_header", P3, "<a> </a> x x <a> </a> x"),
    ("star", P3, "<a> * </a> x x <a> 0 </a> x"),
    ("star_then_more_is_malformed", P3, "<a> *, 0 </a> x <a> * * </a> x"),
    ("letter_in_header", P3, "<a> 0 x </a> x x"),
    ("space_marker_in_header", P3, "<a> ▁ 0 </a> x <a> ▁y </a> x"),
    ("non_ascii_digit_in_header", P3, "<a> ² </a> x"),
    ("eos_in_header", P3, "<a> 0 </s> </a> x"),
    ("ref_to_self", P3, "<a> 3 </a> x x"),
    ("ref_to_later_segment", P3, "<a> 7 </a> x <a> 3 </a> x"),
    ("duplicate_refs", P3, "<a> 0 , 0 </a> x <a> 1 , 0 , 1 </a> x"),
    ("duplicate_refs_by_value", P3, "<a> 0 , 0 0 </a> x"),
    ("double_comma", P3, "<a> 0 , , 1 </a> x <a> 1 ,1 </a> x"),
    ("trailing_comma", P3, "<a> 0 , </a> x <a> 3, </a> x"),
    ("leading_comma", P3, "<a> , 0 </a> x <a> ,1 </a> x"),
    ("overflow_exactly_m_is_fine", P3, "<a> 0 , 1 </a> x x", 3),
    ("overflow_m_plus_one", P3, "<a> 0 , 1 , 2 </a> x <a> 0 </a> x", 3),
    ("overflow_m_is_one", P3, "<a> 1 0 </a> x <a> * </a> x", 1),
    ("overflow_then_anchor_ends_header_normally", P3, "<a> 0 , 1 <a> 0 </a> x", 3),
    ("header_interrupted_by_anchor", P3, "<a> 0 <a> 1 </a> x <a> <a> 0 </a> x"),
    ("header_open_at_end", P3, "<a> 0 </a> x <a> 0 , 1"),
    ("anchor_open_at_end", P3, "<a> 2 </a> x <a>"),
    ("stray_header_end_in_content", P3, "<a> 0 </a> x </a> x </a>"),
    ("stray_header_end_in_prompt", "<s> </a> <a> x </a> 0 <a> </a> x", "<a> 1 </a> x </a>"),
    ("header_syntax_in_prompt_is_content", "<s> <a> 0 </a> x <a> * </a> x", "<a> 1 </a> x"),
    ("sink_tokens", "<s> x x <a> x x", "<a> 0 </a> x <a> </a> x"),
    ("several_prompt_segments", P3, "<a> 1 </a> x x <a> 0 , 2 , 3 </a> x"),
    ("output_before_first_output_anchor", P1, "x x <a> 0 </a> x x"),
    ("no_anchors_at_all", "<s> x ▁y", "x </a> 0 , </s>"),
    ("no_prompt_anchor_output_anchors", "<s> x", "x <a> </a> x <a> 0 </a> x"),
    ("no_bos_prompt_starts_with_anchor", "<a> x x <a> x", "<a> 0 </a> x <a> 2 </a> x"),
    ("empty_prompt", "", "<a> </a> x <a> 0 </a> x"),
    ("empty_sequence", "", ""),
    ("refs_to_prompt_and_output", P3, "<a> 1 </a> x x <a> 3 , 0 </a> x <a> 4 , 2 </a> x"),
    ("adjacent_ranges_merge", P3, "<a> 0 , 1 </a> x <a> 2 , 3 </a> x <a> 1 , 0 , 3 , 4 </a> x"),
    ("sink_merges_with_segment_zero", P3, "<a> 0 </a> x <a> 1 , 0 </a> x"),
    ("ref_to_malformed_segment", P3, "<a> x </a> x x <a> 3 </a> x"),
    ("ref_to_unfinished_range_grows", P3, "<a> 2 </a> x <a> </a> x x x"),
    ("dense_mode_same_segments", P3,
     "<a> 0 , 2 </a> x <a> 3 </a> x <a> 0 x </a> x <a> * </a> x <a> </a> x", 8, DENSE),
    ("dense_mode_malformed_counted", P3, "<a> 0 <a> 9 </a> x <a> 0 , 1 , 2 </a>", 3, DENSE),
    ("malformed_counted_once_each", P3,
     "<a> 9 </a> x </a> <a> 0 , <a> 0 1 2 3 x </a> <a> 5 </a>", 3),
]


def hand_cases():
    b = Builder(PIECES)
    cases = []
    for name, prompt, output, *rest in HAND:
        max_header_tokens = rest[0] if rest else 8
        mode = rest[1] if len(rest) > 1 else SELF_SELECTED
        cases.append(run_case(name, PIECES, b(prompt), b(output), max_header_tokens, mode))
    return cases


# ----------------------------------------------------------------------------- fuzz

CONTENT = ["x", "▁y", "▁", ".", "0", "1", "2", "12", "</s>"]


def header_pieces(rng, segment):
    """Header tokens for a reference list, valid or (sometimes) broken in one way."""
    refs = rng.sample(range(segment), rng.randint(0, min(3, segment))) if segment else []
    text = ",".join(str(r) for r in refs)
    if rng.random() < 0.08:
        text = "*"
    pieces = [c for c in text]
    if rng.random() < 0.3:
        fault = rng.choice(["letter", "dup", "later", "self", "comma", "long", "space", "other"])
        if fault == "letter":
            pieces.insert(rng.randint(0, len(pieces)), "x")
        elif fault == "dup" and refs:
            pieces += [",", str(refs[0])]
        elif fault in ("later", "self"):
            pieces = list(str(segment + (rng.randint(1, 3) if fault == "later" else 0)))
        elif fault == "comma":
            pieces.insert(rng.randint(0, len(pieces)), ",")
        elif fault == "long":
            pieces += [",", "0"] * rng.randint(2, 5)
        elif fault == "space":
            pieces.insert(0, "▁")
        else:
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(["*", "²", "<unk>", "."]))
    # Merge digits into multi-character pieces where the vocabulary has them.
    merged, i = [], 0
    while i < len(pieces):
        two = "".join(pieces[i:i + 2])
        if two in ("12", "3,", ",1", "*,") and rng.random() < 0.5:
            merged.append(two)
            i += 2
        else:
            merged.append(pieces[i])
            i += 1
    return merged


def structured_tokens(rng, first_segment, count):
    """Output segments built from reference lists, some broken; header ends sometimes lost."""
    out = []
    for k in range(count):
        out.append("<a>")
        out += header_pieces(rng, first_segment + k)
        if rng.random() < 0.9:
            out.append("</a>")
        out += [rng.choice(CONTENT + ["</a>"] * 1) for _ in range(rng.randint(0, 4))]
    return out


def random_tokens(rng, count):
    """Token soup biased towards anchors, header ends, digits and commas."""
    pool = (["<a>"] * 5 + ["</a>"] * 5 + [str(d) for d in range(4)] * 3 + [",", ","] * 2 +
            ["12", "3,", ",1", "*", "*,", "x", "▁y", "▁", ".", "1234567890", "000000000", "²",
             "</s>", "<unk>", "9"])
    return [rng.choice(pool) for _ in range(count)]


def fuzz_case(rng, index):
    pieces = PIECES if rng.random() < 0.7 else PIECES_B
    b = Builder(pieces)
    prompt = ["<s>"] if rng.random() < 0.9 else []
    prompt += [rng.choice(CONTENT + ["</a>"]) for _ in range(rng.choice([0, 0, 1, 2]))]
    prompt_segments = rng.randint(0, 4)
    for _ in range(prompt_segments):
        prompt += ["<a>"] + [rng.choice(CONTENT + ["</a>", ","]) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.6:
        output = structured_tokens(rng, prompt_segments, rng.randint(0, 6))
    else:
        output = random_tokens(rng, rng.randint(0, 40))
    max_header_tokens = rng.choice([1, 2, 3, 4, 6, 8])
    mode = DENSE if rng.random() < 0.15 else SELF_SELECTED
    return run_case(f"fuzz_{index:03d}", pieces, b(" ".join(prompt)), b(" ".join(output)),
                    max_header_tokens, mode)


# ----------------------------------------------------------------------------- segmentation

SEGMENTATION_TEXTS = {
    "whole": ["  Keep it as given.  Two sentences.\n", "((3+4)*(5-2))+6=", ""],
    "sentences": [
        'He said "Stop!" Then he left. Did he?',
        "Wait... what?! Really.",
        "Dr. Smith met Mr. Jones at 3 p.m. today. Abbreviations are cut.",
        "Pi is 3.14 exactly.Still one. Yes.",
        "(See above.) [Noted.] 'Quoted.' Last one",
        "Many   spaces.    Between   sentences.",
        "Line one.\nLine two.\n\nLine three\nwithout end",
        "  Leading and trailing space.  ",
        "Tab.\tVertical tab.\vForm feed.\fCarriage return.\rEnd.",
        'Closers."\') Then more.',
        "No punctuation at all",
        "End without space.",
        "x.\u00a0Non-breaking space is not white space. ok?",
        "Ellipsis ... in the middle. ?!? Alone.",
        "",
        "   \n  ",
    ],
    "paragraphs": [
        "Para one.\nStill para one.\n\nPara two.\n  \t\nPara three.\n\n\n\nPara four.",
        "\n\nLeading blank lines\n\n",
        "one\r\n\r\ntwo",
        "single paragraph\nwith a line break",
        "  indented first  \n \nsecond\n\n   \n\nthird  ",
        "",
        "\n \n",
    ],
}


def segmentation_cases():
    return [{"rule": rule, "text": text, "segments": segment_prompt_text(text, rule)}
            for rule, texts in SEGMENTATION_TEXTS.items() for text in texts]


def build_vectors():
    rng = random.Random(SEED)
    cases = hand_cases() + [fuzz_case(rng, i) for i in range(FUZZ_CASES)]
    return {"version": 1, "cases": cases, "segmentation": segmentation_cases()}


def render(vectors) -> str:
    """One case per line, so that a change shows as a readable diff."""
    def dump(x):
        return json.dumps(x, ensure_ascii=False, separators=(",", ":"))
    lines = ['{"version": %d,' % vectors["version"], '"cases": [']
    lines += [dump(c) + ("," if i + 1 < len(vectors["cases"]) else "")
              for i, c in enumerate(vectors["cases"])]
    lines += ["],", '"segmentation": [']
    lines += [dump(c) + ("," if i + 1 < len(vectors["segmentation"]) else "")
              for i, c in enumerate(vectors["segmentation"])]
    lines += ["]}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(render(build_vectors()))


if __name__ == "__main__":
    main()
