"""Writes a small LLaMA model directory with random weights that spanserve loads.

It is the development model of scripts/serve.sh (models/dev-random/, until a trained span model
is shipped) and the model of the integration tests. Its output is noise: it exercises the server,
not the span protocol's quality. The tokenizer defaults to the test tokenizer (tests/data), whose
pieces include the span tokens <a> and </a>.

    /usr/bin/python3 training/tools/make_random_model.py models/dev-random
"""
import argparse
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(TOOLS))
sys.path.insert(0, os.path.join(REPO, "training"))

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

from spanserve_train.hf_export import save_hf_dir  # noqa: E402
from spanserve_train.model import LlamaConfig, LlamaForCausalLM  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer",
                        default=os.path.join(REPO, "tests/data/tokenizer/tokenizer.model"))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=2048, help="max_position_embeddings")
    parser.add_argument("--segmentation", default="whole",
                        help="prompt segmentation rule: whole, sentences, paragraphs or client")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = spm.SentencePieceProcessor(model_file=args.tokenizer)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size(), hidden_size=args.hidden,
                         intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=args.context,
                         bos_token_id=tokenizer.bos_id(), eos_token_id=tokenizer.eos_id())
    generator = torch.Generator().manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.init_weights(generator=generator)
    save_hf_dir(model, config, args.out_dir, dtype=args.dtype, tokenizer_path=args.tokenizer,
                span_config={"prompt_segmentation": args.segmentation})
    print(f"wrote {args.out_dir}: random LLaMA, {args.layers} layers, hidden {args.hidden}, "
          f"vocab {config.vocab_size}, context {args.context}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
