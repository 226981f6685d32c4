"""A LLaMA in plain PyTorch with Hugging Face LlamaForCausalLM semantics, and without transformers.

Parameter names are the Hugging Face state_dict names (model.embed_tokens.weight,
model.layers.0.self_attn.q_proj.weight, ..., lm_head.weight), so export is a state_dict dump.
With tied embeddings lm_head.weight is the embedding's Parameter (as in Hugging Face); the export
leaves it out. Attention takes any boolean mask, which is how the span rule enters: training
uses span_rule.attention_mask, the golden tests compare the engine against this model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None   # None: as many as the query heads
    head_dim: Optional[int] = None              # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: Union[int, List[int]] = 2
    extra: dict = field(default_factory=dict)   # other config.json keys, written back as they came

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                                 f"num_attention_heads {self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    def to_hf_dict(self, torch_dtype: str = "float32") -> dict:
        d = dict(self.extra)
        d.update({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "torch_dtype": torch_dtype,
        })
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        # Keys that would change the math: only a plain LLaMA's values.
        plain = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
                 "mlp_bias": False, "rope_scaling": None}
        for key, want in plain.items():
            if d.get(key, want) not in (want, None):
                raise ValueError(f"config.json: {key}={d[key]!r} is not supported (want {want!r})")
        known = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim",
                 "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                 "bos_token_id", "eos_token_id"}
        args = {k: d[k] for k in known if d.get(k) is not None}
        # transformers 5 nests rope_theta: {"rope_parameters": {"rope_type", "rope_theta"}}.
        rope = d.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"config.json: rope_parameters.rope_type={rope['rope_type']!r} "
                             "is not supported (want 'default')")
        if "rope_theta" in rope:
            args["rope_theta"] = rope["rope_theta"]
        args.setdefault("rms_norm_eps", 1e-6)  # Hugging Face's LlamaConfig default
        extra = {k: v for k, v in d.items() if k not in known and k not in plain
                 and k not in ("architectures", "torch_dtype", "rope_parameters")}
        return cls(**args, extra=extra)


class SpanRows(NamedTuple):
    """A span mask given as the rows where it differs from causal: every other row attends
    causally (prompt rows, open headers, DENSE examples, padding, which no real row reads).
    Training's masks differ only in the output's restricted rows, a few hundred of thousands,
    so attention runs as one causal fused kernel over all rows and a masked one over these
    (data.span_rows makes it; equal to the full mask, tests/python/test_span_rows.py).
    b, t: long [N], the example and position of each listed row; slot: long [N], the row's
    index among its example's listed rows; mask: bool [B, O, T], mask[b, slot] its keys."""
    b: torch.Tensor
    t: torch.Tensor
    slot: torch.Tensor
    mask: torch.Tensor


def _attend(q, k, v, mask=None, causal: bool = False) -> torch.Tensor:
    """Fused attention where torch has it (>= 2.0), else the same math (CPU tests on 1.x)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    return scores.masked_fill(~mask, float("-inf")).softmax(-1).to(q.dtype) @ v


def span_rows_attention(q, k, v, rows: SpanRows) -> torch.Tensor:
    """[B, H, T, D] attention: causal, then the listed rows recomputed under their masks."""
    out = _attend(q, k, v, causal=True)
    if rows.b.numel() == 0:
        return out
    B, H, _, D = q.shape
    picked = q.transpose(1, 2)[rows.b, rows.t]  # [N, H, D]
    q_rows = q.new_zeros(B, rows.mask.shape[1], H, D).index_put((rows.b, rows.slot), picked)
    fixed = _attend(q_rows.transpose(1, 2), k, v, mask=rows.mask[:, None])
    fixed = fixed.transpose(1, 2)[rows.b, rows.slot]  # [N, H, D]
    return out.transpose(1, 2).index_put((rows.b, rows.t), fixed).transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At least fp32, as Hugging Face; float64 stays float64 for reference computations.
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, T, head_dim] of Hugging Face's rotate_half convention."""
    work = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=work,
                                             device=positions.device) / head_dim))
    angles = positions.to(work)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        self.q_proj = nn.Linear(c.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, bias):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.num_heads // self.num_kv_heads  # query head h reads kv head h // group
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        if isinstance(bias, SpanRows) or bias.dtype == torch.bool:  # fused kernels (CUDA)
            q, k = q.to(v.dtype), k.to(v.dtype)
            out = (span_rows_attention(q, k, v, bias) if isinstance(bias, SpanRows)
                   else _attend(q, k, v, mask=bias))
            return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) + bias
        probs = scores.softmax(-1).to(q.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, bias):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, norm_std: float = 0.0,
                     generator: Optional[torch.Generator] = None):
        """Hugging Face's init: normal(0, std) for projections and embeddings, ones for norms.
        Tests use a larger std and norm_std > 0 (norms 1 + normal(0, norm_std)) so that
        attention is far from uniform and the norm weights matter."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
                if norm_std:
                    module.weight.normal_(1.0, norm_std, generator=generator)

    def forward(self, input_ids: torch.Tensor, attention_mask=None,
                positions: Optional[torch.Tensor] = None,
                logits_at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [B, T, V]. attention_mask: bool [T, T] or [B, T, T], True = attend (mask[q, k]),
        or SpanRows; None is causal. positions: [T] or [B, T], default 0..T-1. logits_at: bool
        [B, T]: the logits of those positions only, [N, V] (training's loss needs only the
        output's: the head's GEMM and the softmax over the prompt are skipped)."""
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        positions = positions.expand(B, T)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        bias = (attention_mask if isinstance(attention_mask, SpanRows)
                else self._bias(attention_mask, T, x))
        for layer in self.model.layers:
            x = layer(x, cos, sin, bias)
        return self._head(x, logits_at)

    def _bias(self, attention_mask: Optional[torch.Tensor], T: int, x: torch.Tensor):
        """What the layers take for a boolean mask: the mask (fused kernels), or an additive
        bias in at least fp32 (the plain math)."""
        if attention_mask is None:
            attention_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if attention_mask.dim() == 2:
            attention_mask = attention_mask[None]
        if x.is_cuda and hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0
            bias = attention_mask[:, None]  # fused kernels take the boolean mask
        else:  # the plain math, in at least fp32 (float64 for the reference tests)
            work = torch.promote_types(x.dtype, torch.float32)
            bias = torch.zeros(attention_mask.shape, dtype=work, device=x.device)
            bias = bias.masked_fill(~attention_mask, float("-inf"))[:, None]  # [B|1, 1, T, T]
        return bias

    def _head(self, x: torch.Tensor, logits_at: Optional[torch.Tensor]) -> torch.Tensor:
        if logits_at is not None:
            x = x[logits_at]
        return self.lm_head(self.model.norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
