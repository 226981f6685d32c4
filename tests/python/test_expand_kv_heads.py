"""training/tools/expand_kv_heads.py: repeating KV heads keeps a GQA model's logits."""
import json
import os
import subprocess
import sys

import pytest
import torch

from spanserve_train import hf_export
from spanserve_train.model import LlamaConfig, LlamaForCausalLM

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "training", "tools",
                    "expand_kv_heads.py")


@pytest.fixture()
def gqa_model(tmp_path, test_tokenizer_path):
    config = LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.init_weights(0.15, norm_std=0.2, generator=torch.Generator().manual_seed(3))
    out = str(tmp_path / "gqa")
    hf_export.save_hf_dir(model, config, out, tokenizer_path=test_tokenizer_path)
    return out


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


@pytest.mark.parametrize("kv_heads", [6, 2])
def test_expanded_model_gives_the_same_logits(gqa_model, tmp_path, kv_heads):
    out = str(tmp_path / "expanded")
    result = run_tool(gqa_model, out, "--kv-heads", str(kv_heads))
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["num_key_value_heads"] == kv_heads
    assert os.path.exists(os.path.join(out, "tokenizer.model"))
    before, _ = hf_export.load_hf_dir(gqa_model, torch.float64)
    after, _ = hf_export.load_hf_dir(out, torch.float64)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (before(ids) - after(ids)).abs().max().item()
    assert diff < 1e-9


def test_a_wrong_expansion_changes_the_logits(gqa_model, tmp_path):
    """The check above can fail: KV heads tiled instead of repeated pair query heads with
    another head's keys."""
    from importlib import util
    spec = util.spec_from_file_location("expand_kv_heads", TOOL)
    tool = util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    state = hf_export.load_state(gqa_model)
    with open(os.path.join(gqa_model, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    good = tool.expand(state, config, 6)
    k = state["model.layers.0.self_attn.k_proj.weight"].reshape(2, 16, 96)
    tiled = k.repeat(3, 1, 1).reshape(96, 96)
    assert not torch.equal(good["model.layers.0.self_attn.k_proj.weight"], tiled)
    assert torch.equal(good["model.layers.0.self_attn.k_proj.weight"].reshape(6, 16, 96)[1], k[0])


@pytest.mark.parametrize("kv_heads", [3, 4, 12])
def test_an_expansion_that_does_not_fit_is_refused(gqa_model, tmp_path, kv_heads):
    result = run_tool(gqa_model, str(tmp_path / "bad"), "--kv-heads", str(kv_heads))
    assert result.returncode != 0
    assert "--kv-heads" in result.stderr
