"""The PyTorch LLaMA (training/spanserve_train/model.py) against a second, loop-based float64
implementation written here from the Hugging Face definitions; masks, GQA, trainability; the
safetensors reader/writer and the Hugging Face directory export round trip."""
import json
import math
import os
import struct

import pytest
import torch

from spanserve_train import hf_export
from spanserve_train.model import LlamaConfig, LlamaForCausalLM
from spanserve_train.safetensors_io import load_file, save_file


def tiny_config(heads=4, kv_heads=2, tied=False, layers=2, vocab=37, hidden=32, theta=10000.0):
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=48,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, max_position_embeddings=64,
                       rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=tied)


def random_model(config, seed=0, dtype=torch.float64):
    model = LlamaForCausalLM(config).to(dtype)
    model.init_weights(0.3, norm_std=0.2, generator=torch.Generator().manual_seed(seed))
    return model


# ----------------------------------------------------------------------------- loop reference

def loop_logits(model, config, tokens, mask, positions=None):
    """One position, one head at a time, float64, from the definitions."""
    W = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, KV, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    T = len(tokens)
    positions = list(range(T)) if positions is None else positions

    def norm(x, w):
        return x / math.sqrt(float((x * x).mean()) + config.rms_norm_eps) * w

    def rope(v, pos):  # pairs (i, i + hd/2) rotate by pos * theta^(-2i/hd)
        out = v.clone()
        for i in range(hd // 2):
            angle = pos * config.rope_theta ** (-2.0 * i / hd)
            a, b = float(v[i]), float(v[i + hd // 2])
            out[i] = a * math.cos(angle) - b * math.sin(angle)
            out[i + hd // 2] = b * math.cos(angle) + a * math.sin(angle)
        return out

    x = [W["model.embed_tokens.weight"][t].clone() for t in tokens]
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        qs, ks, vs = [], [], []
        for t in range(T):
            h = norm(x[t], W[p + "input_layernorm.weight"])
            q = W[p + "self_attn.q_proj.weight"] @ h
            k = W[p + "self_attn.k_proj.weight"] @ h
            v = W[p + "self_attn.v_proj.weight"] @ h
            qs.append([rope(q[i * hd:(i + 1) * hd], positions[t]) for i in range(H)])
            ks.append([rope(k[i * hd:(i + 1) * hd], positions[t]) for i in range(KV)])
            vs.append([v[i * hd:(i + 1) * hd] for i in range(KV)])
        for t in range(T):
            heads = []
            for i in range(H):
                j = i // (H // KV)
                keys = [s for s in range(T) if mask[t][s]]
                scores = torch.tensor([float(qs[t][i] @ ks[s][j]) / math.sqrt(hd) for s in keys],
                                      dtype=torch.float64)
                probs = torch.exp(scores - scores.max())
                probs /= probs.sum()
                heads.append(sum(float(pr) * vs[s][j] for pr, s in zip(probs, keys)))
            x[t] = x[t] + W[p + "self_attn.o_proj.weight"] @ torch.cat(heads)
        for t in range(T):
            h = norm(x[t], W[p + "post_attention_layernorm.weight"])
            g = W[p + "mlp.gate_proj.weight"] @ h
            u = W[p + "mlp.up_proj.weight"] @ h
            x[t] = x[t] + W[p + "mlp.down_proj.weight"] @ (g / (1 + torch.exp(-g)) * u)
    head = W["model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"]
    return torch.stack([head @ norm(v, W["model.norm.weight"]) for v in x])


def span_like_mask(T, seed):
    """Causal with random holes, the diagonal always kept: any mask the span rule could give."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(T, T, generator=g) < 0.6).tril()
    mask |= torch.eye(T, dtype=torch.bool)
    mask[:, 0] = True
    return mask


@pytest.mark.parametrize("heads,kv_heads,tied", [(4, 2, False), (4, 4, True), (4, 1, False)])
def test_model_matches_loop_reference(heads, kv_heads, tied):
    config = tiny_config(heads, kv_heads, tied)
    model = random_model(config, seed=heads * 10 + kv_heads)
    tokens = torch.randint(0, config.vocab_size, (9,), generator=torch.Generator().manual_seed(1))
    mask = span_like_mask(9, seed=2)
    got = model(tokens[None], mask)[0]
    want = loop_logits(model, config, tokens.tolist(), mask)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    causal = loop_logits(model, config, tokens.tolist(), torch.ones(9, 9, dtype=torch.bool).tril())
    assert (causal - want).abs().max() > 1e-3  # the holes matter: the comparison is not vacuous


def test_positions_argument_moves_rope():
    config = tiny_config(theta=500.0)
    model = random_model(config, seed=5)
    tokens = [3, 1, 4, 1, 5, 9]
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    positions = [2, 3, 5, 8, 13, 21]
    got = model(torch.tensor([tokens]), mask, positions=torch.tensor(positions))[0]
    assert torch.allclose(got, loop_logits(model, config, tokens, mask, positions), atol=1e-10)
    assert torch.equal(model(torch.tensor([tokens]), mask, positions=torch.arange(6)),
                       model(torch.tensor([tokens]), mask))


def test_none_mask_is_causal_and_batched_masks_are_per_example():
    config = tiny_config()
    model = random_model(config, seed=7)
    ids = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(3))
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.equal(model(ids), model(ids, causal))
    masks = torch.stack([span_like_mask(8, 10), span_like_mask(8, 11)])
    both = model(ids, masks)
    for b in range(2):
        assert torch.allclose(both[b], model(ids[b:b + 1], masks[b])[0], atol=1e-12)
    assert not torch.allclose(both, model(ids))


def test_float32_model_is_close_to_float64_and_trainable():
    config = tiny_config()
    model64 = random_model(config, seed=9)
    model32 = LlamaForCausalLM(config)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    ids = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    a, b = model32(ids), model64(ids)
    assert ((a.double() - b).norm() / b.norm()) < 1e-5
    loss = torch.nn.functional.cross_entropy(a.reshape(-1, config.vocab_size), ids.reshape(-1))
    loss.backward()
    for name, p in model32.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_tied_head_is_the_embedding_and_names_are_hugging_face_names():
    tied = LlamaForCausalLM(tiny_config(tied=True, layers=1))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    names = set(LlamaForCausalLM(tiny_config(layers=1)).state_dict())
    p = "model.layers.0."
    assert names == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                     p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                     p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                     p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
                     p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                     p + "mlp.down_proj.weight"}


def test_config_round_trips_through_hf_dict():
    config = tiny_config(heads=8, kv_heads=2, tied=True)
    d = config.to_hf_dict("bfloat16")
    assert d["model_type"] == "llama" and d["torch_dtype"] == "bfloat16"
    assert d["num_key_value_heads"] == 2 and d["head_dim"] == 4
    assert LlamaConfig.from_hf_dict(json.loads(json.dumps(d))) == config
    assert LlamaConfig.from_hf_dict({**d, "num_key_value_heads": None}).num_key_value_heads == 8
    with pytest.raises(ValueError):
        LlamaConfig.from_hf_dict({**d, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError):
        LlamaConfig.from_hf_dict({**d, "num_key_value_heads": 3})


def test_config_reads_rope_parameters_of_transformers_5():
    d = tiny_config(heads=8, kv_heads=2, tied=True).to_hf_dict("float32")
    del d["rope_theta"]
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    config = LlamaConfig.from_hf_dict(d)
    assert config.rope_theta == 500000.0 and "rope_parameters" not in config.extra
    with pytest.raises(ValueError, match="rope_type"):
        LlamaConfig.from_hf_dict({**d, "rope_parameters": {"rope_type": "llama3"}})


# ----------------------------------------------------------------------------- safetensors

def test_safetensors_layout_written_by_hand_is_read(tmp_path):
    header = {"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
              "a": {"dtype": "F32", "shape": [1, 2], "data_offsets": [4, 12]}}
    text = json.dumps(header).encode()
    data = struct.pack("<HH", 0x3F80, 0xC000) + struct.pack("<ff", 1.5, -0.25)  # bf16 1.0, -2.0
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    got = load_file(str(path))
    assert got["b"].dtype == torch.bfloat16 and got["b"].tolist() == [1.0, -2.0]
    assert got["a"].dtype == torch.float32 and got["a"].tolist() == [[1.5, -0.25]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_round_trip_and_alignment(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 5, generator=g).to(dtype), "v": torch.randn(7, generator=g).to(dtype),
               "s": torch.tensor(2.5).to(dtype), "e": torch.zeros(0, 4, dtype=dtype)}
    path = str(tmp_path / "t.safetensors")
    save_file(tensors, path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    got = load_file(path)
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == dtype and got[k].shape == t.shape and torch.equal(got[k], t)


def test_safetensors_rejects_truncated_files(tmp_path):
    path = str(tmp_path / "t.safetensors")
    save_file({"w": torch.ones(4, 4)}, path)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-4])
    with pytest.raises(ValueError, match="data_offsets"):
        load_file(path)
    open(path, "wb").write(raw[:5])
    with pytest.raises(ValueError, match="truncated"):
        load_file(path)


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("max_shard_bytes", [None, 20000])
def test_export_round_trip_is_bit_exact_in_float32(tmp_path, tied, max_shard_bytes,
                                                   test_tokenizer_path):
    config = tiny_config(tied=tied)
    model = random_model(config, seed=11, dtype=torch.float32)
    out = str(tmp_path / "m")
    hf_export.save_hf_dir(model, config, out, tokenizer_path=test_tokenizer_path,
                          span_config={"prompt_segmentation": "sentences", "max_header_tokens": 16},
                          max_shard_bytes=max_shard_bytes)
    files = sorted(os.listdir(out))
    if max_shard_bytes is None:
        assert "model.safetensors" in files and hf_export.INDEX not in files
        stored = load_file(os.path.join(out, "model.safetensors"))
    else:
        shards = [f for f in files if f.startswith("model-")]
        assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        index = json.load(open(os.path.join(out, hf_export.INDEX)))
        assert set(index["weight_map"].values()) == set(shards)
        stored = hf_export.load_state(out)
    assert ("lm_head.weight" in stored) == (not tied)
    assert json.load(open(os.path.join(out, "spanserve.json"))) == {
        "span_protocol": 1, "anchor_token": "<a>", "header_end_token": "</a>",
        "prompt_segmentation": "sentences", "max_header_tokens": 16}
    assert open(os.path.join(out, "tokenizer.model"), "rb").read() == \
        open(test_tokenizer_path, "rb").read()
    hf = json.load(open(os.path.join(out, "config.json")))
    assert hf["tie_word_embeddings"] == tied and hf["torch_dtype"] == "float32"

    loaded, loaded_config = hf_export.load_hf_dir(out)
    assert loaded_config == config
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    want = model.state_dict()
    for name, t in loaded.state_dict().items():
        assert t.dtype == torch.float32 and torch.equal(t, want[name]), name
    ids = torch.randint(0, config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids), model(ids))


def test_export_in_bfloat16_stores_rounded_weights(tmp_path):
    config = tiny_config()
    model = random_model(config, seed=12, dtype=torch.float32)
    out = str(tmp_path / "m")
    hf_export.save_hf_dir(model, config, out, dtype="bfloat16")
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    loaded, _ = hf_export.load_hf_dir(out, dtype=torch.float64)
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, model.state_dict()[name].to(torch.bfloat16).double()), name


def test_export_replaces_old_weights_and_checks_the_span_config(tmp_path):
    config = tiny_config()
    model = random_model(config, seed=13, dtype=torch.float32)
    out = str(tmp_path / "m")
    hf_export.save_hf_dir(model, config, out)
    hf_export.save_hf_dir(model, config, out, max_shard_bytes=20000)
    assert "model.safetensors" not in os.listdir(out)
    hf_export.save_hf_dir(model, config, out)
    assert hf_export.INDEX not in os.listdir(out)
    assert not any(f.startswith("model-") for f in os.listdir(out))
    for bad in ({"prompt_segmentation": "lines"}, {"max_header_tokens": 0}, {"anchor": "<a>"}):
        with pytest.raises(ValueError):
            hf_export.save_hf_dir(model, config, out, span_config=bad)


def test_load_ignores_rope_buffers_and_rejects_missing_tensors(tmp_path):
    config = tiny_config()
    model = random_model(config, seed=14, dtype=torch.float32)
    out = str(tmp_path / "m")
    hf_export.save_hf_dir(model, config, out)
    state = load_file(os.path.join(out, "model.safetensors"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old exports have it
    save_file(state, os.path.join(out, "model.safetensors"))
    hf_export.load_hf_dir(out)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, os.path.join(out, "model.safetensors"))
    with pytest.raises(ValueError, match="up_proj"):
        hf_export.load_hf_dir(out)
