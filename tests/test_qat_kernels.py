"""The fake-quantization kernels against plain-autograd references (values and gradients, the LSQ scale
gradient included), their meta-device path, and torch.compile of a quantized model."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proqha.compiling import Compiled
from proqha.quant import QuantConfig, grid, kernels, native, quantize_model, searchable_layers


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, factor):
        ctx.factor = factor
        return s.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def reference_per_tensor(x, alpha, qmin, qmax, factor):
    """LSQ as written in the paper, by autograd: s * round(hardtanh(x / s)) (strict mask on x / s), with
    the scale derived from alpha by autograd too."""
    s = _Scaled.apply(kernels.lsq_scale(alpha, qmax), factor)
    return _Round.apply(F.hardtanh(x / s, qmin, qmax)) * s


def reference_per_channel(w, alpha, qmin, qmax, factor):
    """torch's learnable per-channel fake quantization, by autograd: clamp(round(w / s)) * s with the
    gradient passing where the rounded value lies in [qmin, qmax], bounds included (torch.clamp's own
    backward leaves the bounds out)."""
    s = _Scaled.apply(kernels.lsq_scale(alpha, qmax), factor).reshape(-1, *([1] * (w.dim() - 1)))
    q = _Round.apply(w / s)
    inside = (q >= qmin) & (q <= qmax)
    return torch.where(inside, q, q.clamp(qmin, qmax).detach()) * s


def _values_and_grads(fn, x, alpha, qmin, qmax, factor, upstream):
    """Values, d/dx and d/dalpha of ``fn(x, alpha, ...)``."""
    x, alpha = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    y = fn(x, alpha, qmin, qmax, factor)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, alpha.grad


def _choose_kernels(monkeypatch, fused: bool) -> None:
    """Run the fused C kernels (skipped where none could be built), or force the aten/math paths."""
    if fused and native.library() is None:
        pytest.skip("no C compiler to build the fused kernels")
    if not fused:
        monkeypatch.setattr(native, "usable", lambda *tensors: False)


@pytest.mark.parametrize("qmin, qmax", [(0, 255), (-128, 127), (0, 3), (-2, 1)])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
def test_per_tensor_kernel_matches_the_autograd_reference(monkeypatch, qmin, qmax, fused):
    _choose_kernels(monkeypatch, fused)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 12, 12, generator=gen) * 2
    alpha = torch.tensor([4.0])
    upstream = torch.randn(x.shape, generator=gen)
    ours = _values_and_grads(grid.fake_quant_per_tensor, x, alpha, qmin, qmax, 0.01, upstream)
    ref = _values_and_grads(reference_per_tensor, x, alpha, qmin, qmax, 0.01, upstream)
    assert torch.allclose(ours[0], ref[0], atol=1e-6)  # x * (1/s) against x / s: a tie may move one step
    assert (ours[0] != ref[0]).float().mean() < 1e-3
    assert torch.equal(ours[1] != 0, ref[1] != 0) or (ours[1] != ref[1]).float().mean() < 1e-3
    assert torch.allclose(ours[2], ref[2], rtol=1e-3, atol=1e-4)  # the LSQ gradient of the clip range


def test_the_clip_range_gradient_is_what_autograd_computes():
    alpha = torch.tensor([0.5, -0.3, 0.0, 5e-9, -5e-9, 1e-8, 3.0], requires_grad=True)  # below, at, above eps
    g = torch.randn(7, generator=torch.Generator().manual_seed(6))
    kernels.lsq_scale(alpha, 7).backward(g)
    assert torch.equal(kernels.lsq_alpha_grad(g, alpha.detach(), 7), alpha.grad)


def _bits(values) -> list[int]:
    return torch.as_tensor(values, dtype=torch.float32).view(torch.int32).tolist()


@pytest.mark.parametrize("qmax", [1, 7, 127, 255])
def test_the_host_scale_and_clip_range_gradient_are_the_tensor_ones_bit_for_bit(qmax):
    """What the fused kernels' callers compute on the host in place of ``lsq_scale`` and ``lsq_alpha_grad``
    (on the scale sum rounded to float32, times the factor): the same float32 values, over random
    magnitudes and the edges (signed zeros, eps and its neighbours, overflow, NaN)."""
    gen = torch.Generator().manual_seed(8)
    eps = kernels.SCALE_EPS_32
    edges = [0.0, -0.0, eps, -eps, eps * 1.0000001, eps * 0.9999999, 3e38, -3e38, float("inf"), float("nan")]
    alpha = torch.cat([torch.randn(4000, generator=gen) * 10.0 ** torch.randint(-10, 5, (4000,), generator=gen),
                       torch.tensor(edges)])
    sums = (torch.randn(len(alpha), generator=gen, dtype=torch.float64)
            * 10.0 ** torch.randint(-6, 30, (len(alpha),), generator=gen)).tolist()
    factors = (torch.rand(len(alpha), generator=gen, dtype=torch.float64) + 1e-3).tolist()
    edge_sums = [0.0, -0.0, 1e-300, -5.0, 1e45, float("inf"), float("nan")]
    cases = [*zip(sums, factors, alpha.tolist()), *((t, 0.3, a) for t in edge_sums for a in edges)]  # edge x edge
    assert _bits([kernels.lsq_scale_value(a, qmax) for a in alpha.tolist()]) == _bits(kernels.lsq_scale(alpha, qmax))
    ours = [kernels.lsq_alpha_grad_value(t, f, a, qmax) for t, f, a in cases]
    theirs = [kernels.lsq_alpha_grad(torch.tensor([t], dtype=torch.float32) * f, torch.tensor([a]), qmax).item()
              for t, f, a in cases]
    assert _bits(ours) == _bits(theirs)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
def test_a_clip_range_gets_its_gradient_in_its_own_shape(monkeypatch, fused):
    _choose_kernels(monkeypatch, fused)
    x = torch.randn(4, 8)
    for shape in [(1,), (1, 1), ()]:
        alpha = torch.full(shape, 2.0, requires_grad=True)
        grid.fake_quant_per_tensor(x, alpha, -8, 7, 0.1).sum().backward()
        assert alpha.grad.shape == alpha.shape


@pytest.mark.parametrize("qmin, qmax", [(-127, 127), (-7, 7), (-1, 1)])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "math"])
def test_per_channel_kernel_matches_torch_and_the_reference(monkeypatch, qmin, qmax, fused):
    _choose_kernels(monkeypatch, fused)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(32, 16, 3, 3, generator=gen) * 0.2
    alpha = (torch.rand(32, generator=gen) * 0.02 + 0.01) * qmax
    upstream = torch.randn(w.shape, generator=gen)
    ours = _values_and_grads(grid.fake_quant_per_channel, w, alpha, qmin, qmax, 0.01, upstream)
    ref = _values_and_grads(reference_per_channel, w, alpha, qmin, qmax, 0.01, upstream)

    def torch_op(w, alpha, lo, hi, factor):
        s = kernels.lsq_scale(alpha, hi)
        return torch._fake_quantize_learnable_per_channel_affine(w, s, torch.zeros_like(s), 0, lo, hi, factor)

    today = _values_and_grads(torch_op, w, alpha, qmin, qmax, 0.01, upstream)
    assert torch.equal(ours[0], today[0]) and torch.equal(ours[1], today[1])  # what training computed before
    assert torch.allclose(ours[2], today[2], rtol=1e-4, atol=1e-6)
    assert (ours[0] != ref[0]).float().mean() < 1e-3 and torch.allclose(ours[2], ref[2], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("qmin, qmax", [(0, 15), (-128, 127)])
def test_the_traced_path_computes_what_the_eager_one_does(monkeypatch, qmin, qmax):
    gen = torch.Generator().manual_seed(2)
    x, upstream = torch.randn(4, 8, 6, 6, generator=gen), torch.randn(4, 8, 6, 6, generator=gen)
    alpha = torch.tensor([0.05 * qmax])
    eager = _values_and_grads(grid.fake_quant_per_tensor, x, alpha, qmin, qmax, 0.1, upstream)
    monkeypatch.setattr(kernels, "traced", lambda t: True)  # the branch torch.compile and meta take
    traced = _values_and_grads(grid.fake_quant_per_tensor, x, alpha, qmin, qmax, 0.1, upstream)
    assert torch.equal(eager[0], traced[0]) and torch.equal(eager[1], traced[1])
    assert torch.allclose(eager[2], traced[2], rtol=1e-4, atol=1e-4)  # a sum over terms of both signs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_an_add_with_relu_lets_its_unsigned_output_grid_clamp(monkeypatch, fused):
    from proqha.quant import QuantAdd
    from proqha.quant.quantizers import PACTQuantizer

    if not fused:
        monkeypatch.setattr(QuantAdd, "_fused_args", lambda self, a, b: None)
    elif native.library() is None:
        pytest.skip("no C compiler to build the fused kernels")
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 8, 5, 5, generator=gen), torch.randn(4, 8, 5, 5, generator=gen)
    add = QuantAdd(nn.Identity(), nn.Identity(), PACTQuantizer(4), relu=True)
    with torch.no_grad():
        first = add(a, b)  # the initialising call: its range comes from the ReLU's output, as before
    assert torch.equal(add.output_quantizer.alpha.detach(), F.relu(a + b).amax().reshape(1))
    reference = copy.deepcopy(add.output_quantizer)
    relu_calls = []
    relu = F.relu

    def counted_relu(x, *args, **kwargs):
        relu_calls.append(1)
        return relu(x, *args, **kwargs)

    def run(fn):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = fn(x, y)
        (out * a).sum().backward()
        return out.detach(), x.grad

    monkeypatch.setattr(F, "relu", counted_relu)
    ours = run(add)
    assert relu_calls == []  # the ReLU is left to the grid
    monkeypatch.setattr(F, "relu", relu)
    ref = run(lambda x, y: reference(F.relu(x + y)))
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[0], first) and torch.equal(ours[1], ref[1])
    assert torch.equal(add.output_quantizer.alpha.grad, reference.alpha.grad)
    add.output_quantizer.bits = 32  # quantizer off: the ReLU itself runs
    assert torch.equal(add(a, b), F.relu(a + b))


def test_a_quantized_model_runs_on_the_meta_device():
    from proqha.models import create_model

    model = quantize_model(create_model("resnet20"), QuantConfig(bits=4)).train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))  # ranges set on real data
    meta = copy.deepcopy(model).to("meta")
    out = meta(torch.empty(8, 3, 32, 32, device="meta"))
    assert out.shape == (8, 10) and out.device.type == "meta"
    out.sum().backward()  # the backward too: no kernel reads data
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in meta.parameters() if p.requires_grad)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "aten"])
def test_a_second_derivative_is_refused_not_silently_wrong(monkeypatch, fused):
    """The kernels' backward is not differentiable (C and in-place operators): differentiating it again
    raises instead of returning a gradient that misses their terms."""
    _choose_kernels(monkeypatch, fused)
    x, alpha, w = torch.randn(4, 8, requires_grad=True), torch.tensor([2.0], requires_grad=True), torch.randn(3, 8)
    loss = (grid.fake_quant_per_tensor(x, alpha, -8, 7, 0.1) ** 2).sum() + \
        (grid.fake_quant_per_channel(w.requires_grad_(), alpha.expand(3).contiguous(), -7, 7, 0.1) ** 2).sum()
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        grad_x.sum().backward()


def test_fake_and_recorded_tensors_take_the_plain_math():
    """Under FakeTensorMode (torch.export's shape propagation) a C kernel would read memory that does not
    exist, and under make_fx it would be missing from the graph: both take the traceable math."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from proqha.models import create_model

    model = quantize_model(create_model("resnet20"), QuantConfig(bits=4)).train()  # quantized adds too
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)  # ranges set on real data
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        out = model(mode.from_tensor(x))
        out.sum().backward()
    assert out.shape == (2, 10) and type(out).__name__ == "FakeTensor"
    model, x = _tiny().train(), torch.randn(2, 1, 8, 8)
    model(x)
    traced = make_fx(lambda t: model(t))(x)
    assert torch.equal(traced(x), model(x))
    ops = {str(node.target) for node in traced.graph.nodes}
    assert "aten.round.default" in ops  # the quantizers' math is in the graph


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return quantize_model(net, QuantConfig(bits=8), (1, 8, 8))


@pytest.mark.slow
def test_compiled_training_follows_eager_and_bit_changes_recompile():
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    eager = _tiny().train()
    with torch.no_grad():
        eager(x)
    model = copy.deepcopy(eager)
    compiled = Compiled(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, eager)]
    losses = []
    for _ in range(3):  # a few training steps each
        pair = []
        for net, opt in zip((compiled, eager), opts):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            pair.append(loss.item())
        losses.append(pair)
        conv = [F.cosine_similarity(a.weight.grad.flatten(), b.weight.grad.flatten(), dim=0)
                for a, b in zip(searchable_layers(model).values(), searchable_layers(eager).values())]
        assert min(conv) > 0.99, conv  # float reordering may flip a rounding tie, not the training
    assert all(abs(a - b) <= 1e-3 * abs(b) + 1e-4 for a, b in losses), losses
    model.eval()
    eager.eval()
    step = searchable_layers(eager)["3"].input_quantizer.scale().item()
    with torch.no_grad():
        before = compiled(x)
    for bits in (2,):  # a bit change must not run a stale graph
        for net in (model, eager):
            for layer in searchable_layers(net).values():
                layer.set_bits(w=bits, a=bits)
        with torch.no_grad():
            a, b = compiled(x), eager(x)
        assert (a - b).abs().max() <= 2 * step * 2 ** (8 - bits), (bits, float((a - b).abs().max()))
        assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.9
        assert not torch.equal(a, before)  # the 8-bit graph is not what ran
        before = a


def test_a_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    model = _tiny().eval()
    compiled = Compiled(model)

    def broken(*args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler found")

    object.__setattr__(compiled, "_compiled", broken)
    x = torch.randn(4, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
        compiled(x)
    assert torch.equal(out, model(x))
    assert [str(w.message) for w in caught] == ["torch.compile failed, running eagerly: no C++ compiler found"]
