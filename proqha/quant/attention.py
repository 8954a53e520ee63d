"""Attention the converter can quantize: opaque attention modules rewritten as Linear layers and tensor ops.

torch.fx keeps ``nn.MultiheadAttention`` as one opaque call whose projections are bare parameters, and
torchvision's Swin calls one wrapped function (``shifted_window_attention``) with its weights as
arguments, so no quantizer can reach them. Their twins here compute the same function from Linear layers,
matmuls and a softmax, all visible to fx: the converter then quantizes the projections like any linear
layer and puts 8-bit quantizers on both matmul inputs and outputs, so a deployed graph runs every
projection and matmul in integer kernels (QGemm, QLinearMatMul).

- ``SplitAttention`` (from ``nn.MultiheadAttention``): separate q, k, v, out_proj layers; 1/sqrt(head_dim)
  folded into q.
- ``StaticWindowAttention`` (from torchvision's ``ShiftedWindowAttention``/``V2``, same parameter names):
  written for one input size, which makes padding, the cyclic shift and the window mask static (the mask
  is a buffer). It needs the input size at conversion (``quantize_model(..., input_size=...)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from proqha.imports import loaded_attributes


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


class StaticWindowAttention(nn.Module):
    """torchvision's (shifted) window attention, V1 or V2, for inputs (B, H, W, C) of one size ``hw``.

    Windows stay a dimension of their own (B, windows, tokens, C), so the batch stays first; the
    1/sqrt(head_dim) scaling (V1) multiplies the q k^T product, the same value as scaling q first.
    """

    def __init__(self, source: nn.Module, hw: tuple[int, int]) -> None:
        super().__init__()
        self.qkv, self.proj = source.qkv, source.proj
        self.window_size, self.num_heads = list(source.window_size), source.num_heads
        self.attention_dropout, self.dropout = source.attention_dropout, source.dropout
        self.register_buffer("relative_position_index", source.relative_position_index)
        self.v2 = hasattr(source, "logit_scale")
        if self.v2:
            self.logit_scale, self.cpb_mlp = source.logit_scale, source.cpb_mlp
            self.register_buffer("relative_coords_table", source.relative_coords_table)
            if self.qkv.bias is not None:  # V2 has no key bias (torchvision zeroes it on every call)
                with torch.no_grad():
                    self.qkv.bias[self.qkv.out_features // 3: 2 * self.qkv.out_features // 3].zero_()
        else:
            self.relative_position_bias_table = source.relative_position_bias_table
        (wh, ww), (h, w) = self.window_size, hw
        self.hw, self.pad = (h, w), ((wh - h % wh) % wh, (ww - w % ww) % ww)
        ph, pw = h + self.pad[0], w + self.pad[1]
        self.shift = (0 if wh >= ph else source.shift_size[0], 0 if ww >= pw else source.shift_size[1])
        mask = _shift_mask(ph, pw, self.window_size, self.shift) if sum(self.shift) > 0 else None
        self.register_buffer("mask", mask, persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        """(1, heads, tokens, tokens) as torchvision gathers it, from parameters alone (an exporter writes
        it as one value)."""
        from torchvision.models.swin_transformer import _get_relative_position_bias

        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2 \
            else self.relative_position_bias_table
        bias = _get_relative_position_bias(table, self.relative_position_index, self.window_size)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (pad_b, pad_r), (sh, sw) = self.hw, self.pad, self.shift
        (wh, ww), heads = self.window_size, self.num_heads
        c = self.qkv.in_features
        nh, nw, n = (h + pad_b) // wh, (w + pad_r) // ww, wh * ww
        b = x.shape[0]
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        x = x.reshape(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, n, c)
        parts = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (parts[i].reshape(b, nh * nw, n, heads, c // heads).transpose(2, 3) for i in range(3))
        if self.v2:  # cosine attention
            attn = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
            attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        else:
            attn = torch.matmul(q, k.transpose(-2, -1)) * (c // heads) ** -0.5
        attn = attn + self.relative_position_bias()
        if self.mask is not None:
            attn = attn + self.mask
        attn = F.dropout(F.softmax(attn, dim=-1), self.attention_dropout, self.training)
        x = self.proj(torch.matmul(attn, v).transpose(2, 3).reshape(b, nh * nw, n, c))
        x = F.dropout(x, self.dropout, self.training)
        x = x.reshape(b, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * wh, nw * ww, c)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :h, :w, :]
        return x


def _shift_mask(ph: int, pw: int, window: list[int], shift: tuple[int, int]) -> torch.Tensor:
    """(windows, 1, tokens, tokens): -100 between tokens that the cyclic shift brought from different
    regions into one window, 0 elsewhere (as torchvision computes it)."""
    (wh, ww), (sh, sw) = window, shift
    regions = torch.zeros(ph, pw)
    count = 0
    for h0, h1 in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w0, w1 in ((0, -ww), (-ww, -sw), (-sw, None)):
            regions[h0:h1, w0:w1] = count
            count += 1
    regions = regions.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0).unsqueeze(1)


def _window_attention_types() -> tuple[type, ...]:
    return loaded_attributes("torchvision.models.swin_transformer", "ShiftedWindowAttention",
                             "ShiftedWindowAttentionV2")


def _input_sizes(model: nn.Module, types: tuple[type, ...], input_size: tuple[int, ...]) -> dict[str, tuple]:
    """The input shape each module of ``types`` sees when ``model`` runs one zero image of ``input_size``."""
    seen: dict[str, tuple] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if isinstance(m, types)]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return seen


def make_traceable(model: nn.Module, input_size: tuple[int, ...] | None = None) -> dict[str, nn.Module]:
    """Replace, in place, every attention module that has a traceable twin; returns the twins by module
    path. Window attention needs ``input_size`` (C, H, W) and stays as it is without."""
    windows = _window_attention_types()
    sizes = _input_sizes(model, windows, input_size) if input_size and windows and any(
        isinstance(m, windows) for m in model.modules()) else {}
    twins: dict[str, nn.Module] = {}
    for name, mod in list(model.named_modules()):
        if not name:
            continue
        if type(mod) is nn.MultiheadAttention:
            twins[name] = SplitAttention.from_mha(mod)
        elif isinstance(mod, windows) and name in sizes:
            twins[name] = StaticWindowAttention(mod, sizes[name][1:3]).train(mod.training)
        else:
            continue
        parent_path, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, leaf, twins[name])
    return twins
