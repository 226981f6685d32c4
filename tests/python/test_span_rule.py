"""The Python span rule (training/spanserve_train/span_rule.py) against docs/span_rule.md by hand,
the protocol's arithmetic example, the attention mask, causality, and the shared vectors file."""
import importlib.util
import json
import os

import pytest
import sentencepiece as spm
import torch

from spanserve_train.span_rule import (ANCHOR, CONTENT, DENSE, HEADER, HEADER_END, SELF_SELECTED,
                                       SINK, SpanTracker, attention_mask, encode_prompt,
                                       segment_prompt_text, track)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.path.join(REPO, "tests", "vectors", "span_rule_vectors.json")


def load_generator():
    path = os.path.join(REPO, "training", "tools", "make_span_vectors.py")
    spec = importlib.util.spec_from_file_location("make_span_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()
B = gen.Builder(gen.PIECES)
# Sink [0, 2); prompt segments 0 = [2, 5), 1 = [5, 7), 2 = [7, 10); the output starts at 10.
P3 = "<s> x <a> x x <a> ▁y <a> . x"


def run(prompt, output, max_header_tokens=8, mode=SELF_SELECTED):
    tracker = SpanTracker(B.vocab(max_header_tokens), B(prompt), mode)
    found = [p for p, t in enumerate(B(output), start=tracker.prompt_len) if tracker.append(t)[1]]
    return tracker, found


def ranges(tracker):
    return [tracker.attended_ranges(q) for q in range(len(tracker))]


# ----------------------------------------------------------------------------- vectors file

def test_vectors_file_is_what_the_generator_writes():
    with open(VECTORS, encoding="utf-8") as f:
        committed = f.read()
    assert gen.render(gen.build_vectors()) == committed, (
        "tests/vectors/span_rule_vectors.json is stale: run "
        "/usr/bin/python3 training/tools/make_span_vectors.py and commit it")


def test_vectors_cover_the_cases_the_cpp_test_needs():
    with open(VECTORS, encoding="utf-8") as f:
        vectors = json.load(f)
    assert vectors["version"] == 1
    assert len(vectors["cases"]) > 200
    segs = [s for c in vectors["cases"] for s in c["expected"]["segments"]]
    assert sum(s["restricted"] for s in segs) > 100
    assert sum(s["malformed"] for s in segs) > 100
    assert sum(s["star"] for s in segs) > 10
    assert {c["mode"] for c in vectors["cases"]} == {SELF_SELECTED, DENSE}
    assert {c["rule"] for c in vectors["segmentation"]} == {"whole", "sentences", "paragraphs"}


# ----------------------------------------------------------------------------- hand checks

def test_valid_header_restricts_content_and_merges_adjacent_ranges():
    t, found = run(P3, "<a> 0 , 2 </a> x x")
    seg = t.segments[3]
    assert (seg.start, seg.header_end, seg.refs, seg.restricted, seg.malformed) == \
        (10, 14, [0, 2], True, False)
    assert t.roles[10:] == [ANCHOR, HEADER, HEADER, HEADER, HEADER_END, CONTENT, CONTENT]
    for q in range(10, 14):  # the header is decided with full context
        assert t.attended_ranges(q) == [(0, q + 1)] and t.is_dense(q)
    # sink [0,2) + segment 0 [2,5) merge; segment 2 [7,10) + own [10, q] merge.
    assert t.attended_ranges(14) == [(0, 5), (7, 15)]
    assert t.attended_ranges(16) == [(0, 5), (7, 17)]
    assert not t.is_dense(14) and found == [] and t.malformed_count == 0


def test_refs_keep_header_order_ranges_are_sorted():
    t, _ = run(P3, "<a> 2 , 0 </a> x")
    assert t.segments[3].refs == [2, 0]
    assert t.attended_ranges(15) == [(0, 5), (7, 16)]


def test_multi_digit_pieces_and_leading_zeros():
    prompt = "<s>" + " <a> x" * 13  # segments 0..12 at 1, 3, ..., 25
    t, found = run(prompt, "<a> 12 , 3 </a> x <a> 3, 12 </a> x <a> 0 1 </a> x")
    assert [s.refs for s in t.segments[13:]] == [[12, 3], [3, 12], [1]]
    assert found == []
    q = len(t) - 1
    assert t.attended_ranges(q) == [(0, 1), (3, 5), (t.segments[15].start, q + 1)]


def test_empty_header_is_sink_and_self():
    t, found = run(P3, "<a> </a> x")
    assert t.segments[3].restricted and t.segments[3].refs == [] and found == []
    assert t.attended_ranges(11) == [(0, 2), (10, 12)]
    assert t.attended_ranges(12) == [(0, 2), (10, 13)]


def test_star_is_dense_by_request_not_malformed():
    t, found = run(P3, "<a> * </a> x")
    seg = t.segments[3]
    assert seg.star and not seg.malformed and not seg.restricted and found == []
    assert t.attended_ranges(13) == [(0, 14)]


@pytest.mark.parametrize("header", [
    "0 x",          # a letter
    "▁ 0",          # SentencePiece's space marker
    "²",            # a digit, but not an ASCII one
    "3",            # reference to the segment itself
    "4",            # reference to a later segment
    "0 , 0",        # duplicate
    "0 , 0 0",      # duplicate by value (00 == 0)
    "0 , , 1",      # empty number
    "0 ,",          # trailing comma
    "3,",           # trailing comma inside a piece
    ", 0",          # leading comma
    "1234567890",   # ten digits
    "0 000000000",  # ten digits, value 0
    "*, 0",         # star plus more
    "</s>",
])
def test_malformed_header_makes_the_segment_dense(header):
    t, found = run(P3, f"<a> {header} </a> x x")
    seg = t.segments[3]
    h = 10 + len(B(header)) + 1
    assert seg.malformed and not seg.restricted and seg.refs == [] and seg.header_end == h
    assert found == [h] and t.malformed_count == 1
    assert all(t.attended_ranges(q) == [(0, q + 1)] for q in range(len(t)))


def test_nine_digits_are_fine():
    t, found = run(P3, "<a> 000000000 , 2 </a> x")
    assert t.segments[3].refs == [0, 2] and found == []


def test_header_of_exactly_m_tokens_closes_m_plus_one_overflows():
    t, found = run(P3, "<a> 0 , 1 </a> x", max_header_tokens=3)
    assert t.segments[3].restricted and found == []
    t, found = run(P3, "<a> 0 , 1 , </a> x", max_header_tokens=3)
    seg = t.segments[3]
    assert found == [14] and seg.malformed and seg.header_end == -1 and seg.header_tokens == 3
    # The overflowing token and everything after it are dense content, </a> included.
    assert t.roles[10:] == [ANCHOR, HEADER, HEADER, HEADER, CONTENT, CONTENT, CONTENT]
    assert t.attended_ranges(16) == [(0, 17)]


def test_anchor_right_after_m_header_tokens_is_an_unclosed_header_not_an_overflow():
    t, found = run(P3, "<a> 0 , 1 <a> 0 </a> x", max_header_tokens=3)
    assert found == [14] and t.malformed_count == 1
    assert t.segments[3].malformed and t.segments[4].restricted and t.segments[4].refs == [0]


def test_header_interrupted_by_the_next_anchor():
    t, found = run(P3, "<a> 0 <a> 1 </a> x")
    assert found == [12]
    assert t.segments[3].malformed and t.segments[3].header_end == -1
    assert t.segments[4].refs == [1] and t.segments[4].restricted
    # Segment 3 (malformed) is [10, 12); segment 4 reads segment 1 only.
    assert t.attended_ranges(15) == [(0, 2), (5, 7), (12, 16)]


def test_header_still_open_at_the_end_is_unfinished_not_malformed():
    t, found = run(P3, "<a> 0 ,")
    seg = t.segments[3]
    assert not seg.malformed and seg.header_end == -1 and found == [] and t.malformed_count == 0
    assert t.roles[10:] == [ANCHOR, HEADER, HEADER]
    assert all(t.is_dense(q) for q in range(len(t)))


def test_stray_header_end_is_content_in_output_and_prompt():
    t, found = run("<s> </a> <a> x </a>", "<a> 0 </a> x </a> x")
    assert t.roles == [SINK, SINK, ANCHOR, CONTENT, CONTENT,
                       ANCHOR, HEADER, HEADER_END, CONTENT, CONTENT, CONTENT]
    assert found == [] and t.segments[1].refs == [0]
    assert t.attended_ranges(10) == [(0, 11)]  # sink + seg 0 + own are adjacent


def test_prompt_headers_are_content_and_never_parsed():
    t, _ = run("<s> <a> 0 </a> x <a> * </a> x", "")
    assert t.roles == [SINK, ANCHOR, CONTENT, CONTENT, CONTENT, ANCHOR, CONTENT, CONTENT, CONTENT]
    assert all(s.in_prompt and s.header_end == -1 and not s.star for s in t.segments)


def test_sink_is_everything_before_the_first_anchor():
    t, _ = run("<s> x x <a> x x", "<a> </a> x")
    assert t.sink_end == 3 and t.roles[:3] == [SINK] * 3
    assert t.attended_ranges(8) == [(0, 3), (6, 9)]


def test_output_before_the_first_output_anchor_belongs_to_the_last_prompt_segment():
    t, _ = run("<s> <a> x", "x x <a> </a> x <a> 0 </a> x")
    assert t.roles[3:5] == [CONTENT, CONTENT] and t.segment_of(4) == 0 and t.is_dense(4)
    # range(0) = [1, 5): the prompt segment with the two output tokens.
    q = len(t) - 1
    assert t.attended_ranges(q) == [(0, 5), (t.segments[2].start, q + 1)]


def test_no_anchors_at_all_is_all_sink_and_dense():
    t, found = run("<s> x", "x </a> 0 ,")
    assert t.segments == [] and t.roles == [SINK] * 6 and found == []
    assert ranges(t) == [[(0, q + 1)] for q in range(6)]


def test_dense_mode_reports_the_same_segments_with_dense_ranges():
    out = "<a> 0 , 2 </a> x <a> 3 </a> x <a> 0 x </a> x"
    s, found_s = run(P3, out)
    d, found_d = run(P3, out, mode=DENSE)
    for a, b in zip(s.segments, d.segments):
        assert (a.start, a.header_end, a.refs, a.malformed, a.star) == \
            (b.start, b.header_end, b.refs, b.malformed, b.star)
        assert not b.restricted
    assert found_s == found_d and d.malformed_count == 1 and s.roles == d.roles
    assert ranges(d) == [[(0, q + 1)] for q in range(len(d))]
    assert any(len(r) > 1 for r in ranges(s))


def test_malformed_segment_counted_once_and_can_be_referenced():
    t, found = run(P3, "<a> 9 </a> x </a> <a> 3 </a> x")
    assert found == [12] and t.malformed_count == 1
    assert t.segments[4].refs == [3] and t.segments[4].restricted
    assert t.attended_ranges(len(t) - 1) == [(0, 2), (10, len(t))]


def test_tracker_takes_both_argument_orders():
    vocab = B.vocab(8)
    a = SpanTracker(vocab, B(P3), DENSE)
    b = SpanTracker(vocab, DENSE, B(P3))
    assert a.mode == b.mode == DENSE and a.roles == b.roles
    with pytest.raises(ValueError):
        SpanTracker(vocab, B(P3), "sparse")


# ----------------------------------------------------------------------------- protocol example

def test_protocol_arithmetic_chain_step_k_reads_sink_step_k_minus_1_and_itself(
        test_tokenizer_path):
    sp = spm.SentencePieceProcessor(model_file=test_tokenizer_path)
    anchor, header_end = sp.piece_to_id("<a>"), sp.piece_to_id("</a>")
    assert (anchor, header_end) == (3, 4)
    prompt = encode_prompt(sp, anchor, ["((3+4)*(5-2))+6="])
    assert prompt[:2] == [sp.bos_id(), anchor]
    output = sp.encode("<a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27") + [sp.eos_id()]
    tokens = prompt + output
    vocab = gen.SpanVocab(anchor, header_end, 32, [sp.id_to_piece(i) for i in range(sp.vocab_size())])
    t = track(vocab, tokens, len(prompt))
    starts = [p for p, tok in enumerate(tokens) if tok == anchor]
    ends = [p for p, tok in enumerate(tokens) if tok == header_end]
    assert [s.start for s in t.segments] == starts and len(starts) == 5
    assert [s.refs for s in t.segments] == [[], [0], [1], [2], [3]]
    assert t.malformed_count == 0
    for k in range(1, 5):
        for q in range(ends[k - 1], starts[k + 1] if k + 1 < 5 else len(tokens)):
            # sink [0, 1) ∪ step k-1 [starts[k-1], starts[k]) ∪ [starts[k], q]
            want = [(0, q + 1)] if k == 1 else [(0, 1), (starts[k - 1], q + 1)]
            assert t.attended_ranges(q) == want, (k, q)
    last = len(tokens) - 1
    assert sum(e - b for b, e in t.attended_ranges(last)) < (last + 1) / 2


def test_encode_prompt(test_tokenizer_path):
    sp = spm.SentencePieceProcessor(model_file=test_tokenizer_path)
    ids = encode_prompt(sp, 3, ["12+3=", "x y"])
    assert ids == [1, 3] + sp.encode("12+3=") + [3] + sp.encode("x y")
    assert encode_prompt(sp, 3, []) == [1]


# ----------------------------------------------------------------------------- mask

def expand(case_ranges, T):
    mask = torch.zeros(T, T, dtype=torch.bool)
    for q, rs in enumerate(case_ranges):
        for b, e in rs:
            mask[q, b:e] = True
    return mask


def vector_cases():
    with open(VECTORS, encoding="utf-8") as f:
        return json.load(f)["cases"]


def case_tracker(c):
    vocab = gen.SpanVocab(c["anchor_id"], c["header_end_id"], c["max_header_tokens"], c["pieces"])
    return track(vocab, c["tokens"], c["prompt_len"], c["mode"])


def test_mask_equals_the_ranges_on_every_vector_case():
    for c in vector_cases():
        t = case_tracker(c)
        T = len(c["tokens"])
        mask = attention_mask(t)
        assert mask.dtype == torch.bool and mask.shape == (T, T)
        assert torch.equal(mask, expand(c["expected"]["ranges"], T)), c["name"]
        assert torch.equal(mask, mask.tril()) and bool(mask.diagonal().all()), c["name"]


def test_ranges_are_sorted_disjoint_and_non_adjacent():
    for c in vector_cases():
        for rs in c["expected"]["ranges"]:
            assert all(b < e for b, e in rs)
            assert all(rs[i][1] < rs[i + 1][0] for i in range(len(rs) - 1)), c["name"]


def test_rule_is_causal_a_prefix_gives_the_same_answers():
    for c in vector_cases():
        full = case_tracker(c)
        for q in range(0, len(c["tokens"]), 3):
            prefix = dict(c, tokens=c["tokens"][:q + 1], prompt_len=min(c["prompt_len"], q + 1))
            part = case_tracker(prefix)
            assert part.attended_ranges(q) == full.attended_ranges(q), (c["name"], q)
            assert part.roles == full.roles[:q + 1], (c["name"], q)


# ----------------------------------------------------------------------------- segmentation

@pytest.mark.parametrize("rule,text,want", [
    ("sentences", 'He said "Stop!" Then he left. Did he?', ['He said "Stop!"', "Then he left.",
                                                            "Did he?"]),
    ("sentences", "Dr. Smith is 3.5 m tall.", ["Dr.", "Smith is 3.5 m tall."]),
    ("sentences", "  One.   Two?\nThree  ", ["One.", "Two?", "Three"]),
    ("sentences", "(Aside.) [Next.] End.", ["(Aside.)", "[Next.]", "End."]),
    ("sentences", "x.\u00a0y", ["x.\u00a0y"]),
    ("sentences", "   ", []),
    ("paragraphs", "a\nb\n\nc\n \t \nd\n\n\n", ["a\nb", "c", "d"]),
    ("paragraphs", " \n\n one \n", ["one"]),
    ("whole", "  as given \n", ["  as given \n"]),
])
def test_segmentation_by_hand(rule, text, want):
    assert segment_prompt_text(text, rule) == want


def test_segmentation_rejects_unknown_rules():
    with pytest.raises(ValueError):
        segment_prompt_text("a. b.", "lines")
