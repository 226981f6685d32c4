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
import functools
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
    # False: the operator count is drawn, each operand's digits and the tree's shape at random
    # (the old levels, kept draw for draw). True: every expression first draws its difficulty
    # cell, operator count x operand digits x depth, each uniformly (see random_expr_balanced).
    balanced: bool = False

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
    if spec.balanced:
        return random_expr_balanced(spec, rng)
    n = rng.randint(spec.min_ops, spec.max_ops)
    for _ in range(1000):
        e = _tree(n, spec.max_depth, spec, rng)
        if e is not None:
            return e
    raise ValueError(f"cannot draw an expression for {spec}")


# Balanced draws. The cell (operators, digits, depth) is drawn first, each uniformly, so a short
# or shallow expression is as likely as a long or deep one. Then, per expression, what a model
# must not come to rely on: the tree's lean (left-heavy, right-heavy or neither), an operator
# mix (one operator favoured, or none) and, for two digits, the share of two-digit operands.
SHAPES = ("any", "left", "right")
MIXES = ("any",) + tuple(OPS)


def min_depth(n: int) -> int:
    """The least height of a tree of n operators."""
    return n.bit_length()


def depth_range(n: int, spec: ArithSpec) -> range:
    return range(min_depth(n), min(n, spec.max_depth) + 1)


@dataclass
class Cell:
    ops: int
    digits: int
    depth: int
    shape: str = "any"
    mix: str = "any"
    two_digit_share: float = 0.0  # digits > 1: the chance that an operand has that many


def draw_cell(spec: ArithSpec, rng: random.Random) -> Cell:
    n = rng.randint(spec.min_ops, spec.max_ops)
    digits = rng.randint(spec.min_digits, spec.max_digits)
    return Cell(n, digits, rng.choice(depth_range(n, spec)), rng.choice(SHAPES), rng.choice(MIXES),
                rng.uniform(0.25, 1.0) if digits > 1 else 0.0)


@functools.lru_cache(maxsize=None)
def _splits(n: int, d: int, shape: str) -> Tuple[tuple, tuple]:
    """The ways to split a tree of n operators and height d below its root, (left operators,
    left height, right height) with the taller side d - 1, and their weights for a lean."""
    splits = tuple((k, dl, dr) for k in range(n)
                   for dl in range(min_depth(k), min(k, d - 1) + 1)
                   for dr in range(min_depth(n - 1 - k), min(n - 1 - k, d - 1) + 1)
                   if max(dl, dr) == d - 1)
    lean = {"any": lambda k: 1.0, "left": lambda k: (k + 1.0) ** 3,
            "right": lambda k: (n - k) ** 3.0}[shape]
    return splits, tuple(lean(k) for k, _, _ in splits)


def _shape(n: int, d: int, cell: Cell, rng: random.Random):
    """A tree shape of n operators and height exactly d: None for a leaf, else (left, right)."""
    if n == 0:
        return None
    splits, weights = _splits(n, d, cell.shape)
    k, dl, dr = rng.choices(splits, weights)[0]
    return _shape(k, dl, cell, rng), _shape(n - 1 - k, dr, cell, rng)


def _fill(shape, spec: ArithSpec, cell: Cell, rng: random.Random) -> Optional[Expr]:
    """Operands and operators on a shape, bottom up, every value in bounds; None on a dead end.
    A right operand that no operator can join to the left one is drawn again (a few times)
    rather than the whole tree: long two-digit expressions would otherwise rarely come out."""
    if shape is None:  # cell.digits digits at the share's odds, else fewer
        long = cell.digits == 1 or rng.random() < cell.two_digit_share
        digits = cell.digits if long else rng.randint(1, cell.digits - 1)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(lo, min(10 ** digits, spec.max_value) - 1)
    left = _fill(shape[0], spec, cell, rng)
    if left is None:
        return None
    a = value(left)
    for _ in range(8):
        right = _fill(shape[1], spec, cell, rng)
        if right is None:
            continue
        b = value(right)
        ops = [op for op in OPS if abs(apply(op, a, b)) < spec.max_value
               and (spec.allow_negative or apply(op, a, b) >= 0)]
        if ops:
            weights = [4.0 if op == cell.mix else 1.0 for op in ops]
            return Op(rng.choices(ops, weights)[0], left, right)
    return None


def _max_digits(e: Expr) -> int:
    return len(str(abs(e))) if isinstance(e, int) else max(_max_digits(e.left),
                                                           _max_digits(e.right))


def random_expr_balanced(spec: ArithSpec, rng: random.Random, cell: Optional[Cell] = None
                         ) -> Expr:
    """An expression of one difficulty cell (drawn when not given): exactly cell.ops operators,
    height cell.depth, operands of at most cell.digits digits and at least one that long."""
    cell = cell or draw_cell(spec, rng)
    for _ in range(1000):
        e = _fill(_shape(cell.ops, cell.depth, cell, rng), spec, cell, rng)
        if e is not None and _max_digits(e) == cell.digits:
            return e
    raise ValueError(f"cannot draw an expression for {cell} within {spec}")


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


def _generate_shard(job) -> List[dict]:
    return generate(*job)


def make_splits(spec: ArithSpec, sizes: dict, seed: int, shards: int = 1,
                workers: int = 1) -> dict:
    """{"train", "val", "test"} -> records. Each split has its own seed; held-out splits are
    drawn first and the later ones skip their expressions, so no expression is in two splits.

    shards > 1 draws the train split in that many pieces of their own seeds (in `workers`
    processes; the records depend on shards, not on workers), a few more than needed, then
    keeps each expression's first occurrence in shard order and the first sizes["train"]."""
    splits, used = {}, set()
    for name in ("test", "val", "train"):
        if name == "train" and shards > 1:
            splits[name] = _sharded(spec, sizes[name], seed, shards, workers, used)
        else:
            splits[name] = generate(spec, sizes[name], f"arith-{seed}-{name}", used)
        used.update(r["expr"] for r in splits[name])
    return splits


def _sharded(spec: ArithSpec, n: int, seed: int, shards: int, workers: int, used: set
             ) -> List[dict]:
    per_shard = -(-n * 21 // 20 // shards)  # 5% spare for expressions two shards both drew
    jobs = [(spec, per_shard, f"arith-{seed}-train-{i}", used) for i in range(shards)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(min(workers, shards)) as pool:
            pieces = pool.map(_generate_shard, jobs)
    else:
        pieces = [_generate_shard(job) for job in jobs]
    records, seen = [], set(used)
    for record in (r for piece in pieces for r in piece):
        if record["expr"] not in seen and len(records) < n:
            seen.add(record["expr"])
            records.append(record)
    if len(records) < n:  # more collisions than the spare: the rest from a seed of its own
        records += generate(spec, n - len(records), f"arith-{seed}-train-rest", seen)
    return records


# Evaluation buckets: operator count x operand digits (the longest operand's).
OPS_BUCKETS = ((1, 2), (3, 4), (5, 7), (8, 10), (11, 12))


def bucket_of(expr: str) -> Tuple[str, int]:
    """("5-7", 2) for an expression of 5 to 7 operators whose longest operand has two digits;
    operator counts past the buckets get their own label."""
    e = parse(expr)
    n = count_ops(e)
    label = next((f"{lo}-{hi}" for lo, hi in OPS_BUCKETS if lo <= n <= hi), str(n))
    return label, _max_digits(e)


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


def spec_from_preset(preset: dict, spec_cls=None):
    """The preset's "spec" as a spec dataclass (ArithSpec unless spec_cls names another); keys
    the dataclass lacks are ignored."""
    spec_cls = spec_cls or ArithSpec
    fields = {f.name for f in dataclasses.fields(spec_cls)}
    return spec_cls(**{k: v for k, v in preset.get("spec", {}).items() if k in fields})


def add_spec_arguments(parser: argparse.ArgumentParser, spec_cls) -> None:
    """One --field option a field of the spec dataclass, overriding the preset's value."""
    for f in dataclasses.fields(spec_cls):
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else int
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind,
                            help=f"override the preset's {f.name}")


def apply_spec_arguments(spec, args: argparse.Namespace) -> None:
    """Sets the fields whose options add_spec_arguments made were given."""
    for f in dataclasses.fields(spec):
        if getattr(args, f.name) is not None:
            setattr(spec, f.name, getattr(args, f.name))


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
    parser.add_argument("--shards", type=int,
                        help="draw the train split in this many seeded pieces (default: the "
                             "preset's train_shards, else 1); the records depend on it")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that draw the shards (the records do not depend on it)")
    add_spec_arguments(parser, ArithSpec)
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    spec = spec_from_preset(preset)
    apply_spec_arguments(spec, args)
    sizes = dict(preset.get("sizes", {"train": 20000, "val": 500, "test": 500}))
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    shards = preset.get("train_shards", 1) if args.shards is None else args.shards
    splits = make_splits(spec, sizes, args.seed, shards, args.workers)
    for name, records in splits.items():
        write_jsonl(os.path.join(args.out, f"{name}.jsonl"), records)
        steps = sum(len(r["steps"]) for r in records) / max(1, len(records))
        print(f"{name}: {len(records)} records, {steps:.1f} steps on average")
    with open(os.path.join(args.out, "spec.json"), "w", encoding="utf-8") as f:
        json.dump({"spec": dataclasses.asdict(spec), "sizes": sizes, "seed": args.seed,
                   "train_shards": shards}, f, indent=2)


if __name__ == "__main__":
    main()
