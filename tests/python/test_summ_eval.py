"""The summary evaluator: a perfect output scores 100%; each corruption lowers exactly the
scores it should, by exactly the expected amount."""
import re

import pytest

from spanserve_train import summ_data as sd
from spanserve_train import summ_eval as se
from spanserve_train.rouge import tokenize
from spanserve_train.tokenizer import ANCHOR, HEADER_END

SPEC = sd.SummSpec(min_sentences=30, max_sentences=40, min_kinds=4, max_kinds=5)


@pytest.fixture(scope="module")
def record():
    """A record with a comparison or a total first, so sentence 0 has two or more sources."""
    for r in sd.generate(SPEC, 50, "eval-test", set()):
        if len(r["alignment"][0]) >= 2:
            return r
    raise AssertionError("no record with a multi-source first sentence")


def build(headers, texts):
    """An output from raw header strings (None: never closed) and contents."""
    out = []
    for k, (h, t) in enumerate(zip(headers, texts)):
        sep = " " if k else ""
        out.append(f"{ANCHOR}{sep}{t}" if h is None else f"{ANCHOR}{h}{HEADER_END}{sep}{t}")
    return "".join(out)


def headers_of(record):
    return [",".join(map(str, a)) for a in record["alignment"]]


def totals(record):
    n = len(record["reference"])
    gold = sum(len(a) for a in record["alignment"])
    return n, gold


def assert_perfect_except(s, **expected):
    values = {"fact_accuracy": s.fact_accuracy, "header_precision": s.header_precision,
              "header_recall": s.header_recall, "malformed_rate": s.malformed_rate,
              "rouge_l": s.rouge_l}
    for name, value in values.items():
        want = expected.get(name, 0.0 if name == "malformed_rate" else 1.0)
        assert value == pytest.approx(want, abs=1e-12), name


def test_the_reference_output_scores_100(record):
    s = se.score_output(record, record["output"])
    assert_perfect_except(s)
    assert s.sentence_facts == [True] * len(record["reference"])
    assert (s.malformed, s.star, s.stray_text) == (0, 0, False)


def test_parse_summary_uses_the_span_rule_headers(record):
    n = len(record["segments"])
    segments, stray = se.parse_summary(f"x{ANCHOR}0,{n - 1}{HEADER_END}A.{ANCHOR}{n}{HEADER_END}B."
                                       f"{ANCHOR}{n + 2}{HEADER_END}C.{ANCHOR}*{HEADER_END}D."
                                       f"{ANCHOR}1,1{HEADER_END}E.{ANCHOR}3 F.", n)
    assert stray == "x"
    assert [(s.refs, s.malformed, s.star) for s in segments] == [
        ([0, n - 1], False, False),
        ([n], False, False),          # output segment n + 1 may name output segment n
        ([], True, False),            # segment n + 2 names itself
        (list(range(n)), False, True),
        ([], True, False),            # a duplicate
        ([], True, False)]            # never closed: no content
    assert [s.text for s in segments] == ["A.", "B.", "C.", "D.", "E.", ""]


def test_a_wrong_number_fails_that_sentence_and_costs_one_rouge_token(record):
    texts = list(record["reference"])
    n_old = record["facts"][1]["numbers"][0]
    texts[1] = re.sub(rf"\b{n_old}\b", "99999", texts[1], count=1)
    s = se.score_output(record, build(headers_of(record), texts))
    n, _ = totals(record)
    L = len(tokenize(" ".join(record["reference"])))
    # one token of L substituted: the LCS is L - 1 of L tokens on both sides
    assert_perfect_except(s, fact_accuracy=(n - 1) / n, rouge_l=(L - 1) / L)
    assert s.sentence_facts == [k != 1 for k in range(n)]


@pytest.mark.parametrize("change", ["extra number", "missing entity", "missing number"])
def test_other_fact_errors(record, change):
    texts = list(record["reference"])
    facts = record["facts"][0]
    if change == "extra number":
        texts[0] = texts[0][:-1] + " in 2024."
    elif change == "missing entity":
        texts[0] = texts[0].replace(facts["entities"][0], "Someone Else")
    else:
        texts[0] = re.sub(rf"\b{facts['numbers'][-1]}\b", "many", texts[0])
    s = se.score_output(record, build(headers_of(record), texts))
    n, _ = totals(record)
    assert s.fact_accuracy == pytest.approx((n - 1) / n)
    assert s.sentence_facts[0] is False and all(s.sentence_facts[1:])
    assert s.rouge_l < 1.0 and s.header_precision == s.header_recall == 1.0


def test_entities_match_whole_words_case_insensitively():
    facts = {"entities": ["Ada Moss"], "numbers": [12]}
    assert se.facts_correct("ADA   MOSS planted 12 trees.", facts)
    assert not se.facts_correct("Ada Mossberg planted 12 trees.", facts)
    assert not se.facts_correct("Ada Moss planted 12 trees, 12 or 13.", facts)
    assert se.facts_correct("Ada Moss planted 12 trees, 12 of them.", facts)  # repeats are fine


def test_a_wrong_reference_lowers_precision_and_recall(record):
    alignment = [list(a) for a in record["alignment"]]
    wrong = next(j for j in range(len(record["segments"])) if j not in alignment[0])
    alignment[0][0] = wrong
    headers = [",".join(map(str, sorted(a))) for a in alignment]
    s = se.score_output(record, build(headers, record["reference"]))
    _, gold = totals(record)
    assert_perfect_except(s, header_precision=(gold - 1) / gold, header_recall=(gold - 1) / gold)


@pytest.mark.parametrize("bad", ["3,x", "{self}", "{later}", "0,0", " 1", "1,,2"])
def test_a_malformed_header_names_nothing(record, bad):
    n_doc = len(record["segments"])
    headers = headers_of(record)
    headers[1] = bad.format(self=n_doc + 1, later=n_doc + 2)
    s = se.score_output(record, build(headers, record["reference"]))
    n, gold = totals(record)
    g1 = len(record["alignment"][1])
    # the sentence's references are lost: precision stays 1, recall loses them
    assert_perfect_except(s, malformed_rate=1 / n, header_recall=(gold - g1) / gold)
    assert s.malformed == 1


def test_a_header_that_never_closes_has_no_content(record):
    headers = headers_of(record)
    headers[0] = None
    s = se.score_output(record, build(headers, record["reference"]))
    n, gold = totals(record)
    g0 = len(record["alignment"][0])
    assert s.malformed == 1 and s.malformed_rate == pytest.approx(1 / n)
    assert s.header_recall == pytest.approx((gold - g0) / gold) and s.header_precision == 1.0
    assert s.sentence_facts == [False] + [True] * (n - 1)
    assert s.rouge_l < 1.0


def test_a_star_header_names_every_document_sentence(record):
    headers = headers_of(record)
    headers[0] = "*"
    s = se.score_output(record, build(headers, record["reference"]))
    _, gold = totals(record)
    g0, n_doc = len(record["alignment"][0]), len(record["segments"])
    assert_perfect_except(s, header_precision=gold / (gold - g0 + n_doc))
    assert (s.star, s.malformed) == (1, 0)


def test_missing_and_extra_sentences(record):
    n, gold = totals(record)
    headers, texts = headers_of(record), list(record["reference"])
    g_last = len(record["alignment"][-1])
    short = se.score_output(record, build(headers[:-1], texts[:-1]))
    assert short.fact_accuracy == pytest.approx((n - 1) / n)
    assert short.header_recall == pytest.approx((gold - g_last) / gold)
    assert short.header_precision == 1.0 and short.rouge_l < 1.0
    extra = se.score_output(record, build(headers + headers[-1:], texts + texts[-1:]))
    assert extra.fact_accuracy == pytest.approx(n / (n + 1))
    assert extra.header_precision == pytest.approx(gold / (gold + g_last))
    assert extra.header_recall == 1.0


def test_stray_text_is_reported_and_scored_by_rouge_only(record):
    s = se.score_output(record, "Summary: " + record["output"])
    L = len(tokenize(" ".join(record["reference"])))
    # prediction L + 1 tokens, LCS L: P = L/(L+1), R = 1, F = 2L/(2L+1)
    assert_perfect_except(s, rouge_l=2 * L / (2 * L + 1))
    assert s.stray_text


def test_empty_output(record):
    s = se.score_output(record, "")
    assert (s.fact_accuracy, s.header_recall, s.rouge_l, s.malformed_rate) == (0, 0, 0, 0)
    assert s.header_precision == 1.0  # nothing named, nothing wrong


def test_aggregate_is_a_micro_average(record):
    n, gold = totals(record)
    perfect = se.score_output(record, record["output"])
    headers = headers_of(record)
    headers[1] = "x"
    broken = se.score_output(record, build(headers, record["reference"]))
    g1 = len(record["alignment"][1])
    agg = se.aggregate([perfect, broken])
    assert agg["records"] == 2 and agg["sentences_out"] == 2 * n
    assert agg["malformed_rate"] == pytest.approx(1 / (2 * n))
    assert agg["header_recall"] == pytest.approx((2 * gold - g1) / (2 * gold))
    assert agg["header_precision"] == 1.0 and agg["fact_accuracy"] == 1.0
    assert agg["rouge_l"] == pytest.approx(1.0)
    assert se.aggregate([])["records"] == 0


def test_fact_errors_name_what_is_wrong():
    total = {"type": "total", "entities": ["Ada Moss", "Ben Hale", "Cy Roe"],
             "numbers": [31, 38, 41, 110], "derived": {"op": "sum", "of": [41, 38, 31],
                                                       "value": 110}}
    right = "Ada Moss planted 41, Ben Hale 38 and Cy Roe 31 young trees, 110 in all."
    assert se.fact_errors(right, total) == []
    assert se.fact_errors(right.replace("110", "111"), total) == ["derived_number",
                                                                  "extra_number"]
    assert se.fact_errors(right.replace("38", "31"), total) == ["copied_number"]
    assert se.fact_errors(right.replace("Cy Roe", "Cy Moss"), total) == ["entity"]
    assert se.fact_errors(None, total) == ["missing_sentence"]
    who = {"type": "who", "entities": ["Ada Moss", "Birch Guild", "14 March"],
           "numbers": [14, 41], "derived": None}
    assert se.fact_errors("Ada Moss of the Birch Guild planted 41 young trees on 14 March.",
                          who) == []
    assert se.fact_errors("Ada Moss of the Birch Guild planted 41 young trees on 15 March.",
                          who) == ["entity", "copied_number", "extra_number"]


def test_fact_breakdown_counts_each_type_and_error(record):
    texts = list(record["reference"])
    kinds = [f["type"] for f in record["facts"]]
    n_old = record["facts"][0]["derived"]["value"]  # sentence 0 is a comparison or a total
    texts[0] = re.sub(rf"\b{n_old}\b", "9999", texts[0])
    s = se.score_output(record, build(headers_of(record), texts[:-1]))  # the last one missing
    by_type = se.aggregate([s])["facts_by_type"]
    assert sum(t["sentences"] for t in by_type.values()) == len(kinds)
    first, last = by_type[kinds[0]], by_type[kinds[-1]]
    assert first["errors"]["derived_number"] == pytest.approx(1 / kinds.count(kinds[0]))
    assert first["errors"]["extra_number"] == pytest.approx(1 / kinds.count(kinds[0]))
    assert last["errors"]["missing_sentence"] == pytest.approx(1 / kinds.count(kinds[-1]))
    right = len(kinds) - 2
    assert sum(t["fact_accuracy"] * t["sentences"] for t in by_type.values()) == \
        pytest.approx(right)


def test_a_missing_sentence_costs_that_sentence_only(record):
    n, gold = totals(record)
    assert n >= 3
    headers, texts = headers_of(record), list(record["reference"])
    s = se.score_output(record, build(headers[:1] + headers[2:], texts[:1] + texts[2:]))
    assert s.sentence_facts == [True, False] + [True] * (n - 2)
    assert s.sentence_errors[1] == ["missing_sentence"]
    assert s.fact_accuracy == pytest.approx((n - 1) / n)
    assert s.header_recall == pytest.approx((gold - len(record["alignment"][1])) / gold)
    assert s.header_precision == 1.0
    # in place, every sentence after the gap is compared with the wrong reference sentence
    assert s.facts_in_place < n - 1


def test_an_extra_sentence_in_front_costs_one_slot(record):
    n, gold = totals(record)
    headers, texts = headers_of(record), list(record["reference"])
    distractor = next(j for j in range(len(record["segments"]))
                      if all(j not in a for a in record["alignment"]))
    s = se.score_output(record, build([str(distractor)] + headers,
                                      ["The weather was fine all month."] + texts))
    assert s.sentence_facts == [True] * n
    assert s.fact_accuracy == pytest.approx(n / (n + 1))
    assert s.header_recall == 1.0


def test_align_pairs_in_order_by_sources_and_text(record):
    segs, _ = se.parse_summary(record["output"], len(record["segments"]))
    n = len(segs)
    assert se.align(record, segs) == list(range(n))
    assert se.align(record, segs[1:]) == [None] + list(range(n - 1))
    assert se.align(record, []) == [None] * n
    # a sentence that shares nothing with any reference sentence is left out
    assert se.align(record, [se.OutSegment("")] + list(segs)) == list(range(1, n + 1))


def test_aggregate_reports_in_place_accuracy_beside_aligned(record):
    n, _ = totals(record)
    headers, texts = headers_of(record), list(record["reference"])
    s = se.score_output(record, build(headers[1:], texts[1:]))
    agg = se.aggregate([s])
    assert agg["fact_accuracy"] == pytest.approx((n - 1) / n)
    assert agg["fact_accuracy_in_place"] == pytest.approx(s.facts_in_place / n)
