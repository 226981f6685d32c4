"""Builds the SentencePiece tokenizer of a span model.

The anchor and header-end tokens are user-defined symbols, digits are split one per token, no
dummy space is prepended (so `<a>0</a>` encodes as three tokens, the same at training and at
serving), normalisation is the identity and byte fallback keeps any text encodable.
"""
from __future__ import annotations

import argparse
import io
import os
from typing import Iterable

import sentencepiece as spm

ANCHOR = "<a>"
HEADER_END = "</a>"


def build_tokenizer(lines: Iterable[str], vocab_size: int, out_path: str,
                    model_type: str = "bpe") -> str:
    """Trains a tokenizer on `lines` and writes it to `out_path` (a .model file)."""
    text = io.BytesIO("\n".join(lines).encode("utf-8"))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.getvalue().decode("utf-8").splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=[ANCHOR, HEADER_END],
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(model.getvalue())
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", help="text file, one training line per line")
    parser.add_argument("out", help="output tokenizer.model")
    parser.add_argument("--vocab-size", type=int, default=320)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        build_tokenizer(f.read().splitlines(), args.vocab_size, args.out)


if __name__ == "__main__":
    main()
