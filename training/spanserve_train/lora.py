"""LoRA fine-tuning of a LLaMA into a span model.

- The two span tokens are added to the base tokenizer.model as user-defined pieces (kept if it
  has them already) and the embedding and lm_head grow rows for them, initialised to the mean
  row; only those new rows of the two tables are trained.
- Every q/k/v/o and MLP projection gets a low-rank adapter: y = W x + (alpha/r) B A x, with A
  random, B zero (so training starts from the base model exactly); W stays frozen.
- At export the adapters are merged into W and the modules become plain nn.Linear again, so the
  parameter names are the Hugging Face ones.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Tuple

import torch
from torch import nn
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from .tokenizer import ANCHOR, HEADER_END

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """nn.Linear (frozen) plus a trainable low-rank update; state-dict names stay `weight`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a weight to throw away
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t() @ self.lora_B.t()
        return super().forward(x) + (self.scale * update).to(x.dtype)

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = self.scale * (self.lora_B.float() @ self.lora_A.float())
            linear.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _replace(model: nn.Module, match, make) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(name, child):
                setattr(parent, name, make(child))
                count += 1
    return count


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets=TARGETS) -> int:
    """Freezes the model and wraps the target projections; returns how many were wrapped."""
    for p in model.parameters():
        p.requires_grad_(False)
    n = _replace(model, lambda name, m: name in targets and type(m) is nn.Linear,
                 lambda m: LoRALinear(m, rank, alpha, dropout))
    if n == 0:
        raise ValueError(f"no projection named {targets} in the model")
    return n


def merge_lora(model: nn.Module) -> int:
    """Folds every adapter into its base weight, in place; returns how many were merged."""
    return _replace(model, lambda name, m: isinstance(m, LoRALinear), lambda m: m.merged())


# ----------------------------------------------------------------------------- span tokens

def add_span_tokens(sp_model_path: str, out_path: str) -> Tuple[int, int, int]:
    """Writes tokenizer.model with `<a>` and `</a>` as user-defined pieces.

    Returns (anchor_id, header_end_id, piece_count). Pieces already there are kept as they are.
    """
    proto = sp_pb2.ModelProto()
    with open(sp_model_path, "rb") as f:
        proto.ParseFromString(f.read())
    ids = {}
    for token in (ANCHOR, HEADER_END):
        found = [i for i, p in enumerate(proto.pieces) if p.piece == token]
        if found:
            ids[token] = found[0]
            continue
        piece = proto.pieces.add()
        piece.piece = token
        piece.score = 0.0
        piece.type = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
        ids[token] = len(proto.pieces) - 1
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(proto.SerializeToString())
    return ids[ANCHOR], ids[HEADER_END], len(proto.pieces)


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    extra = weight.detach().float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight.detach(), extra.expand(rows - weight.shape[0], -1)], 0)


def resize_vocab(embed: nn.Embedding, lm_head: nn.Linear, rows: int) -> None:
    """Grows the embedding and lm_head to `rows` (never shrinks), new rows = the mean row."""
    tied = lm_head.weight is embed.weight
    if embed.weight.shape[0] < rows:
        embed.weight = nn.Parameter(_grow(embed.weight, rows))
        embed.num_embeddings = rows
    if tied:
        lm_head.weight = embed.weight
    elif lm_head.weight.shape[0] < rows:
        lm_head.weight = nn.Parameter(_grow(lm_head.weight, rows))
    lm_head.out_features = lm_head.weight.shape[0]


def train_rows(param: nn.Parameter, rows: List[int]) -> None:
    """Makes only `rows` of a table trainable: the gradient of every other row is zeroed.

    Put the table in an optimizer group without weight decay: AdamW's decay would move the
    frozen rows too.
    """
    keep = torch.zeros(param.shape[0], 1, dtype=param.dtype, device=param.device)
    keep[rows] = 1
    param.requires_grad_(True)
    param.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))


def trainable_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters that training changes (adapters and the span-token tables)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
