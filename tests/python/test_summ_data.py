"""The document-to-summary generator: determinism, disjoint splits, lengths, gold facts and the
protocol format through the training loader and the span rule."""
import dataclasses
import json
import os
import re

import pytest
import sentencepiece as spm

from spanserve_train import data as D
from spanserve_train import summ_data as sd
from spanserve_train.arith_data import load_preset, split_output
from spanserve_train.span_rule import segment_prompt_text, track
from spanserve_train.summ_eval import facts_correct, numbers_in
from spanserve_train.tokenizer import build_tokenizer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER = os.path.join(REPO, "tests", "data", "tokenizer", "tokenizer.model")
SMALL = sd.spec_from_preset(load_preset("summ-small"))
LONG = sd.spec_from_preset(load_preset("summ-long"))
KIND_WORDS = ({v for v, _ in sd.KINDS} | {w for _, u in sd.KINDS for w in u.split()}) \
    - {"of", "for", "the"}


@pytest.fixture(scope="module")
def long_records():
    return sd.generate(LONG, 60, "test-long", set())


@pytest.fixture(scope="module")
def small_splits():
    return sd.make_splits(SMALL, {"train": 60, "val": 20, "test": 20}, seed=7)


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def kind_of(sentence):
    """The event kind whose verb and unit a sentence holds, or None."""
    for verb, unit in sd.KINDS:
        if re.search(rf"\b{verb} [0-9]+ {unit}\b", sentence):
            return verb
    return None


def test_same_seed_same_data_other_seed_other_data(small_splits):
    again = sd.make_splits(SMALL, {"train": 60, "val": 20, "test": 20}, seed=7)
    assert again == small_splits
    other = sd.make_splits(SMALL, {"train": 60, "val": 20, "test": 20}, seed=8)
    assert other["test"][0]["segments"] != small_splits["test"][0]["segments"]


def test_splits_are_disjoint(small_splits):
    docs = {name: {" ".join(r["segments"]) for r in recs} for name, recs in small_splits.items()}
    assert [len(docs[n]) for n in ("train", "val", "test")] == [60, 20, 20]
    assert not docs["train"] & docs["val"] and not docs["train"] & docs["test"]
    assert not docs["val"] & docs["test"]
    ids = [r["doc_id"] for recs in small_splits.values() for r in recs]
    assert len(set(ids)) == len(ids)


def test_excluded_documents_are_skipped(small_splits):
    # the generator draws the same first document again from the same seed, and must skip it
    first = sd.generate(SMALL, 2, "summ-7-test", set())
    skipping = sd.generate(SMALL, 1, "summ-7-test", {" ".join(first[0]["segments"])})
    assert skipping[0]["segments"] == first[1]["segments"]


def test_lengths_and_kinds_in_range(long_records):
    n = [len(r["segments"]) for r in long_records]
    assert min(n) >= 40 and max(n) <= 150
    assert min(n) < 60 and max(n) > 130  # the draws cover the range
    for r in long_records:
        assert 3 <= len(r["reference"]) <= 8
        assert all(1 <= len(a) <= 3 for a in r["alignment"])
    assert {len(a) for r in long_records for a in r["alignment"]} == {1, 2, 3}


def test_prompt_tokens_with_a_tokenizer_of_this_data(long_records, tmp_path):
    # a span tokenizer built from the documents, as build_span_tokenizer.py would for training
    lines = [t for r in long_records for t in D.record_texts(r)]
    sp = spm.SentencePieceProcessor(model_file=build_tokenizer(
        lines, 4000, str(tmp_path / "tok.model")))
    stats = sd.length_stats(long_records, sp)
    assert stats["token_unit"] == "tokens"
    lo, _, hi = stats["tokens"]
    assert 900 <= lo and hi <= 4500, stats  # about 1k to 4k (item numbers add ~3 a sentence)
    chars = sd.length_stats(long_records)
    assert chars["token_unit"] == "chars/4" and chars["sentences"] == stats["sentences"]


def test_gold_sources_hold_the_facts_of_each_summary_sentence(long_records):
    for r in long_records:
        assert len(r["reference"]) == len(r["alignment"]) == len(r["facts"])
        for sentence, sources, facts in zip(r["reference"], r["alignment"], r["facts"]):
            texts = [r["segments"][j] for j in sources]
            assert sources == sorted(sources) and all(0 <= j < len(r["segments"])
                                                      for j in sources)
            assert {kind_of(t) for t in texts} == {facts["kind"]}
            # every sentence of the kind is a source: the summary is a function of the document
            assert [j for j, t in enumerate(r["segments"]) if kind_of(t) == facts["kind"]] \
                == sources
            assert facts["type"] == {1: "who", 2: "compare", 3: "total"}[len(sources)]
            for entity in facts["entities"]:
                assert any(entity in t for t in texts), (entity, texts)
            source_numbers = {n for t in texts for n in numbers_in(t)}
            derived = facts["derived"]
            if derived is None:
                assert set(facts["numbers"]) <= source_numbers
            else:
                # each operand is the event number of its own source sentence, in order
                for n, t in zip(derived["of"], texts):
                    assert re.search(rf"\b{facts['kind']} {n} ", t)
                op = {"sum": sum, "difference": lambda xs: abs(xs[0] - xs[1])}[derived["op"]]
                assert derived["value"] == op(derived["of"])
                assert set(facts["numbers"]) <= source_numbers | {derived["value"]}
            assert set(facts["numbers"]) == set(numbers_in(sentence))
            assert facts_correct(sentence, facts)


def test_summary_follows_first_mention_and_kinds_are_unique(long_records):
    for r in long_records:
        firsts = [a[0] for a in r["alignment"]]
        assert firsts == sorted(firsts)
        kinds = [f["kind"] for f in r["facts"]]
        assert len(set(kinds)) == len(kinds)
        fact_sentences = [j for j, t in enumerate(r["segments"]) if kind_of(t)]
        assert sorted(j for a in r["alignment"] for j in a) == fact_sentences


def test_kinds_share_no_verb_and_no_unit_word():
    verbs = [v for v, _ in sd.KINDS]
    unit_words = [w for _, u in sd.KINDS for w in u.split() if w not in ("of", "for", "the")]
    assert len(set(verbs)) == len(verbs) and len(set(unit_words)) == len(unit_words)
    assert not set(verbs) & set(unit_words)


def test_distractors_never_use_a_kind_word():
    for template in sd.DISTRACTOR_TEMPLATES + (sd.INTRO,):
        assert not words(template) & KIND_WORDS, template
    for template in sd.FACT_TEMPLATES:  # only the slots bring a kind's words
        assert not words(re.sub(r"\{[a-z]+\}", "", template)) & KIND_WORDS, template


def test_document_survives_the_serving_segmentation(long_records):
    for r in long_records[:10]:
        assert segment_prompt_text(" ".join(r["segments"]), "sentences") == r["segments"]


def test_output_is_the_protocol_format(small_splits):
    for r in small_splits["val"]:
        parts = split_output(r["output"])
        assert [h for h, _ in parts] == [",".join(map(str, a)) for a in r["alignment"]]
        assert [c.strip() for _, c in parts] == r["reference"]
        assert not parts[0][1].startswith(" ")
        assert all(c.startswith(" ") for _, c in parts[1:])


def test_records_round_trip_through_the_loader_and_the_span_rule(small_splits, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    vocab = D.make_span_vocab(sp, 16)
    for r in small_splits["val"]:
        ex = D.encode_record(r, sp, vocab, "sentences")
        tracker = track(vocab, ex.ids, ex.prompt_len)
        n = len(r["segments"])
        prompt = [s for s in tracker.segments if s.in_prompt]
        output = [s for s in tracker.segments if not s.in_prompt]
        assert len(prompt) == n and len(output) == len(r["alignment"])
        assert tracker.malformed_count == 0
        assert [s.refs for s in output] == r["alignment"]
        assert all(s.restricted for s in output)
        assert sp.decode(ex.ids[ex.prompt_len:-1]) == r["output"]
        assert ex.ids[-1] == sp.eos_id()
    path = str(tmp_path / "val.jsonl")
    sd.write_jsonl(path, small_splits["val"])
    packed, kept, dropped, malformed = D.pack_jsonl(path, TOKENIZER, 16, "sentences", 100000)
    assert (kept, dropped, malformed, len(packed)) == (20, 0, 0, 20)


def test_cli_and_presets(tmp_path, capsys):
    out = tmp_path / "summ"
    sd.main(["--preset", "summ-small", "--out", str(out), "--seed", "3", "--n-train", "6",
             "--n-val", "2", "--n-test", "3", "--max-sentences", "12", "--tokenizer", TOKENIZER])
    counts = {n: len((out / f"{n}.jsonl").read_text().splitlines()) for n in
              ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 3}
    spec = json.loads((out / "spec.json").read_text())
    assert spec["spec"]["max_sentences"] == 12 and spec["seed"] == 3
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert records == sd.make_splits(sd.SummSpec(**spec["spec"]),
                                     {"train": 6, "val": 2, "test": 3}, 3)["train"]
    assert all(10 <= len(r["segments"]) <= 12 for r in records)
    assert "tokens" in capsys.readouterr().out
    LONG.check()
    assert (LONG.min_sentences, LONG.max_sentences) == (40, 150)


@pytest.mark.parametrize("change", [{"min_kinds": 0}, {"max_kinds": 30}, {"min_sentences": 5},
                                    {"min_sentences": 200}, {"max_value": 12}])
def test_bad_specs_are_refused(change):
    with pytest.raises(ValueError):
        sd.SummSpec(**{**vars(sd.SummSpec()), **change}).check()


def test_sentences_open_with_their_segment_id_unless_unnumbered():
    numbered = sd.generate(SMALL, 3, "summ-9-test", set())
    for r in numbered:
        assert all(t.startswith(f"({j}) ") for j, t in enumerate(r["segments"]))
    plain = sd.generate(dataclasses.replace(SMALL, numbered=False), 3, "summ-9-test", set())
    for a, b in zip(numbered, plain):
        assert [t.split(" ", 1)[1] for t in a["segments"]] == b["segments"]
        assert a["output"] == b["output"]


def test_training_split_is_the_same_in_parallel(monkeypatch):
    monkeypatch.setattr(sd, "TRAIN_CHUNK", 7)  # 20 records: chunks of 7, 7 and 6
    sizes = {"train": 20, "val": 4, "test": 4}
    serial = sd.make_splits(SMALL, sizes, seed=5)
    parallel = sd.make_splits(SMALL, sizes, seed=5, workers=3)
    assert serial == parallel and len(serial["train"]) == 20
    texts = {" ".join(r["segments"]) for r in serial["test"] + serial["val"]}
    assert not texts & {" ".join(r["segments"]) for r in serial["train"]}
