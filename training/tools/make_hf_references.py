"""Reference data for serving plain Hugging Face checkpoints (issue 20), made with the reference
implementations (`tokenizers`, `transformers`) on the GPU machine, where they are installed:

- tokenizer.json files of the kinds checkpoints ship (byte-level BPE with the GPT-2 regex, with
  the LLaMA-3/Qwen2 split regex, and the SentencePiece-style BPE with byte fallback in both of
  its spellings: Prepend+Replace normalizer, and Metaspace), trained here on a small corpus;
  for each, the ids of a varied text set (code, Unicode, digits, whitespace runs, added tokens),
  with special tokens matched and not matched, and the decoded text;
- small random models of each family (LLaMA, LLaMA-2, LLaMA-3 with llama3 rope scaling, Qwen2
  with q/k/v biases and tied embeddings, Mistral with a sliding window) saved as plain
  directories (no spanserve.json), each with reference logits of one sequence and the greedy
  continuation of a prompt.

Usage: python3 make_hf_references.py OUT_DIR   (CPU only; a minute)
"""
from __future__ import annotations

import json
import os
import random
import sys
import traceback

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello, world! How's it going? I'm fine; they'll see, we'd go, you've been, it's OK.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG'S BACK. Don't SHOUT'S.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x>0: print(f'{x=}')\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.14159; }",
    "1234567890 12 345 6789 0.5 -17 1e-9 3,000,000",
    "   leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\nand\n\n\nruns      of     spaces",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
    "cafe\u0301 (combining accent) and \u212b (angstrom sign)",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u05e2\u05d1\u05e8\u05d9\u05ea \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "emoji \U0001F600\U0001F44D\U0001F3FD and flags \U0001F1EB\U0001F1F7 zero\u200bwidth",
    "<a>0</a>(3+4)*5<a>1</a>7*5",
    "a prompt that types <a> and </a> and <|endoftext|> and <s></s> in plain text",
    "added tokens: <think>inner</think> done",
    "((3+4)*(5-2))+6=",
    "",
    " ",
    "\n",
    "x" * 40,
    "The year 2024 had 366 days; 1,024 bytes is 1 KiB.",
]

CORPUS_SEED_TEXT = [
    "The cat sat on the mat. The dog ran in the park. It's a sunny day, isn't it?",
    "Numbers like 1, 2, 3, 42, 100 and 2024 appear in text. Prices: $3.50, 12%.",
    "def main():\n    print('hello')\n    return 0\n",
    "import os\nimport sys\nfor line in sys.stdin:\n    print(line.strip())\n",
    "caf\u00e9 r\u00e9sum\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \u4e2d\u6587 \u041f\u0440\u0438\u0432\u0435\u0442",
    "((3+4)*(5-2))+6= 7*3 21+6 27 (48-21)-(18-5) 27-13 14",
    "Summary: the report says revenue rose 12% to 4.5 million in 2023.",
]


def corpus(n: int = 3000, seed: int = 1):
    rng = random.Random(seed)
    words = " ".join(CORPUS_SEED_TEXT).split()
    for _ in range(n):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
    for text in CORPUS_SEED_TEXT:
        for _ in range(50):
            yield text


SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<a>", "</a>"]
NON_SPECIAL_ADDED = ["<think>", "</think>"]


def byte_level(pattern: str | None, vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=pattern == LLAMA3_PATTERN))
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.add_tokens(NON_SPECIAL_ADDED)
    return tok


def sentencepiece_style(metaspace: bool, vocab: int) -> Tokenizer:
    """BPE with byte fallback, as LLaMA-2 / Mistral ship it: <0xXX> pieces in the vocabulary
    (not added tokens), '▁' for spaces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                     split=False)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS[:3] + byte_tokens,
                                  limit_alphabet=200)
    tok.train_from_iterator(corpus(), trainer)
    # The trainer made the byte pieces added tokens; checkpoints have them in the vocabulary
    # only. Rebuild from JSON without them.
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(SPECIALS[3:])
    tok.add_tokens(NON_SPECIAL_ADDED)
    return tok


def encodings(tok: Tokenizer):
    cases = []
    for text in TEXTS:
        tok.encode_special_tokens = False
        matched = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({"text": text, "ids_special_matched": matched, "ids": plain,
                      "decoded": tok.decode(plain, skip_special_tokens=False),
                      "decoded_special_matched": tok.decode(matched, skip_special_tokens=False)})
    return cases


# ---- models ----

FAMILIES = {
    # name: (transformers class, config overrides, tokenizer kind)
    "llama": ("LlamaForCausalLM", {}, "sp_prepend"),
    "llama2-gqa": ("LlamaForCausalLM", {"num_key_value_heads": 2}, "sp_metaspace"),
    "llama3": ("LlamaForCausalLM", {
        "num_key_value_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        "bytelevel_llama3"),
    "qwen2": ("Qwen2ForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True,
                                   "rope_theta": 1000000.0, "use_sliding_window": False},
              "bytelevel_llama3"),
    "mistral": ("MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": 16},
                "sp_metaspace"),
}


def make_model(name: str, tokenizer: Tokenizer, out: str, seed: int):
    import transformers
    cls_name, overrides, _ = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    config_cls = cls.config_class
    vocab = tokenizer.get_vocab_size()
    kwargs = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                  max_position_embeddings=1024, rms_norm_eps=1e-5, initializer_range=0.1,
                  bos_token_id=tokenizer.token_to_id("<s>"),
                  eos_token_id=tokenizer.token_to_id("</s>"), tie_word_embeddings=False)
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # biases random too, so that a loader that drops them is caught
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.1)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    eos = [config.eos_token_id]
    if name == "llama3":
        eos.append(tokenizer.token_to_id("<|endoftext|>"))
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": config.bos_token_id, "eos_token_id": eos,
                   "temperature": 0.6, "top_p": 0.9, "do_sample": True}, f, indent=1)
    rng = random.Random(seed)
    seq = [rng.randrange(8, vocab) for _ in range(40)]
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()
    prompt = "The cat sat on the mat. 12+34="
    prompt_ids = [config.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=24,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = generated[0, len(prompt_ids):].tolist()
    ref = {"family": name, "class": cls_name, "tokens": seq,
           "logits": [[round(v, 6) for v in row] for row in logits.tolist()],
           "prompt": prompt, "prompt_ids": prompt_ids, "greedy": greedy,
           "transformers": transformers.__version__}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    import tokenizers
    kinds = {
        "bytelevel_gpt2": byte_level(None, 600),
        "bytelevel_llama3": byte_level(LLAMA3_PATTERN, 600),
        "sp_prepend": sentencepiece_style(False, 600),
        "sp_metaspace": sentencepiece_style(True, 600),
    }
    tok_dir = os.path.join(out, "tokenizers")
    os.makedirs(tok_dir, exist_ok=True)
    failed = []
    for kind, tok in kinds.items():
        tok.save(os.path.join(tok_dir, f"{kind}.json"))
        try:
            with open(os.path.join(tok_dir, f"{kind}.expected.json"), "w") as f:
                json.dump({"tokenizers": tokenizers.__version__, "cases": encodings(tok)}, f,
                          ensure_ascii=False, indent=0)
        except Exception:  # report every failure in one run, not the first
            traceback.print_exc()
            failed.append(kind)
    for i, name in enumerate(FAMILIES):
        try:
            make_model(name, kinds[FAMILIES[name][2]], os.path.join(out, "families", name), 100 + i)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        sys.exit(f"failed: {failed}")
    print("done", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
