"""Arithmetic dataset: printing, step rewriting, checker, splits, presets and CLI."""
import json
import random

import pytest

from spanserve_train import arith_data as ad


def test_protocol_example_reproduced_exactly():
    record = ad.make_record(ad.parse("((3+4)*(5-2))+6"))
    assert record["prompt"] == "((3+4)*(5-2))+6="
    assert record["output"] == "<a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27"
    assert record["answer"] == 27
    assert record["steps"] == ["(7*(5-2))+6", "(7*3)+6", "21+6", "27"]


def test_printing_parenthesises_operands_only():
    e = ad.Op("*", ad.Op("+", 1, 2), ad.Op("-", 9, ad.Op("*", 2, 3)))
    assert ad.to_text(e) == "(1+2)*(9-(2*3))"
    assert ad.to_text(ad.Op("+", 1, 2)) == "1+2"
    assert ad.to_text(7) == "7"


@pytest.mark.parametrize("text", ["(3+4)", "3+4+5", "03+4", "3 + 4", "3+", "(3+4", "", "3+(4)"])
def test_parse_rejects_non_canonical_text(text):
    with pytest.raises(ValueError):
        ad.parse(text)


def test_check_rewrite():
    assert ad.check_rewrite("((3+4)*(5-2))+6", "(7*(5-2))+6")
    assert ad.check_rewrite("(7*3)+6", "21+6")
    assert ad.check_rewrite("21+6", "27")
    assert ad.check_rewrite("5-9", "-4")                      # negative result, printed as is
    assert not ad.check_rewrite("((3+4)*(5-2))+6", "((3+4)*3)+6")  # not the leftmost one
    assert not ad.check_rewrite("((3+4)*(5-2))+6", "((7)*(5-2))+6")  # parentheses kept
    assert not ad.check_rewrite("((3+4)*(5-2))+6", "(8*(5-2))+6")  # wrong value
    assert not ad.check_rewrite("(7*3)+6", "27")               # two steps at once
    assert not ad.check_rewrite("27", "27")                    # nothing left to evaluate
    assert not ad.check_rewrite("garbage", "1")


def test_check_output_accepts_the_reference_and_flags_each_fault():
    prompt = "((3+4)*(5-2))+6="
    good = "<a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27"
    report = ad.check_output(prompt, good)
    assert report.ok and report.headers_chain and report.steps_correct == 4
    assert report.expected_steps == 4 and report.answer == "27"

    wide = good.replace("<a>2</a>", "<a>0,2</a>")  # valid, not the chain
    r = ad.check_output(prompt, wide)
    assert r.ok and r.headers_valid and not r.headers_chain

    forward = good.replace("<a>2</a>", "<a>3</a>")  # references itself
    r = ad.check_output(prompt, forward)
    assert not r.ok and not r.headers_valid and r.answer_correct

    dup = good.replace("<a>2</a>", "<a>1,1</a>")
    assert not ad.check_output(prompt, dup).headers_valid

    wrong_step = good.replace("(7*3)+6", "(7*4)+6")
    r = ad.check_output(prompt, wrong_step)
    assert not r.ok and r.steps_correct == 2 and r.answer_correct

    wrong_answer = good[:-2] + "28"
    r = ad.check_output(prompt, wrong_answer)
    assert not r.ok and not r.answer_correct

    for broken in ["27", "<a>0(7*(5-2))+6", ""]:
        r = ad.check_output(prompt, broken)
        assert not r.ok and not r.well_formed


@pytest.mark.parametrize("preset", ["arith-d1", "arith-d2"])
def test_generated_records_are_correct_chains_within_the_spec(preset):
    spec = ad.spec_from_preset(ad.load_preset(preset))
    records = ad.generate(spec, 200, "test", set())
    for r in records:
        e = ad.parse(r["expr"])
        assert spec.min_ops <= ad.count_ops(e) <= spec.max_ops
        assert ad.depth(e) <= spec.max_depth
        assert len(r["steps"]) == ad.count_ops(e)
        prev = r["expr"]
        for s in r["steps"]:
            assert ad.check_rewrite(prev, s)
            assert 0 <= ad.value(ad.parse(s)) < spec.max_value
            prev = s
        assert r["steps"][-1] == str(r["answer"])
        report = ad.check_output(r["prompt"], r["output"])
        assert report.ok and report.headers_chain, report.errors
        headers = [h for h, _ in ad.split_output(r["output"])]
        assert [int(h) for h in headers] == list(range(len(r["steps"])))
    operands = [int(x) for r in records for x in ad._TOKEN.findall(r["expr"]) if x.isdigit()]
    assert all(len(str(x)) <= spec.max_digits for x in operands)
    if preset == "arith-d2":
        assert all(len(r["steps"]) >= 8 for r in records)


def test_negative_intermediates_only_when_allowed():
    spec = ad.ArithSpec(min_ops=3, max_ops=5, max_digits=1, max_value=100, allow_negative=True)
    records = ad.generate(spec, 300, "neg", set())
    negative = [s for r in records for s in r["steps"] if ad.value(ad.parse(s)) < 0]
    assert negative, "some chain should go through a negative value"
    for r in records:
        assert ad.check_output(r["prompt"], r["output"]).ok
        assert all(abs(ad.value(ad.parse(s))) < 100 for s in r["steps"])
    spec.allow_negative = False
    for r in ad.generate(spec, 300, "neg", set()):
        assert all(ad.value(ad.parse(s)) >= 0 for s in r["steps"])


def test_splits_are_disjoint_distinct_and_deterministic():
    spec = ad.ArithSpec(min_ops=1, max_ops=2, max_digits=1, max_depth=2, max_value=100)
    sizes = {"train": 3000, "val": 300, "test": 300}  # a small space: collisions happen
    splits = ad.make_splits(spec, sizes, seed=1)
    exprs = {name: [r["expr"] for r in rs] for name, rs in splits.items()}
    for name, xs in exprs.items():
        assert len(xs) == sizes[name] == len(set(xs))
    assert not set(exprs["train"]) & set(exprs["val"])
    assert not set(exprs["train"]) & set(exprs["test"])
    assert not set(exprs["val"]) & set(exprs["test"])
    assert ad.make_splits(spec, sizes, seed=1) == splits
    assert ad.make_splits(spec, sizes, seed=2)["test"] != splits["test"]


def test_generate_fails_cleanly_when_the_space_is_too_small():
    spec = ad.ArithSpec(min_ops=1, max_ops=1, max_digits=1, max_depth=1, max_value=10)
    with pytest.raises(ValueError):
        ad.generate(spec, 10000, "small", set())


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError):
        ad.ArithSpec(min_ops=5, max_ops=8, max_depth=2).check()
    with pytest.raises(ValueError):
        ad.ArithSpec(max_digits=3, max_value=50).check()


def test_cli_writes_the_three_splits(tmp_path):
    ad.main(["--preset", "arith-d1", "--out", str(tmp_path), "--train", "50", "--val", "10",
             "--test", "10", "--max-ops", "3"])
    for name, n in [("train", 50), ("val", 10), ("test", 10)]:
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            r = json.loads(line)
            assert set(r) == {"prompt", "output", "answer", "steps", "expr"}
            assert len(r["steps"]) <= 3
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["spec"]["max_ops"] == 3


def test_random_expressions_round_trip_through_the_parser():
    rng = random.Random(5)
    spec = ad.ArithSpec(min_ops=1, max_ops=7, max_digits=3, max_value=10**6, allow_negative=True)
    for _ in range(300):
        e = ad.random_expr(spec, rng)
        assert ad.parse(ad.to_text(e)) == e


# ----------------------------------------------------------------------------- the shipped range

def range_spec():
    return ad.spec_from_preset(ad.load_preset("arith-range"))


def test_range_preset_covers_the_whole_range_in_every_bucket():
    spec = range_spec()
    assert (spec.min_ops, spec.max_ops, spec.min_digits, spec.max_digits, spec.max_depth,
            spec.max_value, spec.allow_negative, spec.balanced) == (1, 12, 1, 2, 5, 100, False,
                                                                      True)
    records = ad.generate(spec, 3000, "range", set())
    ops = [ad.count_ops(ad.parse(r["expr"])) for r in records]
    assert set(ops) == set(range(1, 13))  # every operator count, no gap between old levels
    depths = {ad.depth(ad.parse(r["expr"])) for r in records}
    assert depths == set(range(1, 6))
    buckets = [ad.bucket_of(r["expr"]) for r in records]
    counts = {b: buckets.count(b) for b in set(buckets)}
    labels = [f"{lo}-{hi}" for lo, hi in ad.OPS_BUCKETS]
    assert set(counts) == {(label, d) for label in labels for d in (1, 2)}
    # Operators are drawn uniformly, so a bucket's share is its width over 12, per digit count
    for (label, _), n in counts.items():
        lo, hi = map(int, label.split("-"))
        expected = len(records) * (hi - lo + 1) / 12 / 2
        assert 0.7 * expected < n < 1.3 * expected, (label, n, expected)
    for r in records:
        report = ad.check_output(r["prompt"], r["output"])
        assert report.ok and report.headers_chain, report.errors
        for text in [r["expr"]] + r["steps"]:
            assert 0 <= ad.value(ad.parse(text)) < 100
        assert all(0 <= int(x) < 100 for x in ad._TOKEN.findall(r["expr"]) if x.isdigit())


def test_balanced_draw_hits_the_cell_it_is_given():
    spec, rng = range_spec(), random.Random(7)
    for ops in (1, 5, 12):
        for digits in (1, 2):
            for depth in ad.depth_range(ops, spec):
                for shape in ad.SHAPES:
                    cell = ad.Cell(ops, digits, depth, shape, "*", 0.5 if digits > 1 else 0.0)
                    e = ad.random_expr_balanced(spec, rng, cell)
                    assert ad.count_ops(e) == ops and ad.depth(e) == depth
                    assert ad.bucket_of(ad.to_text(e))[1] == digits


def test_bucket_of_labels_operators_and_the_longest_operand():
    assert ad.bucket_of("3+4") == ("1-2", 1)
    assert ad.bucket_of("(12+4)*3") == ("1-2", 2)
    assert ad.bucket_of("((1+2)*(3-1))+5") == ("3-4", 1)
    chain = "1+2"
    for _ in range(12):
        chain = f"({chain})+1"
    assert ad.bucket_of(chain) == ("13", 1)  # past the buckets: its own label


def test_sharded_splits_are_disjoint_and_do_not_depend_on_workers():
    spec = ad.ArithSpec(min_ops=1, max_ops=3, max_digits=1, max_depth=2, max_value=100,
                        balanced=True)
    sizes = {"train": 2000, "val": 200, "test": 200}  # a small space: shards collide
    one = ad.make_splits(spec, sizes, seed=4, shards=4, workers=1)
    two = ad.make_splits(spec, sizes, seed=4, shards=4, workers=2)
    assert one == two
    exprs = {name: [r["expr"] for r in rs] for name, rs in one.items()}
    for name, xs in exprs.items():
        assert len(xs) == sizes[name] == len(set(xs))
    assert not set(exprs["train"]) & (set(exprs["val"]) | set(exprs["test"]))
    assert not set(exprs["val"]) & set(exprs["test"])
    assert one["test"] == ad.make_splits(spec, sizes, seed=4)["test"]  # held out: unsharded
    assert ad.make_splits(spec, sizes, seed=5, shards=4)["train"] != one["train"]


@pytest.mark.parametrize("preset,ops,digits,depth", [("arith-l1", (2, 4), 2, 3),
                                                     ("arith-l2", (8, 10), 1, 4)])
def test_old_levels_stay_named_presets_and_draw_as_before(preset, ops, digits, depth):
    spec = ad.spec_from_preset(ad.load_preset(preset))
    assert (spec.min_ops, spec.max_ops) == ops and spec.max_digits == digits
    assert spec.max_depth == depth and spec.max_value == 100 and not spec.balanced
    records = ad.generate(spec, 100, f"arith-{preset}", set())
    # balanced=False keeps the old draws: the same records as the unbalanced generator
    rng = random.Random(f"arith-{preset}")
    assert ad.random_expr(spec, rng) == ad.parse(records[0]["expr"])
    assert all(ops[0] <= len(r["steps"]) <= ops[1] for r in records)
