"""Arithmetic dataset in the span protocol: step-by-step evaluation of integer expressions.

An expression is a tree of +, -, * over non-negative integers. Printing parenthesises every
operation that is an operand of another one; the top-level operation is bare:
`((3+4)*(5-2))+6`. A step evaluates the leftmost innermost operation (the first one, in reading
order, whose two operands are numbers) and rewrites the expression; the operation's parentheses
go with it. The prompt is `expr=`, the output one segment per step, each referencing the step
before it (the first references the prompt, segment 0):

    ((3+4)*(5-2))+6=  ->  <a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27

Difficulty: operand digits, number of operators, depth (operator-tree height: `3+4` is 1, the
example above 3), a bound on every value (operands and intermediates, in absolute value) and
whether negative intermediates are allowed. Every intermediate value is the value of a subtree,
so bounding subtree values bounds the whole chain.

CLI: python3 -m spanserve_train.arith_data --preset arith-d1 --out data/arith-d1
writes train.jsonl, val.jsonl and test.jsonl of {"prompt", "output", "answer", "steps", "expr"}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from .tokenizer import ANCHOR, HEADER_END

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
OPS = "+-*"


# ----------------------------------------------------------------------------- expressions

@dataclass
class Op:
    op: str
    left: "Expr"
    right: "Expr"


Expr = Union[int, Op]


def apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def value(e: Expr) -> int:
    return e if isinstance(e, int) else apply(e.op, value(e.left), value(e.right))


def to_text(e: Expr, top: bool = True) -> str:
    if isinstance(e, int):
        return str(e)
    inner = to_text(e.left, False) + e.op + to_text(e.right, False)
    return inner if top else "(" + inner + ")"


def count_ops(e: Expr) -> int:
    return 0 if isinstance(e, int) else 1 + count_ops(e.left) + count_ops(e.right)


def depth(e: Expr) -> int:
    return 0 if isinstance(e, int) else 1 + max(depth(e.left), depth(e.right))


def step(e: Expr) -> Expr:
    """Evaluates the leftmost innermost operation of e (which must not be a number)."""
    assert isinstance(e, Op)
    if isinstance(e.left, int) and isinstance(e.right, int):
        return apply(e.op, e.left, e.right)
    if isinstance(e.left, Op):
        return Op(e.op, step(e.left), e.right)
    return Op(e.op, e.left, step(e.right))


def chain(e: Expr) -> List[str]:
    """The printed expression after each step; the last one is the answer."""
    steps = []
    while isinstance(e, Op):
        e = step(e)
        steps.append(to_text(e))
    return steps


_TOKEN = re.compile(r"\d+|[-+*()]")


def parse(text: str) -> Expr:
    """Parses the printed form back into a tree; raises ValueError on anything else.

    Strict: only the canonical printing is accepted (an operand operation must be
    parenthesised, the top one must not be, no spaces); a number may carry a leading `-`
    (negative intermediates).
    """
    pos = 0

    def error(what: str) -> ValueError:
        return ValueError(f"{what} at {pos} in {text!r}")

    def number() -> int:
        nonlocal pos
        m = re.compile(r"-?\d+").match(text, pos)
        if not m:
            raise error("expected a number")
        pos = m.end()
        return int(m.group())

    def operand() -> Expr:
        nonlocal pos
        if pos < len(text) and text[pos] == "(":
            pos += 1
            e = operation()
            if pos >= len(text) or text[pos] != ")":
                raise error("expected ')'")
            pos += 1
            return e
        return number()

    def operation() -> Op:
        nonlocal pos
        left = operand()
        if pos >= len(text) or text[pos] not in OPS:
            raise error("expected an operator")
        op = text[pos]
        pos += 1
        return Op(op, left, operand())

    if text.startswith("(") or re.search(r"\d[-+*]", text):
        e: Expr = operation()
    else:
        e = number()
    if pos != len(text):
        raise error("unexpected text")
    if to_text(e) != text:  # e.g. `(3+4)` at top level or a leading zero
        raise ValueError(f"not in canonical form: {text!r}")
    return e


# ----------------------------------------------------------------------------- generation

@dataclass
class ArithSpec:
    min_ops: int = 2
    max_ops: int = 4
    min_digits: int = 1
    max_digits: int = 2
    max_depth: int = 3
    max_value: int = 1000       # every operand and intermediate has |value| < max_value
    allow_negative: bool = False

    def check(self) -> None:
        if not (1 <= self.min_ops <= self.max_ops):
            raise ValueError("need 1 <= min_ops <= max_ops")
        if not (1 <= self.min_digits <= self.max_digits):
            raise ValueError("need 1 <= min_digits <= max_digits")
        if self.max_ops > 2 ** self.max_depth - 1:
            raise ValueError(f"max_ops {self.max_ops} does not fit in depth {self.max_depth}")
        if self.max_value <= 10 ** (self.max_digits - 1):
            raise ValueError("max_value must exceed the smallest max_digits operand")


def _operand(spec: ArithSpec, rng: random.Random) -> int:
    digits = rng.randint(spec.min_digits, spec.max_digits)
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, min(10 ** digits, spec.max_value) - 1)


def _capacity(d: int) -> int:
    return 2 ** d - 1 if d > 0 else 0


def _tree(n: int, d: int, spec: ArithSpec, rng: random.Random) -> Optional[Expr]:
    """A random tree of n operators and height <= d, values in bounds; None on a dead end."""
    if n == 0:
        return _operand(spec, rng)
    ks = [k for k in range(n) if k <= _capacity(d - 1) and n - 1 - k <= _capacity(d - 1)]
    k = rng.choice(ks)
    left, right = _tree(k, d - 1, spec, rng), _tree(n - 1 - k, d - 1, spec, rng)
    if left is None or right is None:
        return None
    a, b = value(left), value(right)
    ops = [op for op in OPS if abs(apply(op, a, b)) < spec.max_value
           and (spec.allow_negative or apply(op, a, b) >= 0)]
    return Op(rng.choice(ops), left, right) if ops else None


def random_expr(spec: ArithSpec, rng: random.Random) -> Expr:
    n = rng.randint(spec.min_ops, spec.max_ops)
    for _ in range(1000):
        e = _tree(n, spec.max_depth, spec, rng)
        if e is not None:
            return e
    raise ValueError(f"cannot draw an expression for {spec}")


def make_output(steps: List[str]) -> str:
    return "".join(f"{ANCHOR}{j}{HEADER_END}{s}" for j, s in enumerate(steps))


def make_record(e: Expr) -> dict:
    expr = to_text(e)
    steps = chain(e)
    return {"prompt": expr + "=", "output": make_output(steps), "answer": value(e),
            "steps": steps, "expr": expr}


def generate(spec: ArithSpec, n: int, seed: str, exclude: set) -> List[dict]:
    """n records with distinct expressions, none of them in `exclude`."""
    spec.check()
    rng = random.Random(seed)
    seen = set(exclude)
    records = []
    misses = 0  # draws in a row that gave nothing new: the space is nearly exhausted
    while len(records) < n:
        e = random_expr(spec, rng)
        expr = to_text(e)
        if expr in seen:
            misses += 1
            if misses > 5000:
                raise ValueError(f"only {len(records)} distinct expressions found for {spec}")
            continue
        misses = 0
        seen.add(expr)
        records.append(make_record(e))
    return records


def make_splits(spec: ArithSpec, sizes: dict, seed: int) -> dict:
    """{"train", "val", "test"} -> records. Each split has its own seed; held-out splits are
    drawn first and the later ones skip their expressions, so no expression is in two splits."""
    splits, used = {}, set()
    for name in ("test", "val", "train"):
        splits[name] = generate(spec, sizes[name], f"arith-{seed}-{name}", used)
        used.update(r["expr"] for r in splits[name])
    return splits


# ----------------------------------------------------------------------------- checking

def split_output(output: str) -> List[Tuple[str, str]]:
    """`<a>h</a>content...` -> [(header, content)]; raises ValueError on broken markup."""
    if not output.startswith(ANCHOR):
        raise ValueError("output does not start with an anchor")
    parts = []
    for chunk in output.split(ANCHOR)[1:]:
        if HEADER_END not in chunk:
            raise ValueError(f"segment {chunk!r} has no header end")
        header, content = chunk.split(HEADER_END, 1)
        parts.append((header, content))
    return parts


def check_rewrite(prev: str, next_: str) -> bool:
    """True when next_ is exactly prev with its leftmost innermost operation evaluated."""
    try:
        e = parse(prev)
    except ValueError:
        return False
    return isinstance(e, Op) and to_text(step(e)) == next_


@dataclass
class OutputReport:
    ok: bool = False             # well formed, every step right, headers valid, answer right
    well_formed: bool = False    # the markup splits into segments and the prompt parses
    steps_total: int = 0
    steps_correct: int = 0       # steps that are a correct rewrite of the one before
    headers_valid: bool = False  # every header is a list of distinct earlier segment ids
    headers_chain: bool = False  # every header is exactly the previous segment
    answer_correct: bool = False
    expected_steps: int = 0
    answer: Optional[str] = None
    errors: List[str] = dataclasses.field(default_factory=list)


def _parse_refs(header: str) -> Optional[List[int]]:
    if header == "":
        return []
    if not re.fullmatch(r"[0-9]{1,9}(,[0-9]{1,9})*", header):
        return None
    return [int(x) for x in header.split(",")]


def check_output(prompt: str, output: str) -> OutputReport:
    """Checks a model's output for an arithmetic prompt `expr=`."""
    report = OutputReport()
    try:
        if not prompt.endswith("="):
            raise ValueError("prompt does not end with '='")
        expr = parse(prompt[:-1])
        parts = split_output(output)
    except ValueError as err:
        report.errors.append(str(err))
        return report
    report.well_formed = True
    report.expected_steps = count_ops(expr)
    report.steps_total = len(parts)
    report.headers_valid = report.headers_chain = True
    prev = prompt[:-1]
    for j, (header, content) in enumerate(parts):
        refs = _parse_refs(header)
        segment = j + 1  # the prompt is segment 0
        if refs is None or len(set(refs)) != len(refs) or any(r >= segment for r in refs):
            report.headers_valid = False
            report.errors.append(f"step {j + 1}: bad header {header!r}")
        if refs != [j]:
            report.headers_chain = False
        if check_rewrite(prev, content):
            report.steps_correct += 1
        else:
            report.errors.append(f"step {j + 1}: {prev!r} -> {content!r} is not a rewrite")
        prev = content
    report.answer = parts[-1][1] if parts else None
    report.answer_correct = report.answer == str(value(expr))
    if not report.answer_correct:
        report.errors.append(f"answer {report.answer!r}, expected {value(expr)}")
    report.ok = (report.answer_correct and report.headers_valid
                 and report.steps_correct == report.steps_total)
    return report


# ----------------------------------------------------------------------------- CLI

def load_preset(name_or_path: str) -> dict:
    """A preset name from training/configs/ (arith-d1) or a path to a JSON file."""
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(CONFIG_DIR, name_or_path + ".json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def spec_from_preset(preset: dict) -> ArithSpec:
    fields = {f.name for f in dataclasses.fields(ArithSpec)}
    return ArithSpec(**{k: v for k, v in preset.get("spec", {}).items() if k in fields})


def write_jsonl(path: str, records: List[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generates the arithmetic span dataset.")
    parser.add_argument("--preset", default="arith-d1", help="name in training/configs or a path")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, help="train size (default: the preset's)")
    parser.add_argument("--val", type=int)
    parser.add_argument("--test", type=int)
    parser.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(ArithSpec):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else int
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind,
                            help=f"override the preset's {f.name}")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    spec = spec_from_preset(preset)
    for f in dataclasses.fields(ArithSpec):
        if getattr(args, f.name) is not None:
            setattr(spec, f.name, getattr(args, f.name))
    sizes = dict(preset.get("sizes", {"train": 20000, "val": 500, "test": 500}))
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    splits = make_splits(spec, sizes, args.seed)
    for name, records in splits.items():
        write_jsonl(os.path.join(args.out, f"{name}.jsonl"), records)
        steps = sum(len(r["steps"]) for r in records) / max(1, len(records))
        print(f"{name}: {len(records)} records, {steps:.1f} steps on average")
    with open(os.path.join(args.out, "spec.json"), "w", encoding="utf-8") as f:
        json.dump({"spec": dataclasses.asdict(spec), "sizes": sizes, "seed": args.seed}, f,
                  indent=2)


if __name__ == "__main__":
    main()
