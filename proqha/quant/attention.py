"""Attention the converter can quantize: ``nn.MultiheadAttention`` rewritten as Linear layers and tensor ops.

torch.fx keeps ``nn.MultiheadAttention`` as one opaque call whose projections are bare parameters, so no
quantizer can reach them. ``SplitAttention`` computes the same function from four Linear layers (query,
key, value, output), two matmuls and a softmax, all visible to fx: the converter then quantizes the
projections like any linear layer and puts 8-bit quantizers on both matmul inputs and outputs, so a
deployed graph runs every projection and both matmuls in integer kernels (QGemm, QLinearMatMul).
The 1/sqrt(head_dim) scaling is folded into the query projection.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SplitAttention(nn.Module):
    """Multi-head self/cross attention with separate q, k, v and out_proj Linear layers (no masks)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.batch_first, self.dropout = embed_dim, num_heads, batch_first, dropout
        self.q, self.k, self.v, self.out_proj = (nn.Linear(embed_dim, embed_dim, bias=bias) for _ in range(4))

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SplitAttention":
        """The same function as ``mha`` (eval outputs equal to float rounding); its parameters are copied."""
        unsupported = [name for name, bad in (("bias_k/bias_v", mha.bias_k is not None),
                                              ("add_zero_attn", mha.add_zero_attn),
                                              ("kdim/vdim != embed_dim", not mha._qkv_same_embed_dim)) if bad]
        if unsupported:
            raise ValueError(f"nn.MultiheadAttention with {', '.join(unsupported)} cannot be quantized")
        bias = mha.in_proj_bias is not None
        twin = cls(mha.embed_dim, mha.num_heads, bias, mha.batch_first, mha.dropout).to(mha.in_proj_weight.device)
        state = dict(mha.state_dict())
        split_packed_projections({"": twin.query_scale}, twin, state, "")
        twin.load_state_dict(state)
        return twin.train(mha.training)

    @property
    def query_scale(self) -> float:
        """The attention's 1/sqrt(head_dim), folded into the query projection."""
        return 1.0 / math.sqrt(self.embed_dim // self.num_heads)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
                average_attn_weights: bool = True, is_causal: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nn.MultiheadAttention's call signature; masks are not supported."""
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("SplitAttention does not support attention masks")
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        heads, dim = self.num_heads, self.embed_dim // self.num_heads
        b, n = query.shape[0], query.shape[1]
        m = key.shape[1]
        q = self.q(query).reshape(b, n, heads, dim).transpose(1, 2)
        k = self.k(key).reshape(b, m, heads, dim).transpose(1, 2)
        v = self.v(value).reshape(b, m, heads, dim).transpose(1, 2)
        attn = F.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
        attn = F.dropout(attn, self.dropout, self.training)
        out = self.out_proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


def split_packed_projections(scales: dict[str, float], module: nn.Module, state_dict: dict[str, Any],
                             prefix: str, *_: Any) -> None:
    """Load pre-hook of a model whose attentions at paths ``scales`` (their 1/sqrt(head_dim)) were split:
    nn.MultiheadAttention's packed ``in_proj_weight``/``in_proj_bias`` in a float checkpoint become the
    q, k, v layers' parameters, the query's scaled as ``from_mha`` does."""
    for path, scale in scales.items():
        at = f"{prefix}{path}." if path else prefix
        for kind in ("weight", "bias"):
            packed = state_dict.pop(f"{at}in_proj_{kind}", None)
            if packed is None:
                continue
            for name, part in zip("qkv", packed.chunk(3)):
                state_dict[f"{at}{name}.{kind}"] = part * scale if name == "q" else part


TRACEABLE_TWINS = {nn.MultiheadAttention: SplitAttention.from_mha}


def make_traceable(model: nn.Module) -> dict[str, nn.Module]:
    """Replace, in place, every module that has a traceable twin in ``TRACEABLE_TWINS``; returns the
    twins by module path."""
    twins = {}
    for name, mod in list(model.named_modules()):
        make = TRACEABLE_TWINS.get(type(mod))
        if make is None or not name:
            continue
        parent_path, _, leaf = name.rpartition(".")
        twins[name] = make(mod)
        setattr(model.get_submodule(parent_path) if parent_path else model, leaf, twins[name])
    return twins
