"""LoRA round trip through Hugging Face transformers (run where transformers is installed).

1. builds a small random LlamaForCausalLM with transformers and a SentencePiece tokenizer
   without span tokens, saved as a Hugging Face directory (the base model);
2. LoRA-trains it on arithmetic records with spanserve_train.train (span tokens added);
3. loads the exported, merged model with transformers and checks its logits against
   spanserve_train's model on the same tokens (causal mask: transformers has no span mask).

    python3 training/tools/lora_hf_smoke.py /tmp/lora-smoke --steps 60 --device cuda
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402

from spanserve_train import arith_data as ad  # noqa: E402
from spanserve_train import train  # noqa: E402
from spanserve_train.hf_export import load_hf_dir  # noqa: E402


def make_base(out: str, texts) -> str:
    import transformers
    base = os.path.join(out, "base")
    os.makedirs(base, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts),
                                   model_prefix=os.path.join(base, "tokenizer"), vocab_size=64,
                                   split_digits=True, hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(base, "tokenizer.model"))
    config = transformers.LlamaConfig(
        vocab_size=sp.get_piece_size(), hidden_size=128, intermediate_size=344,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(base, safe_serialization=True)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    import transformers

    spec = ad.ArithSpec(min_ops=1, max_ops=3, max_digits=1, max_depth=2, max_value=100)
    splits = ad.make_splits(spec, {"train": 2000, "val": 64, "test": 0}, seed=0)
    for name in ("train", "val"):
        ad.write_jsonl(os.path.join(args.out, f"{name}.jsonl"), splits[name])
    base = make_base(args.out, [r["prompt"] for r in splits["train"]])
    run = os.path.join(args.out, "run")
    result = train.train(train.parse_args([
        "--train-data", os.path.join(args.out, "train.jsonl"),
        "--val-data", os.path.join(args.out, "val.jsonl"), "--out", run, "--fresh",
        "--base-model", base, "--steps", str(args.steps), "--lr", "1e-2", "--warmup", "10",
        "--lora-rank", "8", "--eval-every", str(args.steps), "--device", args.device]))

    ours, _ = load_hf_dir(result["export_dir"])
    try:  # transformers 5 names it dtype; 4.x torch_dtype
        theirs = transformers.LlamaForCausalLM.from_pretrained(result["export_dir"],
                                                               dtype=torch.float32)
    except TypeError:
        theirs = transformers.LlamaForCausalLM.from_pretrained(result["export_dir"],
                                                               torch_dtype=torch.float32)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(result["export_dir"],
                                                            "tokenizer.model"))
    ids = torch.tensor([[sp.bos_id()] + sp.encode(splits["val"][0]["prompt"] +
                                                  splits["val"][0]["output"])])
    with torch.no_grad():
        a = ours(ids)
        b = theirs(ids).logits
    diff = (a - b).abs().max().item()
    print(f"transformers vs spanserve_train logits on the exported model: max |diff| {diff:.2e}")
    if diff > 1e-3:
        sys.exit("FAIL: the exported model differs under transformers")
    # transformers' logits (causal attention) beside the export, for the C++ engine's check
    # (tests/python/test_lora_export.py runs it on the copy under tests/data/lora-merged).
    with open(os.path.join(result["export_dir"], "transformers_logits.json"), "w") as f:
        json.dump({"tokens": ids[0].tolist(), "transformers": transformers.__version__,
                   "torch": torch.__version__, "logits": b[0].tolist()}, f)
    print("OK")


if __name__ == "__main__":
    main()
