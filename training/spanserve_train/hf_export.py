"""Hugging Face model directories: what the engine loads (engine/model/model_loader.cc).

    config.json                      LlamaConfig.to_hf_dict()
    model.safetensors                the state_dict (lm_head.weight left out when tied), or shards
    model-0000i-of-0000n.safetensors + model.safetensors.index.json {"weight_map": {name: file}}
    tokenizer.model                  copied
    spanserve.json                   the span config
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

import torch

from .model import LlamaConfig, LlamaForCausalLM
from .safetensors_io import load_file, save_file
from .span_rule import SEGMENTATIONS
from .tokenizer import ANCHOR, HEADER_END

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INDEX = "model.safetensors.index.json"
SPAN_DEFAULTS = {"span_protocol": 1, "anchor_token": ANCHOR, "header_end_token": HEADER_END,
                 "prompt_segmentation": "whole", "max_header_tokens": 32}


def span_config_dict(span_config: Optional[dict]) -> dict:
    """spanserve.json's content: the defaults updated by `span_config`, checked as the engine
    checks it (it refuses unknown keys)."""
    d = dict(SPAN_DEFAULTS)
    d.update(span_config or {})
    unknown = set(d) - set(SPAN_DEFAULTS)
    if unknown:
        raise ValueError(f"span config: unknown keys {sorted(unknown)}")
    if d["span_protocol"] != 1:
        raise ValueError(f"span config: span_protocol must be 1, got {d['span_protocol']!r}")
    if d["prompt_segmentation"] not in SEGMENTATIONS:
        raise ValueError(f"span config: prompt_segmentation must be one of {SEGMENTATIONS}, "
                         f"got {d['prompt_segmentation']!r}")
    if type(d["max_header_tokens"]) is not int or d["max_header_tokens"] < 1:
        raise ValueError(f"span config: max_header_tokens must be an integer >= 1, "
                         f"got {d['max_header_tokens']!r}")
    if d["anchor_token"] == d["header_end_token"]:
        raise ValueError("span config: anchor_token and header_end_token must differ")
    return d


def export_state(model: LlamaForCausalLM, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The state_dict in `dtype`, lm_head.weight left out when it is the embedding."""
    state = model.state_dict()
    if model.lm_head.weight is model.model.embed_tokens.weight:
        del state["lm_head.weight"]
    return {name: t.detach().to("cpu", dtype).contiguous() for name, t in state.items()}


def shard(state: Dict[str, torch.Tensor], max_shard_bytes: Optional[int]) -> List[List[str]]:
    """Names in state order, cut greedily so that no shard passes max_shard_bytes (a tensor
    larger than that gets a shard of its own)."""
    shards: List[List[str]] = [[]]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_hf_dir(model: LlamaForCausalLM, config: LlamaConfig, out_dir: str,
                dtype: str = "float32", tokenizer_path: Optional[str] = None,
                span_config: Optional[dict] = None, max_shard_bytes: Optional[int] = None) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    span = span_config_dict(span_config)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied != config.tie_word_embeddings:
        raise ValueError(f"config.tie_word_embeddings is {config.tie_word_embeddings} but the "
                         f"model's lm_head is {'' if tied else 'not '}the embedding")
    state = export_state(model, DTYPES[dtype])
    # The vocabulary may have grown since the config was made (span tokens added).
    config = dataclasses.replace(config, vocab_size=state["model.embed_tokens.weight"].shape[0])

    os.makedirs(out_dir, exist_ok=True)
    # Old weights would shadow the new ones (a single file wins over an index).
    for old in glob.glob(os.path.join(out_dir, "model*.safetensors")) + \
            glob.glob(os.path.join(out_dir, INDEX)):
        os.remove(old)
    shards = shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(state, os.path.join(out_dir, "model.safetensors"))
    else:
        weight_map = {}
        for i, names in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: state[n] for n in names}, os.path.join(out_dir, file))
            weight_map.update({n: file for n in names})
        total = sum(t.numel() * t.element_size() for t in state.values())
        write_json(os.path.join(out_dir, INDEX),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(out_dir, "config.json"), config.to_hf_dict(torch_dtype=dtype))
    write_json(os.path.join(out_dir, "spanserve.json"), span)
    if tokenizer_path is not None:
        dest = os.path.join(out_dir, "tokenizer.model")
        if os.path.abspath(tokenizer_path) != os.path.abspath(dest):
            shutil.copyfile(tokenizer_path, dest)


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def load_state(model_dir: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the directory's model.safetensors or of the shards its index names."""
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index_path = os.path.join(model_dir, INDEX)
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"{model_dir}: neither model.safetensors nor {INDEX}")
    with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    state = {}
    for file in sorted(set(weight_map.values())):
        for name, t in load_file(os.path.join(model_dir, file)).items():
            if weight_map.get(name) == file:
                state[name] = t
    missing = set(weight_map) - set(state)
    if missing:
        raise ValueError(f"{index_path}: tensors not found in their shards: {sorted(missing)}")
    return state


def load_hf_dir(model_dir: str, dtype: Optional[torch.dtype] = None
                ) -> Tuple[LlamaForCausalLM, LlamaConfig]:
    """(model, config) of a directory save_hf_dir wrote (or any plain Hugging Face LLaMA).
    dtype: the model's; default the checkpoint's torch_dtype."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    config = LlamaConfig.from_hf_dict(hf)
    if dtype is None:
        dtype = DTYPES.get(hf.get("torch_dtype"), torch.float32)
    state = load_state(model_dir)
    # Older Hugging Face exports store RoPE's inv_freq buffers; the model computes them.
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        if "lm_head.weight" in state:
            raise ValueError(f"{model_dir}: lm_head.weight is stored but tie_word_embeddings is true")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model = LlamaForCausalLM(config)
    want = set(model.state_dict())
    if set(state) != want:
        raise ValueError(f"{model_dir}: missing tensors {sorted(want - set(state))}, "
                         f"unexpected tensors {sorted(set(state) - want)}")
    model.to(dtype)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if tuple(p.shape) != tuple(state[name].shape):
                raise ValueError(f"{model_dir}: {name} has shape {list(state[name].shape)}, "
                                 f"config.json expects {list(p.shape)}")
            p.copy_(state[name].to(dtype))
    return model, config
