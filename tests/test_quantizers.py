"""Quantizer grids, gradients and state: what the exporter relies on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proqha.quant import DoReFaWeightQuantizer, PACTQuantizer, SignedActQuantizer, WeightQuantizer
from proqha.quant.grid import fake_quant_per_tensor, lsq_grad_factor

BITS = range(2, 9)


def _input_for(cls, shape=(4, 3, 5, 5)):
    x = torch.randn(*shape) * 3
    return x.relu() if cls is PACTQuantizer else x


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cls", [PACTQuantizer, SignedActQuantizer, WeightQuantizer])
def test_values_land_on_the_declared_integer_grid(cls, bits):
    q = cls(bits, channels=4 if cls is WeightQuantizer else 1)
    x = _input_for(cls)
    y = q(x)
    grid = q.grid()
    assert grid.zero_point == 0 and grid.bits == bits
    if cls is PACTQuantizer:
        assert (grid.qmin, grid.qmax, grid.signed) == (0, 2**bits - 1, False)
    elif cls is SignedActQuantizer:  # full signed range: fills int8 at 8 bit with no clamp
        assert (grid.qmin, grid.qmax, grid.signed) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, True)
    else:
        assert (grid.qmin, grid.qmax, grid.signed) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, True)
    shape = [-1, 1, 1, 1] if grid.axis == 0 else [1]
    levels = y / grid.scale.reshape(shape)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.round().min() >= grid.qmin and levels.round().max() <= grid.qmax
    # the integers an exporter stores reproduce the forward pass exactly
    ints = q.integers(x)
    assert ints.dtype == torch.int32
    assert torch.equal(ints.float() * grid.scale.reshape(shape), y.detach())
    # a range of 2^b (or 2^b-1) distinct levels is actually used on spread-out data
    assert len(torch.unique(ints)) > 1


@pytest.mark.parametrize("bits", BITS)
def test_dorefa_grid_is_odd_integers_over_2b_minus_1(bits):
    q = DoReFaWeightQuantizer(bits)
    w = torch.randn(8, 3, 3, 3)
    y = q(w)
    grid = q.grid()
    n = 2**bits - 1
    assert grid.odd_levels and (grid.qmin, grid.qmax) == (-n, n)
    ints = q.integers(w)
    assert torch.all(ints % 2 != 0)
    assert ints.min() >= -n and ints.max() <= n
    assert torch.allclose(ints.float() / n, y.detach(), atol=1e-6)
    assert ints.abs().max() == n  # the largest |tanh(w)| maps to the end of the grid


@pytest.mark.parametrize("cls", [PACTQuantizer, SignedActQuantizer, WeightQuantizer, DoReFaWeightQuantizer])
def test_32_bits_is_identity_and_has_no_grid(cls):
    q = cls(32, channels=4 if cls is WeightQuantizer else 1)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(q(x), x)
    with pytest.raises(ValueError):
        q.grid()


def test_straight_through_gradient_inside_range_zero_outside():
    q = SignedActQuantizer(4)
    q.initialize(torch.tensor([2.0]))  # range ±2
    x = torch.tensor([-5.0, -1.3, 0.2, 1.7, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert q.alpha.grad is not None and torch.isfinite(q.alpha.grad).all()


def test_scale_gradient_is_lsq():
    torch.manual_seed(1)
    x = torch.randn(1000) * 2
    g = torch.randn(1000)
    alpha = torch.tensor([3.0], requires_grad=True)  # scale 3/7
    y = fake_quant_per_tensor(x, alpha, -7, 7, 0.5)
    y.backward(g)
    with torch.no_grad():
        s = alpha / 7
        xs = x / s
        q = xs.clamp(-7, 7).round()
        inside = (xs > -7) & (xs < 7)
        expected = (g * torch.where(inside, q - xs, q)).sum() * 0.5 / 7  # d/ds, then ds/dalpha = 1/7
    assert torch.allclose(alpha.grad, expected.reshape(1), rtol=1e-4, atol=1e-4)


def test_pact_clip_gradient_counts_clipped_inputs():
    q = PACTQuantizer(8)
    q.initialize(torch.tensor([1.0]))
    x = torch.tensor([[0.0, 2.0, 3.0, 0.0]])  # two inputs above alpha = 1, two on the grid
    q(x).sum().backward()
    # d/dalpha = (1/qmax) * d/ds; clipped inputs contribute qmax each, on-grid inputs nothing
    factor = lsq_grad_factor(4, 255)
    assert torch.allclose(q.alpha.grad, torch.tensor([2.0 * factor]), atol=1e-6)


def test_weight_scale_initialises_per_channel_from_max_abs():
    q = WeightQuantizer(8, channels=3)
    w = torch.randn(3, 2, 3, 3)
    q(w)
    assert torch.allclose(q.alpha.detach(), w.abs().flatten(1).amax(1))
    assert q.grid().scale.shape == (3,)


def test_lowering_bits_keeps_the_range_and_coarsens_the_grid():
    q = SignedActQuantizer(8)
    x = torch.randn(100)
    q(x)
    s8 = q.scale().item()
    q.bits = 4
    assert q.scale().item() == pytest.approx(s8 * 127 / 7)
    assert len(torch.unique(q(x))) <= 16


def test_bits_and_range_travel_in_the_state_dict():
    q = WeightQuantizer(8, channels=2)
    q(torch.randn(2, 3))
    q.bits = 3
    r = WeightQuantizer(8, channels=2)
    r.load_state_dict(q.state_dict())
    assert r.bits == 3 and r.initialized and torch.equal(r.alpha, q.alpha)


@pytest.mark.parametrize("bad", [1, 9, 16, 4.0, "4", True])
def test_invalid_bits_rejected(bad):
    with pytest.raises(ValueError):
        SignedActQuantizer(bad)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_property_integers_always_within_range(bits, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, generator=gen) * scale
    q = SignedActQuantizer(bits)
    y = q(x)
    ints = q.integers(x)
    lo, hi = q.qrange()
    assert ints.min() >= lo and ints.max() <= hi
    assert torch.equal(ints.float() * q.grid().scale, y.detach())
