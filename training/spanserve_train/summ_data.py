"""Synthetic long documents and their span-annotated summaries (the document-to-summary task).

No news corpus is reachable here, so documents are built from structured facts. A document is a
community report of 40 to 150 sentences. A few *event kinds* (a verb and a unit: "planted ...
young trees") each occur in 1 to 3 *fact sentences*, one person each, with an organisation, a
place, a date and a number; every other sentence is a distractor (the same people, places,
organisations and other numbers, but never a kind's verb or unit).

The reference summary has one sentence per kind, in the order of the kind's first mention; what
it says is fixed by how many fact sentences the kind has, so the task is a function of the
document and a model can learn it exactly:
- 1: who did what:  "Ada Moss of the Birch Guild planted 41 young trees on 14 March."
- 2: a comparison:  "Ada Moss planted 41 young trees and Ben Hale planted 38, a difference of 3."
- 3: a total:       "Ada Moss planted 41, Ben Hale 38 and Cy Roe 31 young trees, 110 in all."
Its gold sources are exactly the kind's fact sentences, so every header is known. Sentences are
numbered like the items of minutes, "(12) ...", the number being the sentence's segment id
(SummSpec.numbered, on in the presets). The presets draw two-digit numbers (10-99): the sums
and differences are then within reach of a model trained for minutes (three-digit sums need
far more training), and the spans, which are what the task measures, do not change.

The article sentences are the prompt segments 0..N-1 (cut by the serving rule: the text joined
by spaces gives back the same sentences under segmentation `sentences`); the output is written
by summ_annotate.make_output. A record:
    {"segments": [N sentences], "output": "<a>3,17</a>...<a>40</a> ...",
     "alignment": [[3, 17], [40], ...], "reference": [summary sentences],
     "facts": [{"type", "kind", "entities", "numbers", "derived"}, ...], "doc_id"}
`facts[k]` are what summary sentence k must state: every entity (names, organisation, date) and
exactly the numbers `numbers` (those of the reference sentence); `derived` is the difference or
the sum and its operands, which are the numbers of the source sentences.

CLI: python3 -m spanserve_train.summ_data --preset summ-long --out runs/data/summ-long
writes train.jsonl, val.jsonl and test.jsonl (disjoint seeds, no document in two splits).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from . import arith_data
from .arith_data import add_spec_arguments, apply_spec_arguments, load_preset, write_jsonl
from .span_rule import segment_prompt_text
from .summ_annotate import make_output

# (verb, unit). Verbs and units are unique: a kind's sentences are found by either.
KINDS = (
    ("planted", "young trees"), ("repaired", "bicycles"), ("baked", "loaves of bread"),
    ("knitted", "wool scarves"), ("delivered", "food parcels"), ("painted", "fence panels"),
    ("caught", "trout"), ("printed", "posters"), ("recorded", "songs"),
    ("rowed", "kilometres"), ("cleaned", "windows"), ("built", "birdhouses"),
    ("raised", "euros for charity"), ("sewed", "quilts"), ("translated", "letters"),
    ("harvested", "pumpkins"), ("served", "bowls of soup"), ("collected", "kilograms of apples"),
    ("donated", "books"), ("sold", "jars of honey"),
)
FIRST = ("Ada", "Ben", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
         "Kira", "Liam", "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sami", "Tessa", "Umar",
         "Vera", "Wim", "Yara", "Zoran", "Alma", "Bruno", "Celia", "Dario", "Edith", "Felix",
         "Gina", "Hana", "Ivo", "Jana", "Karl", "Lena", "Marco", "Nora", "Otto", "Petra")
LAST = ("Moss", "Hale", "Varga", "Lindqvist", "Okafor", "Brandt", "Costa", "Novak", "Quint",
        "Reyes", "Sato", "Tamm", "Ulrich", "Weller", "Yilmaz", "Zeller", "Abbott", "Berg",
        "Castell", "Dunne", "Eriksen", "Fournier", "Gallo", "Horvat", "Iversen", "Janssen",
        "Kowal", "Larsen", "Mendes", "Nagy", "Olsen", "Pereira", "Rossi", "Sandor", "Toth",
        "Vidal", "Winter", "Aalto", "Baker", "Crane")
ORG_HEAD = ("Alder", "Birch", "Cedar", "Northgate", "Riverside", "Stonebridge", "Willow",
            "Harbor", "Maple", "Oakfield", "Pinewood", "Elm Street", "Hazel", "Rowan", "Brook")
ORG_TAIL = ("Guild", "Club", "Society", "Cooperative", "Workshop", "Foundation", "Trust")
PLACES = ("Northbrook", "Eastwick", "Millbrook", "Fairhaven", "Oakridge", "Pinecrest",
          "Redcliff", "Westmoor", "Greenvale", "Highfield", "Lakeside", "Marlow", "Dunmore",
          "Kingsford", "Ashby", "Bramley", "Coldwater", "Elmstead", "Foxley", "Glenwood",
          "Hollins", "Ivybridge", "Larkhill", "Moorside", "Newhaven", "Ravensworth")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

FACT_TEMPLATES = (
    "On {date}, {person} of the {org} {verb} {n} {unit} at {place}, working from early morning "
    "until the light began to fade.",
    "{person}, who works for the {org}, {verb} {n} {unit} in {place} on {date}, and most of "
    "the neighbours came out to watch.",
    "At {place} on {date}, {person} from the {org} {verb} {n} {unit}, the council noted in its "
    "weekly notes to members.",
    "The records of the {org} show that {person} {verb} {n} {unit} near {place} on {date}, "
    "despite the wet and windy weather.",
    "Helped by friends from {place}, {person} of the {org} {verb} {n} {unit} on {date}, a "
    "result that pleased the whole team.",
)
# None of these may hold a kind's verb or unit (tests/python/test_summ_data.py checks).
DISTRACTOR_TEMPLATES = (
    "{person} grew up in {place} and still visits the old market there every {weekday} to "
    "talk with the traders.",
    "{person} has been a member of the {org} for {small} years and chairs its meetings on the "
    "first {weekday} of each month.",
    "The {org} office in {place} has {small} rooms and a small garden behind it, where members "
    "meet when the weather allows.",
    "Rain fell over {place} for {small} days in {month}, and the river rose above its banks "
    "near the old stone bridge.",
    "Visitors from {place} praised the music, the dancing and the friendly volunteers, and many "
    "said they would come again.",
    "{person} and {person2} met at the {place} library to plan the coming season and to share "
    "ideas for new projects.",
    "A reporter asked {person} about the weather, which had been cold all week in {place} and "
    "showed no sign of changing.",
    "The bus from {place} to {place2} ran {small} minutes late on most mornings in {month}, "
    "which annoyed many of the regular passengers.",
    "Most of the volunteers from the {org} arrived early in {place} and stayed until well after "
    "sunset on both days.",
    "{person} said that the work was hard but that the mood in {place} was good and that "
    "everyone helped each other.",
    "The hall in {place} got a new coat of paint in {month}, and the {org} hopes that a new "
    "roof will follow soon.",
    "Several families from {place2} joined the events in {place} for the first time, and "
    "{person} welcomed them at the gate.",
    "According to {person}, the {org} hopes to open a second branch in {place} next year if "
    "enough members sign up.",
    "The road between {place} and {place2} was closed for repairs for most of {month}, so "
    "drivers had to take the long way round.",
    "{person} thanked the staff of the {org} for their patience during the long winter and "
    "for their help with the accounts.",
    "A small choir from {place} sang at the opening, led by {person} and {person2}, and the "
    "audience asked for one more tune.",
    "The {org} was founded in {place} by a group of {small} neighbours many years ago and has "
    "grown steadily ever since.",
    "Tickets for the spring fair in {place} were gone within {small} hours of release, the "
    "organisers told the local paper.",
    "{person} spent {small} weeks in {place2} visiting relatives before the season began and "
    "came back full of new plans.",
    "Children from the {place} school drew pictures of the river for the {org}, which hung "
    "them in its entrance hall.",
)
INTRO = ("This is the {month} report of the {place} community council on the work of its "
         "volunteers and the events of the month.")


@dataclass
class SummSpec:
    min_sentences: int = 40     # document sentences, drawn uniformly
    max_sentences: int = 150
    min_kinds: int = 3          # event kinds = summary sentences, drawn uniformly
    max_kinds: int = 8
    min_value: int = 10         # a fact's number, distinct within a document
    max_value: int = 999
    # Each sentence opens with its item number, "(12) ...", which is its segment id: a header
    # then copies numbers the text shows. Without them the model must count up to 150 anchors
    # to name a sentence, which a small model trained for minutes does not learn.
    numbered: bool = True

    def check(self) -> None:
        if not 1 <= self.min_kinds <= self.max_kinds <= len(KINDS):
            raise ValueError(f"need 1 <= min_kinds <= max_kinds <= {len(KINDS)}")
        if self.min_sentences < 1 + 3 * self.max_kinds:
            raise ValueError("min_sentences must hold the intro and 3 facts of every kind")
        if self.min_sentences > self.max_sentences:
            raise ValueError("need min_sentences <= max_sentences")
        if not 1 <= self.min_value or self.max_value - self.min_value < 3 * self.max_kinds:
            raise ValueError("the value range must hold a distinct number for every fact")


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"


def _people(rng: random.Random, n: int) -> List[str]:
    names = [f"{a} {b}" for a in FIRST for b in LAST]
    return rng.sample(names, n)


def _fact_record(rng, kind, person, org, place, n) -> dict:
    verb, unit = kind
    fact = {"verb": verb, "unit": unit, "person": person, "org": org, "place": place,
            "date": _date(rng), "n": n}
    fact["text"] = rng.choice(FACT_TEMPLATES).format(**fact)
    return fact


def _distractor(rng, people, orgs) -> str:
    place, place2 = rng.sample(PLACES, 2)
    person, person2 = rng.sample(people, 2)
    return rng.choice(DISTRACTOR_TEMPLATES).format(
        person=person, person2=person2, org=rng.choice(orgs), place=place, place2=place2,
        small=rng.randint(2, 60), month=rng.choice(MONTHS), weekday=rng.choice(WEEKDAYS))


def _summary_sentence(facts: List[dict]) -> dict:
    """The reference sentence of a kind and its gold facts, from its facts in document order."""
    verb, unit = facts[0]["verb"], facts[0]["unit"]
    people = [f["person"] for f in facts]
    if len(facts) == 1:
        f = facts[0]
        text = f"{f['person']} of the {f['org']} {verb} {f['n']} {unit} on {f['date']}."
        kind, entities, derived = "who", [f["person"], f["org"], f["date"]], None
    elif len(facts) == 2:
        a, b = facts
        d = abs(a["n"] - b["n"])
        text = (f"{a['person']} {verb} {a['n']} {unit} and {b['person']} {verb} {b['n']}, "
                f"a difference of {d}.")
        kind, entities = "compare", people
        derived = {"op": "difference", "of": [a["n"], b["n"]], "value": d}
    else:
        total = sum(f["n"] for f in facts)
        # Each number beside its person: copied from the one source that names both. (Names
        # first and numbers after them made the model count its place in two lists, and the
        # 2026-12-07 model repeated one: "A, B and C delivered 51, 27 and 27".) The parts
        # first, then their total: the sum is worked from numbers just written.
        text = (f"{people[0]} {verb} {facts[0]['n']}, {people[1]} {facts[1]['n']} and "
                f"{people[2]} {facts[2]['n']} {unit}, {total} in all.")
        kind, entities = "total", people
        derived = {"op": "sum", "of": [f["n"] for f in facts], "value": total}
    numbers = sorted({int(x) for x in _numbers(text)})
    return {"text": text, "facts": {"type": kind, "kind": verb, "entities": entities,
                                    "numbers": numbers, "derived": derived}}


def _numbers(text: str) -> List[str]:
    return re.findall(r"[0-9]+", text)


def make_document(spec: SummSpec, rng: random.Random) -> dict:
    """One record: a document of facts and distractors, its summary and gold facts."""
    n_sentences = rng.randint(spec.min_sentences, spec.max_sentences)
    kinds = rng.sample(KINDS, rng.randint(spec.min_kinds, spec.max_kinds))
    counts = [rng.randint(1, 3) for _ in kinds]
    n_facts = sum(counts)
    people = _people(rng, n_facts + 6)  # the fact persons first, then some who only chat
    orgs = [f"{h} {t}" for h, t in zip(rng.sample(ORG_HEAD, 5), rng.choices(ORG_TAIL, k=5))]
    values = rng.sample(range(spec.min_value, spec.max_value + 1), n_facts)
    facts, i = [], 0
    for kind, count in zip(kinds, counts):
        for _ in range(count):
            facts.append(_fact_record(rng, kind, people[i], rng.choice(orgs),
                                      rng.choice(PLACES), values[i]))
            i += 1
    # Sentence 0 is the intro; the facts go to random later positions, in a random order.
    slots = sorted(rng.sample(range(1, n_sentences), n_facts))
    order = list(range(n_facts))
    rng.shuffle(order)
    sentences: List[Optional[str]] = [None] * n_sentences
    sentences[0] = INTRO.format(month=rng.choice(MONTHS), place=rng.choice(PLACES))
    position: Dict[int, int] = {}
    for slot, f in zip(slots, order):
        sentences[slot] = facts[f]["text"]
        position[f] = slot
    for j in range(n_sentences):
        if sentences[j] is None:
            sentences[j] = _distractor(rng, people, orgs)
    if spec.numbered:
        sentences = [f"({j}) {text}" for j, text in enumerate(sentences)]
    # One summary sentence per kind, in order of first mention; sources in document order.
    groups, start = [], 0
    for count in counts:
        members = sorted(range(start, start + count), key=lambda f: position[f])
        groups.append(members)
        start += count
    groups.sort(key=lambda members: position[members[0]])
    reference, alignment, gold = [], [], []
    for members in groups:
        s = _summary_sentence([facts[f] for f in members])
        reference.append(s["text"])
        alignment.append([position[f] for f in members])
        gold.append(s["facts"])
    if segment_prompt_text(" ".join(sentences), "sentences") != sentences:
        raise AssertionError("a document sentence does not survive the serving segmentation")
    return {"segments": sentences, "output": make_output(reference, alignment),
            "alignment": alignment, "reference": reference, "facts": gold}


def generate(spec: SummSpec, n: int, seed: str, exclude: set) -> List[dict]:
    """n records with distinct documents, none of them in `exclude` (document texts)."""
    spec.check()
    rng = random.Random(seed)
    seen = set(exclude)
    records = []
    while len(records) < n:
        record = make_document(spec, rng)
        text = " ".join(record["segments"])
        if text in seen:  # never seen in practice: the space is huge
            continue
        seen.add(text)
        record["doc_id"] = f"{seed}-{len(records)}"
        records.append(record)
    return records


TRAIN_CHUNK = 1000  # training records per seed: chunks are drawn in parallel, same records


def _train_chunk(job) -> List[dict]:
    spec, n, seed, exclude = job
    return generate(spec, n, seed, exclude)


def make_splits(spec: SummSpec, sizes: dict, seed: int, workers: int = 1) -> dict:
    """{"test", "val", "train"} -> records, each split from a seed of its own; the later splits
    skip the earlier ones' documents, so no document is in two splits. The training split is
    drawn in chunks of TRAIN_CHUNK records, one seed each (`summ-<seed>-train-<k>`), in
    `workers` processes; the records do not depend on `workers`."""
    splits, used = {}, set()
    for name in ("test", "val"):
        splits[name] = generate(spec, sizes[name], f"summ-{seed}-{name}", used)
        used.update(" ".join(r["segments"]) for r in splits[name])
    n = sizes["train"]
    jobs = [(spec, min(TRAIN_CHUNK, n - start), f"summ-{seed}-train-{start // TRAIN_CHUNK}", used)
            for start in range(0, n, TRAIN_CHUNK)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.Pool(min(workers, len(jobs))) as pool:
            chunks = pool.map(_train_chunk, jobs)
    else:
        chunks = [_train_chunk(job) for job in jobs]
    train, seen = [], set()
    for record in (r for chunk in chunks for r in chunk):
        text = " ".join(record["segments"])
        if text not in seen:  # two chunks drawing one document: never seen in practice
            seen.add(text)
            train.append(record)
    splits["train"] = train
    return splits


def length_stats(records: List[dict], sp=None) -> dict:
    """Document sentences and prompt tokens (min, mean, max): with a SentencePiece tokenizer,
    as data.py encodes the prompt ([BOS] + [<a>] + sentence ...), else characters / 4."""
    from .span_rule import encode_prompt
    sentences = [len(r["segments"]) for r in records]
    if sp is not None:
        anchor = sp.piece_to_id("<a>")
        tokens = [len(encode_prompt(sp, anchor, r["segments"])) for r in records]
    else:
        tokens = [len(" ".join(r["segments"])) / 4 for r in records]

    def summary(xs):
        return (min(xs), sum(xs) / len(xs), max(xs)) if xs else (0, 0, 0)
    return {"sentences": summary(sentences), "tokens": summary(tokens),
            "token_unit": "tokens" if sp is not None else "chars/4"}


def spec_from_preset(preset: dict) -> SummSpec:
    return arith_data.spec_from_preset(preset, SummSpec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generates the document-to-summary span dataset.")
    parser.add_argument("--preset", default="summ-long", help="name in training/configs or a path")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    for name in ("train", "val", "test"):
        parser.add_argument(f"--n-{name}", type=int, help=f"{name} size (default: the preset's)")
    parser.add_argument("--tokenizer", help="a tokenizer.model to report prompt tokens with "
                                            "(default: characters / 4)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the training split")
    add_spec_arguments(parser, SummSpec)
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    spec = spec_from_preset(preset)
    apply_spec_arguments(spec, args)
    sizes = dict(preset.get("sizes", {"train": 20000, "val": 200, "test": 256}))
    for name in sizes:
        if getattr(args, f"n_{name}") is not None:
            sizes[name] = getattr(args, f"n_{name}")
    sp = None
    if args.tokenizer:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    splits = make_splits(spec, sizes, args.seed, args.workers)
    for name, records in splits.items():
        write_jsonl(os.path.join(args.out, f"{name}.jsonl"), records)
        st = length_stats(records, sp)
        print(f"{name}: {len(records)} records; sentences {st['sentences'][0]}-"
              f"{st['sentences'][2]} (mean {st['sentences'][1]:.1f}); {st['token_unit']} "
              f"{st['tokens'][0]:.0f}-{st['tokens'][2]:.0f} (mean {st['tokens'][1]:.0f})")
    with open(os.path.join(args.out, "spec.json"), "w", encoding="utf-8") as f:
        json.dump({"spec": dataclasses.asdict(spec), "sizes": sizes, "seed": args.seed}, f,
                  indent=2)


if __name__ == "__main__":
    main()
