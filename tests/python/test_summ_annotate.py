"""Summarisation annotation: greedy ROUGE alignment and the protocol output format."""
import json
import os

from spanserve_train import summ_annotate as sa
from spanserve_train.arith_data import split_output

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "summ_sample.jsonl")


def load_sample():
    with open(SAMPLE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_sample_gives_the_expected_alignments():
    sample = load_sample()
    assert 5 <= len(sample) <= 8
    for raw in sample:
        record = sa.annotate(raw["article"], raw["summary"])
        assert record["alignment"] == raw["expected_alignment"], raw["summary"]
        assert len(record["segments"]) == 5


def test_output_headers_and_text_follow_the_protocol():
    for raw in load_sample():
        record = sa.annotate(raw["article"], raw["summary"])
        parts = split_output(record["output"])
        assert [h for h, _ in parts] == [",".join(map(str, a)) for a in record["alignment"]]
        contents = [c for _, c in parts]
        assert not contents[0].startswith(" ")
        assert all(c.startswith(" ") and not c.startswith("  ") for c in contents[1:])
        assert "".join(contents) == " ".join(raw["summary"].split())  # visible text reads right


def test_protocol_example_shape():
    out = sa.make_output(["First summary sentence.", "Second summary sentence."], [[2, 5], [7]])
    assert out == "<a>2,5</a>First summary sentence.<a>7</a> Second summary sentence."


def test_greedy_stops_when_nothing_improves_and_at_the_cap():
    article = ["Red apples grow on tall trees.", "Blue whales swim in cold oceans.",
               "Green frogs sing near quiet ponds.", "Yellow taxis honk in busy streets.",
               "Red apples grow on tall trees."]
    assert sa.align_sentence("Blue whales swim in cold oceans.", article) == [1]
    # a duplicate sentence is never worth adding; ties go to the earlier one
    assert sa.align_sentence("Red apples grow on tall trees.", article) == [0]
    fused = ("Red apples grow on tall trees, blue whales swim in cold oceans, green frogs sing "
             "near quiet ponds and yellow taxis honk in busy streets.")
    assert sa.align_sentence(fused, article) == [0, 1, 2]
    assert sa.align_sentence(fused, article, max_refs=4) == [0, 1, 2, 3]
    assert sa.align_sentence("Nothing matches here.", article) == []
    assert sa.make_output(["Nothing matches here."], [[]]) == "<a></a>Nothing matches here."


def test_rouge_f1():
    ref = sa.ngrams(sa.words("the cat sat"), 1)
    assert sa.f1(ref, ref) == 1.0
    assert sa.f1(sa.ngrams(sa.words("a dog"), 1), ref) == 0.0
    half = sa.f1(sa.ngrams(sa.words("the cat ran away"), 1), ref)  # p = 1/2, r = 2/3
    assert abs(half - 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) < 1e-12
    assert sa.ngrams(["a", "b", "c"], 2) == {("a", "b"): 1, ("b", "c"): 1}


def test_cli(tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for raw in load_sample():
            f.write(json.dumps({"article": raw["article"], "highlights": raw["summary"]}) + "\n")
        f.write(json.dumps({"article": "One. Two. Three.", "highlights": "One."}) + "\n")
    out = tmp_path / "out.jsonl"
    sa.main([str(src), str(out), "--summary-field", "highlights", "--max-article-sentences", "4"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1  # the sample's 5-sentence articles are skipped
    assert set(records[0]) == {"segments", "output", "alignment"}
    assert records[0] == {"segments": ["One.", "Two.", "Three."], "output": "<a>0</a>One.",
                          "alignment": [[0]]}
