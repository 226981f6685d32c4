"""Rewrites a LLaMA export with each KV head repeated so that every query-head group is one the
CUDA kernels take (1, 2, 4 or 8 query heads per KV head): the same attention, more KV bytes.

    /usr/bin/python3 training/tools/expand_kv_heads.py MODEL_DIR OUT_DIR --kv-heads 6

Query head h reads KV head h // (heads / kv_heads). With kv_heads' = a multiple m of kv_heads,
KV head j' = h // (heads / kv_heads') holds the rows of KV head j' // m: query head h still reads
its own KV head's keys and values, so logits are unchanged (tests/python/test_expand_kv_heads.py).
Every other file of the directory is copied as it is.
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spanserve_train.safetensors_io import load_file, save_file  # noqa: E402


def expand(state: dict, config: dict, kv_heads: int) -> dict:
    heads, old = config["num_attention_heads"], config["num_key_value_heads"]
    if kv_heads % old or heads % kv_heads:
        raise ValueError(f"--kv-heads {kv_heads}: needs a multiple of {old} that divides {heads}")
    m = kv_heads // old
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    out = {}
    for name, t in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            rows = t.reshape(old, head_dim, *t.shape[1:])
            t = rows.repeat_interleave(m, dim=0).reshape(kv_heads * head_dim, *t.shape[1:])
        out[name] = t.contiguous()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--kv-heads", type=int, required=True)
    args = p.parse_args(argv)
    with open(os.path.join(args.model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    names = [n for n in os.listdir(args.model_dir) if n.endswith(".safetensors")]
    if names != ["model.safetensors"]:
        raise SystemExit(f"{args.model_dir}: expects one model.safetensors (found {names})")
    state = expand(load_file(os.path.join(args.model_dir, "model.safetensors")), config,
                   args.kv_heads)
    os.makedirs(args.out_dir, exist_ok=True)
    for name in os.listdir(args.model_dir):
        if name not in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(args.model_dir, name), args.out_dir)
    config["num_key_value_heads"] = args.kv_heads
    save_file(state, os.path.join(args.out_dir, "model.safetensors"))
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    print(f"{args.out_dir}: {config['num_attention_heads']} heads over {args.kv_heads} KV heads")


if __name__ == "__main__":
    main()
