"""nn.MultiheadAttention in a user's model: the same function after conversion, quantized projections and
matmuls, an exact QDQ export, and float checkpoints that still load."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from proqha.export.onnx_export import export_onnx
from proqha.export.validate import validate_export
from proqha.quant import QuantConfig, QuantLinear, load_float_state_dict, quant_layers, quantize_model
from proqha.quant.attention import SplitAttention


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_split_attention_computes_what_multihead_attention_does(batch_first, average):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, batch_first=batch_first).eval()
    split = SplitAttention.from_mha(mha).eval()
    shape = (2, 5, 24) if batch_first else (5, 2, 24)
    q, kv = torch.randn(*shape), torch.randn(*shape)  # cross attention: keys and values differ from queries
    with torch.no_grad():
        want, want_w = mha(q, kv, kv, average_attn_weights=average)
        got, got_w = split(q, kv, kv, average_attn_weights=average)
        got_only, none = split(q, kv, kv, need_weights=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    assert none is None and torch.equal(got_only, got)


def test_unsupported_attention_is_one_line():
    mha = nn.MultiheadAttention(8, 2, add_zero_attn=True)
    with pytest.raises(ValueError, match="add_zero_attn") as err:
        SplitAttention.from_mha(mha)
    assert "\n" not in str(err.value)


class _Tokens(nn.Module):
    """A user's token model: patch embedding, sequence-first attention with a residual, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 4)  # batch_first=False: (tokens, batch, features)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).permute(2, 0, 1)
        a, _ = self.attn(t, t, t)
        t = self.norm(t + a)
        return self.head(t.mean(0))


def test_user_attention_model_converts_and_exports_exactly():
    torch.manual_seed(0)
    model = _Tokens().eval()
    x = torch.randn(40, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model must trace: no fallback to a module walk
        twin = quantize_model(model, QuantConfig(bits=32))
        q = quantize_model(model, QuantConfig(bits=8))
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-5)
    layers = quant_layers(q)
    assert {"attn.q", "attn.k", "attn.v", "attn.out_proj"} <= set(layers)
    assert all(isinstance(layers[n], QuantLinear) and layers[n].searchable for n in ("attn.q", "attn.out_proj"))
    _assert_exports_exactly(q, x, matmuls=2)


def _assert_exports_exactly(q: nn.Module, x: torch.Tensor, matmuls: int) -> None:
    """Quantizer ranges from 8 images, export, and the export's own rules on the other 32, with every
    attention matmul in QLinearMatMul."""
    q.train()
    with torch.no_grad():
        q(x[:8])
    q.eval()
    proto, info = export_onnx(q, tuple(x.shape[1:]))
    report = validate_export(proto, info, q, DataLoader(TensorDataset(x[8:], torch.zeros(32, dtype=torch.long)),
                                                        batch_size=8))
    assert report.ok, report.failures
    assert info.matmuls == matmuls and report.kernels.ops.get("QLinearMatMul") == matmuls


def test_float_checkpoint_with_packed_projections_loads():
    """A float state dict (in_proj_weight) loads into the quantized twin's separate q/k/v layers."""
    torch.manual_seed(0)
    model = _Tokens().eval()
    q = quantize_model(_Tokens(), QuantConfig(bits=32))  # different random weights
    load_float_state_dict(q, model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(q.eval()(x), model(x), rtol=1e-4, atol=1e-5)


class _Einsum(nn.Module):
    """Attention written with einsum, as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        attn = torch.einsum("bqd,bkd->bqk", q, k).softmax(-1)
        return self.head(torch.einsum("bqk,bkd->bqd", attn, v).mean(1))


class _Gate(nn.Module):
    """An elementwise einsum (no matrix product)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,nd->nd", self.a(x), self.b(x))


def test_einsum_attention_runs_on_integer_matmuls():
    torch.manual_seed(0)
    x = torch.randn(40, 3, 16, 16)
    model = _Einsum().eval()
    q = quantize_model(model, QuantConfig(bits=32))
    with torch.no_grad():
        torch.testing.assert_close(q(x), model(x), rtol=1e-4, atol=1e-5)
    _assert_exports_exactly(quantize_model(model, QuantConfig(bits=8)), x, matmuls=2)


def test_other_einsums_are_refused_with_one_line():
    from proqha.errors import ProqhaError

    q = quantize_model(_Gate(), QuantConfig(bits=8)).eval()
    with pytest.raises(ProqhaError, match="cannot export function einsum") as err:
        export_onnx(q, (4,))
    assert "\n" not in str(err.value)
