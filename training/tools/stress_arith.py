"""Arithmetic prompts from a generator other than the training one, to check that a model learnt
the range and not the generator's habits: operators drawn first and operands fitted to them,
trees grown by random leaf splitting, pure left and right chains, complete trees, operands 0 and
99, products close to 99. Every value in [0, 100), 1-12 operators, depth <= 5.

    python3 tools/stress_arith.py OUT.jsonl [--n 600] [--seed 1]
"""
import argparse
import json
import random
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spanserve_train import arith_data as ad  # noqa: E402

NEAR_99 = [(9, 11), (11, 9), (3, 33), (33, 3), (1, 99), (99, 1), (0, 99), (99, 0), (7, 14),
           (14, 7), (8, 12), (12, 8), (4, 24), (24, 4), (2, 49), (49, 2), (6, 16), (16, 6)]


def grow(n: int, rng: random.Random, style: str):
    """A shape of n operators: splits random leaves ('any'), or a left/right chain."""
    if style == "left":
        t = None
        for _ in range(n):
            t = (t, None)
        return t
    if style == "right":
        t = None
        for _ in range(n):
            t = (None, t)
        return t
    t = None
    for _ in range(n):  # split a uniformly chosen leaf
        leaves = []

        def walk(x, path):
            if x is None:
                leaves.append(path)
            else:
                walk(x[0], path + (0,))
                walk(x[1], path + (1,))
        walk(t, ())
        path = rng.choice(leaves)

        def put(x, p):
            if not p:
                return (None, None)
            return (put(x[0], p[1:]), x[1]) if p[0] == 0 else (x[0], put(x[1], p[1:]))
        t = put(t, path)
    return t


def fill(shape, rng: random.Random, digits: int):
    """Operators first, then operands that fit them (top-down, a target value per node)."""
    def node(shape, target):
        if shape is None:
            return target
        for _ in range(200):
            op = rng.choice("+-*")
            if op == "+":
                a = rng.randint(0, target)
                b = target - a
            elif op == "-":
                a = rng.randint(target, 99)
                b = a - target
            else:
                divisors = [d for d in range(1, 100) if target % d == 0] if target else [0]
                a = rng.choice(divisors) if target else rng.randint(0, 99)
                b = target // a if a else rng.randint(0, 99)
            if shape[0] is None and len(str(a)) > digits or shape[1] is None and len(str(b)) > digits:
                continue
            return ad.Op(op, node(shape[0], a), node(shape[1], b))
        return None

    def ok(e):
        return e is not None and "None" not in repr(e)
    for _ in range(50):
        target = rng.randint(0, 99 if digits > 1 else 30)
        e = node(shape, target)
        if ok(e):
            return e
    return None


def records(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        kind = rng.choice(["any", "any", "left", "right", "near99", "extremes"])
        if kind == "near99":
            a, b = rng.choice(NEAR_99)
            e = ad.Op("*", a, b)
            if rng.random() < 0.7:  # inside a larger expression
                c = rng.randint(0, 99 - a * b) if a * b < 99 else 0
                e = ad.Op("+", e, c) if rng.random() < 0.5 else ad.Op("-", e, rng.randint(0, a * b))
        else:
            ops = rng.randint(1, 5 if kind in ("left", "right") else 12)
            shape = grow(ops, rng, kind if kind != "extremes" else "any")
            e = fill(shape, rng, rng.choice([1, 2]))
            if e is None:
                continue
            if kind == "extremes":
                text = ad.to_text(e)
                if "0" not in text and "99" not in text:
                    continue
        try:
            ad.parse(ad.to_text(e))
        except ValueError:
            continue
        if ad.depth(e) > 5 or not 1 <= ad.count_ops(e) <= 12:
            continue
        values_ok = all(0 <= ad.value(ad.parse(s)) < 100 for s in ad.chain(e)) and all(
            0 <= int(x) < 100 for x in ad._TOKEN.findall(ad.to_text(e)) if x.isdigit())
        if not values_ok or ad.to_text(e) in seen:
            continue
        seen.add(ad.to_text(e))
        out.append(ad.make_record(e))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    ad.write_jsonl(args.out, records(args.n, args.seed))


if __name__ == "__main__":
    main()
