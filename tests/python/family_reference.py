"""Tiny random checkpoints of the LLaMA family beyond LLaMA-2 (LLaMA-3's llama3 rope scaling,
Qwen2's q/k/v biases with tied embeddings, Mistral's sliding window) and a float64 reference of
their logits written from Hugging Face's modeling code: not from the engine, nor from
spanserve_train.model, which knows only plain LLaMA. Used by test_family_logits.py and the
integration test of plain checkpoints over gRPC.
"""
import json
import math
import os

import numpy as np
import torch

from spanserve_train import hf_export
from spanserve_train.model import LlamaConfig, LlamaForCausalLM
from spanserve_train.safetensors_io import load_file, save_file

# name: config.json keys over a plain LLaMA's, and whether q/k/v get biases
FAMILIES = {
    "llama3": ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                "rope_theta": 500000.0}, False),
    "llama3_tf5": ({"rope_scaling": None,
                    "rope_parameters": {"rope_type": "llama3", "factor": 4.0, "rope_theta": 10000.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                                        "original_max_position_embeddings": 24}}, False),
    "linear": ({"rope_scaling": {"type": "linear", "factor": 2.0}}, False),
    "qwen2": ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
               "use_sliding_window": False, "sliding_window": 4, "max_window_layers": 2,
               "tie_word_embeddings": True}, True),
    "mistral": ({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                 "sliding_window": 13}, False),
}


def inverse_frequencies(config: dict, head_dim: int) -> torch.Tensor:
    """transformers' rope init functions (default, linear, llama3), in float64."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled)
    assert kind == "default", kind
    return inv_freq


def reference_logits(model_dir: str, tokens: list) -> np.ndarray:
    """Logits [T, V] of the checkpoint, as transformers' Llama/Qwen2/Mistral models compute them
    with eager attention, in float64."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    w = {k: v.to(torch.float64) for k, v in hf_export.load_state(model_dir).items()}
    H, KVH, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    T = len(tokens)

    def norm(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"])

    angles = torch.arange(T, dtype=torch.float64)[:, None] * inverse_frequencies(c, hd)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # [heads, T, hd]
        rotated = torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), -1)
        return x * cos + rotated * sin

    q_pos, k_pos = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = k_pos <= q_pos
    window = c.get("sliding_window") if c.get("model_type") == "mistral" else None
    if window:
        allowed &= k_pos > q_pos - window
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, w[p + "input_layernorm.weight"])

        def proj(name, heads):
            y = h @ w[p + f"self_attn.{name}.weight"].T
            if p + f"self_attn.{name}.bias" in w:
                y = y + w[p + f"self_attn.{name}.bias"]
            return y.view(T, heads, hd).transpose(0, 1)

        q, k, v = rope(proj("q_proj", H)), rope(proj("k_proj", KVH)), proj("v_proj", KVH)
        k, v = k.repeat_interleave(H // KVH, 0), v.repeat_interleave(H // KVH, 0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        x = x + attn.transpose(0, 1).reshape(T, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return (norm(x, w["model.norm.weight"]) @ head.T).numpy()


def write_family_dir(name: str, out: str, tokenizer_path: str) -> str:
    """A tiny random checkpoint of the family in `out`: a plain LLaMA export (no spanserve.json,
    as these checkpoints ship) with the family's config.json keys and, for Qwen2, q/k/v biases."""
    keys, biases = FAMILIES[name]
    tied = bool(keys.get("tie_word_embeddings"))
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    seed = sum(map(ord, name))
    model.init_weights(0.15, norm_std=0.2, generator=torch.Generator().manual_seed(seed))
    hf_export.save_hf_dir(model, config, out, tokenizer_path=tokenizer_path)
    os.remove(os.path.join(out, "spanserve.json"))
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d.update(keys)
    if d["model_type"] != "llama":
        for key in ("attention_bias", "mlp_bias"):
            d.pop(key, None)
    hf_export.write_json(path, d)
    if biases:
        state = load_file(os.path.join(out, "model.safetensors"))
        g = torch.Generator().manual_seed(seed + 1)
        for i in range(config.num_hidden_layers):
            for proj, dim in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32)):
                state[f"model.layers.{i}.self_attn.{proj}.bias"] = torch.randn(dim, generator=g) * 0.5
        save_file(state, os.path.join(out, "model.safetensors"))
    return out


def greedy(model_dir: str, prompt: list, n: int) -> tuple:
    """The reference's greedy continuation, and the smallest gap between the best two logits."""
    tokens, gap = list(prompt), float("inf")
    for _ in range(n):
        last = reference_logits(model_dir, tokens)[-1]
        top2 = np.sort(last)[-2:]
        gap = min(gap, float(top2[1] - top2[0]))
        tokens.append(int(last.argmax()))
    return tokens[len(prompt):], gap
