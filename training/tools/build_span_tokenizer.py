"""Builds a span model's tokenizer from training records (arithmetic or summarisation JSONL).

The texts are every record's prompt (or article sentences) and output, span markup included:
`<a>` and `</a>` are user-defined pieces, digits are split, so headers are one token per digit.

    /usr/bin/python3 training/tools/build_span_tokenizer.py \
        training/runs/data/arith-d1/train.jsonl training/runs/arith-d1/tokenizer.model \
        --vocab-size 300
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spanserve_train.data import load_jsonl, record_texts  # noqa: E402
from spanserve_train.tokenizer import build_tokenizer  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", help="JSONL files (training split)")
    parser.add_argument("out", help="tokenizer.model to write")
    parser.add_argument("--vocab-size", type=int, default=300,
                        help="upper bound; byte fallback alone takes 259 + 2 span pieces")
    parser.add_argument("--max-records", type=int, default=50000)
    args = parser.parse_args(argv)
    lines = []
    for path in args.records:
        for record in load_jsonl(path)[:args.max_records]:
            lines.extend(t for t in record_texts(record) if t)
    build_tokenizer(lines, args.vocab_size, args.out)
    print(f"{args.out}: trained on {len(lines)} texts")


if __name__ == "__main__":
    main()
