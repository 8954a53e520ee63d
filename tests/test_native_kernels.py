"""The fused C kernels of the quantizers (proqha.quant.native): bit-identical to the math that
defines them, on any thread count; built once per machine, shared safely, and optional."""

from __future__ import annotations

import copy
import math
import os
import shlex
import shutil
import warnings

import pytest
import torch
from torch import nn

from proqha.quant import QuantAdd, Quantizer, grid, kernels, native
from proqha.quant.quantizers import PACTQuantizer, SignedActQuantizer

needs_compiler = pytest.mark.skipif(native.compiler() is None or native.library() is None,
                                    reason="no C compiler to build the fused kernels (aten operators run instead)")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """A clean build cache and ``library()`` unloaded, restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = native.library
    library.cache_clear()
    yield tmp_path / "proqha" / "kernels"
    library.cache_clear()


def _hard_inputs(scale: float, qmin: int, qmax: int, n: int) -> torch.Tensor:
    """Random values plus exact ties between levels, exact clip bounds, signed zeros, infinities and NaN."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen) * (qmax - qmin) * scale / 3
    special = torch.tensor([(qmin + 0.5) * scale, (qmax - 0.5) * scale, 2.5 * scale, -1.5 * scale, qmin * scale,
                            qmax * scale, 0.0, -0.0, float("inf"), float("-inf"), float("nan")])
    x[: min(n, len(special))] = special[: min(n, len(special))]
    return x


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN and the sign of zero included)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@needs_compiler
@pytest.mark.parametrize("qmin, qmax", [(0, 255), (-128, 127), (0, 3), (-2, 1)])
@pytest.mark.parametrize("n", [5, 4099, 200_000])  # below and above the parallel threshold, partial blocks
def test_fused_kernels_are_bit_identical_to_the_math(qmin, qmax, n):
    scale = torch.tensor([0.037])
    x = _hard_inputs(0.037, qmin, qmax, n)
    g = torch.randn(n, generator=torch.Generator().manual_seed(1))
    assert _same_bits(native.forward(x, scale, qmin, qmax), kernels.forward_math(x, scale, qmin, qmax))
    assert _same_bits(native.backward(g, x, scale, qmin, qmax)[0], kernels.backward_math(g, x, scale, qmin, qmax)[0])
    finite = x.isfinite()  # an infinite x makes both sums NaN (0 * inf)
    total = native.backward(g[finite], x[finite], scale, qmin, qmax)[1]
    ref_total = kernels.backward_math(g[finite], x[finite], scale, qmin, qmax)[1]
    assert torch.allclose(torch.tensor([total]), ref_total, rtol=1e-4, atol=1e-3)


@needs_compiler
@pytest.mark.parametrize("qmin, qmax", [(-127, 127), (-7, 7), (-1, 1)])
@pytest.mark.parametrize("shape", [(5, 3), (64, 16, 3, 3), (40, 1000)])  # rows shorter than a lane; parallel
def test_the_weight_kernels_are_bit_identical_to_the_math(qmin, qmax, shape):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(shape, generator=gen) * 0.3
    alpha = (torch.rand(shape[0], generator=gen) * 0.05 + 0.002) * qmax
    scale = kernels.lsq_scale(alpha, qmax)
    w.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, (qmax + 0.5) * float(scale[0])])
    g = torch.randn(shape, generator=gen)
    assert _same_bits(native.per_channel_forward(w, alpha, qmin, qmax, kernels.SCALE_EPS_32),
                      kernels.per_channel_forward_math(w, scale, qmin, qmax))
    grad_w, grad_alpha = native.per_channel_backward(g, w, alpha, qmin, qmax, 0.1, kernels.SCALE_EPS_32)
    ref_w, ref_s = kernels.per_channel_backward_math(g, w, scale, qmin, qmax)
    ref_alpha = kernels.lsq_alpha_grad(ref_s * 0.1, alpha, qmax)
    assert _same_bits(grad_w, ref_w)
    assert grad_alpha[0].isnan() and ref_alpha[0].isnan()  # row 0 holds the NaN
    assert torch.allclose(grad_alpha[1:], ref_alpha[1:], rtol=1e-4, atol=1e-6)  # sums in another order


@needs_compiler
def test_the_weight_kernels_take_the_clip_ranges_gradient_step_by_step_as_torch():
    """One weight per channel (a sum of one term, so no summation order) and clip ranges that are
    negative, zero, at and around eps, huge and NaN: scale and d/dalpha bit for bit."""
    eps = kernels.SCALE_EPS_32
    gen = torch.Generator().manual_seed(7)
    alpha = torch.cat([torch.randn(3000, generator=gen) * 10.0 ** torch.randint(-9, 4, (3000,), generator=gen),
                       torch.tensor([0.0, -0.0, eps, -eps, eps * 1.0000001, eps * 0.9999999, 3e38, float("nan")])])
    scale = kernels.lsq_scale(alpha, 7)
    w = (torch.randn(len(alpha), 1, generator=gen) * 4 * scale[:, None]).nan_to_num(0.0)
    g = torch.randn(len(alpha), 1, generator=gen)
    assert _same_bits(native.per_channel_forward(w, alpha, -7, 7, eps), kernels.per_channel_forward_math(w, scale, -7, 7))
    _, grad_alpha = native.per_channel_backward(g, w, alpha, -7, 7, 0.37, eps)
    _, ref_s = kernels.per_channel_backward_math(g, w, scale, -7, 7)
    assert _same_bits(grad_alpha, kernels.lsq_alpha_grad(ref_s * 0.37, alpha, 7))


@needs_compiler
def test_channels_last_weights_keep_their_layout():
    w = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)  # rows still contiguous
    g, alpha = torch.randn(8, 4, 3, 3), torch.rand(8) * 0.35 + 0.07
    scale = kernels.lsq_scale(alpha, 7)
    y = native.per_channel_forward(w, alpha, -7, 7, kernels.SCALE_EPS_32)
    grad_w, grad_alpha = native.per_channel_backward(g, w, alpha, -7, 7, 1.0, kernels.SCALE_EPS_32)
    assert y.stride() == w.stride() == grad_w.stride()
    assert torch.equal(y, kernels.per_channel_forward_math(w, scale, -7, 7))
    ref_w, ref_s = kernels.per_channel_backward_math(g, w, scale, -7, 7)
    assert torch.equal(grad_w, ref_w)
    assert torch.allclose(grad_alpha, kernels.lsq_alpha_grad(ref_s, alpha, 7), rtol=1e-4, atol=1e-6)


def test_the_host_reciprocal_is_torchs():
    scales = torch.cat([torch.rand(20000) * 10.0 ** torch.randint(-8, 3, (20000,)), torch.tensor([1e-8, 3.0, 1 / 3])])
    ours = torch.tensor([native.grid_args(s.reshape(1), 0, 1).inv for s in scales])
    assert torch.equal(ours, 1.0 / scales)


@needs_compiler
def test_a_nan_input_poisons_the_scale_sum_as_the_math_does():
    x, g, scale = torch.tensor([0.1, float("nan")]), torch.ones(2), torch.tensor([0.05])
    grad_x, total = native.backward(g, x, scale, 0, 15)
    assert torch.equal(grad_x, kernels.backward_math(g, x, scale, 0, 15)[0]) and math.isnan(total)


@needs_compiler
def test_results_do_not_depend_on_the_thread_count():
    """Bit for bit, the scale sum included: its order is fixed by element index, not by thread."""
    gen = torch.Generator().manual_seed(3)
    x, g, scale = torch.randn(64, 16, 32, 32, generator=gen), torch.randn(64, 16, 32, 32, generator=gen), torch.tensor([0.02])
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append((native.forward(x, scale, -128, 127), *native.backward(g, x, scale, -128, 127)))
    finally:
        torch.set_num_threads(threads)
    (y1, gx1, s1), (y3, gx3, s3) = results
    assert torch.equal(y1, y3) and torch.equal(gx1, gx3) and s1 == s3  # the sum in a fixed order


@needs_compiler
def test_non_contiguous_inputs_are_read_in_their_logical_order():
    x = torch.randn(8, 6, 5).transpose(0, 2)
    g = torch.randn(8, 6, 5).permute(2, 1, 0)
    scale = torch.tensor([0.1])
    assert torch.equal(native.forward(x, scale, -8, 7), kernels.forward_math(x, scale, -8, 7))
    assert torch.equal(native.backward(g, x, scale, -8, 7)[0], kernels.backward_math(g, x, scale, -8, 7)[0])


@needs_compiler
def test_a_channels_last_input_keeps_its_layout():
    """A channels-last activation stays channels-last for the conv after it (the --channels-last option)."""
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 8, 5, 5)  # the gradient may come in another layout
    scale = torch.tensor([0.1])
    y = native.forward(x, scale, 0, 15)
    grad_x, total = native.backward(g, x, scale, 0, 15)
    assert y.is_contiguous(memory_format=torch.channels_last) and grad_x.stride() == x.stride()
    assert torch.equal(y, kernels.forward_math(x, scale, 0, 15))
    ref_x, ref_total = kernels.backward_math(g, x, scale, 0, 15)
    assert torch.equal(grad_x, ref_x) and torch.allclose(torch.tensor([total]), ref_total, rtol=1e-5)


@needs_compiler
def test_a_cpu_quantizer_runs_the_fused_kernels(monkeypatch):
    calls = []
    for name in ("forward", "backward"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    q = PACTQuantizer(4)
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    q(x).sum().backward()
    assert calls == ["forward", "backward"]


@needs_compiler
def test_the_kernels_share_torchs_openmp_runtime():
    """The kernels' parallel loops must run on the OpenMP runtime torch already loaded: a second one
    would keep a second spinning thread pool, which on a 2-core machine slows every torch operator by an
    order of magnitude."""
    theirs = native.torch_openmp_file()
    if theirs is None or not native.openmp_shared_with_torch(native.compiler_version(native.compiler())):
        pytest.skip("torch is not on libgomp.so.1 or the compiler is not GCC: the kernels are built serial")
    assert native.defining_file(native.library()._handle, "GOMP_parallel") == theirs


@needs_compiler
def test_beside_another_openmp_runtime_the_kernels_are_built_serial(fresh_library, monkeypatch):
    monkeypatch.setattr(native, "torch_openmp_file", lambda: None)  # as with a torch on Intel's OpenMP
    serial = native.load(native.build(native.compiler(), fresh_library))
    assert native.defining_file(serial._handle, "GOMP_parallel") is None  # no OpenMP runtime of its own
    monkeypatch.setattr(native, "library", lambda: serial)
    x, scale = torch.randn(100_000) * 3, torch.tensor([0.05])
    assert torch.equal(native.forward(x, scale, -128, 127), kernels.forward_math(x, scale, -128, 127))


def test_only_gcc_beside_torchs_libgomp_builds_parallel(monkeypatch):
    gcc = "gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.\n"
    clang = "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu\n"  # -fopenmp would link LLVM's libomp
    monkeypatch.setattr(native, "torch_openmp_file", lambda: "/site-packages/torch/lib/libgomp.so.1")
    assert native.OPENMP in native.flags(gcc) and native.OPENMP not in native.flags(clang)
    monkeypatch.setattr(native, "torch_openmp_file", lambda: "/site-packages/torch.libs/libgomp-a34b3233.so.1")
    assert native.OPENMP not in native.flags(gcc)  # a renamed copy: the linker would load a second runtime


@needs_compiler
def test_a_build_is_cached_per_machine_and_keyed_by_its_source(fresh_library, monkeypatch, tmp_path):
    cc = native.compiler()
    first = native.build(cc, fresh_library)
    stamp = first.stat().st_mtime_ns
    assert native.build(cc, fresh_library) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    edited = tmp_path / "fake_quant.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    assert native.build(cc, fresh_library) != first
    assert sorted(p.suffix for p in fresh_library.iterdir()) == [".so", ".so"]  # no temporary files left


@needs_compiler
def test_a_compiler_given_as_a_command_line_builds(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", shlex.join(["env", *native.compiler()]))  # as with CC="ccache gcc"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build would warn
        assert native.library() is not None
    x = torch.randn(100) * 3
    assert torch.equal(native.forward(x, 0.05, -128, 127), kernels.forward_math(x, torch.tensor([0.05]), -128, 127))


@needs_compiler
def test_a_compiler_found_in_a_folder_with_a_space_builds(fresh_library, monkeypatch, tmp_path):
    folder = tmp_path / "my tools"
    folder.mkdir()
    (folder / "cc").symlink_to(shutil.which(native.compiler()[0]))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    assert native.compiler() == [str(folder / "cc")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is not None


@pytest.mark.parametrize("cpuinfo, feature", [("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n", "avx2"),
                                              ("processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n", "sve")])
def test_the_build_is_keyed_by_the_cpus_features_on_x86_and_arm(tmp_path, cpuinfo, feature):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert feature in native.cpu_signature(str(path)).split()


def test_without_a_working_compiler_quantizers_use_aten_after_one_warning(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
    x = torch.randn(3, 50) * 2
    q = PACTQuantizer(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = q(x)
        q(x)
    assert native.library() is None
    assert [str(w.message).split(":")[0] for w in caught] == ["fused quantizer kernels unavailable, using aten operators"]
    assert torch.equal(y, kernels.forward_math(x, q.scale(), 0, 15))


def test_the_switch_turns_them_off_without_building(fresh_library, monkeypatch):
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.library() is None and not fresh_library.exists()
    assert not native.usable(torch.zeros(3))


def test_a_float64_clip_range_takes_the_math_as_before():
    """A model moved to float64 quantizes float32 activations (Quantizer casts them) on a float64 grid."""
    q = PACTQuantizer(4).double()
    x = torch.rand(2, 3, 8, 8)
    y = q(x)
    assert y.dtype == torch.float64 and torch.equal(y, kernels.forward_math(x, q.scale(), 0, 15))
    add = _quant_add("signed", "none", relu=False).double()
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    add(a, b)
    assert add._fused_args(a, b) is None and add(a, b).dtype == torch.float64


def test_other_devices_and_dtypes_do_not_take_them():
    assert not native.usable(torch.zeros(3, dtype=torch.float64))
    assert not native.usable(torch.zeros(3, device="meta"))
    assert not native.usable(torch.zeros(3), torch.zeros(3, dtype=torch.float64))  # every tensor counts
    w, a64 = torch.randn(4, 9), torch.full((4,), 0.35, dtype=torch.float64)
    assert torch.equal(grid.fake_quant_per_channel(w, a64, -7, 7, 1.0),
                       kernels.per_channel_forward_math(w, kernels.lsq_scale(a64, 7), -7, 7))
    y = grid.fake_quant_per_tensor(torch.zeros(4, dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64), 0, 3, 1.0)
    assert y.dtype == torch.float64


def _quant_add(a_q: str, b_q: str, relu: bool) -> QuantAdd:
    make = {"pact": lambda: PACTQuantizer(8), "signed": lambda: SignedActQuantizer(8), "none": nn.Identity}
    return QuantAdd(make[a_q](), make[b_q](), PACTQuantizer(8) if relu else SignedActQuantizer(8), relu=relu)


def _add_values_and_grads(add: QuantAdd, a: torch.Tensor, b: torch.Tensor, upstream: torch.Tensor):
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    out = add(a, b)
    (out * upstream).sum().backward()
    alphas = [q.alpha.grad.clone() for q in add.modules() if isinstance(q, Quantizer)]
    return [out.detach(), a.grad, b.grad, *alphas]


@needs_compiler
@pytest.mark.parametrize("a_q, b_q", [("signed", "none"), ("none", "signed"), ("signed", "pact"), ("none", "none")])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_a_fused_add_computes_what_its_quantizers_and_the_add_compute_in_turn(monkeypatch, a_q, b_q, relu, layout):
    gen = torch.Generator().manual_seed(4)
    shape = (3, 7, 45, 41)  # blocks, lanes and threads end mid-way
    a, b, upstream = (torch.randn(shape, generator=gen) * 2 for _ in range(3))
    if layout != "contiguous":
        a = a.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last":
        b = b.contiguous(memory_format=torch.channels_last)
    b = b.abs() if b_q == "pact" else b
    fused = _quant_add(a_q, b_q, relu)
    with torch.no_grad():
        fused(a, b)  # ranges initialised by the unfused path
    unfused = copy.deepcopy(fused)
    calls = []
    real = native.quant_add_forward
    monkeypatch.setattr(native, "quant_add_forward", lambda *args: calls.append(1) or real(*args))
    ours = _add_values_and_grads(fused, a, b, upstream)
    assert calls == [1]
    monkeypatch.setattr(QuantAdd, "_fused_args", lambda self, a, b: None)
    ref = _add_values_and_grads(unfused, a, b, upstream)
    assert calls == [1]
    for got, want in zip(ours[:3], ref[:3], strict=True):  # values and input gradients, bit for bit
        assert _same_bits(got.contiguous(), want.contiguous())
    for got, want in zip(ours[3:], ref[3:], strict=True):  # scale gradients: bit for bit in one layout
        assert _same_bits(got, want) or (layout == "mixed" and torch.allclose(got, want, rtol=1e-5))


@needs_compiler
def test_an_add_is_left_unfused_where_the_kernel_would_compute_something_else(monkeypatch):
    calls = []
    real = native.quant_add_forward
    monkeypatch.setattr(native, "quant_add_forward", lambda *args: calls.append(1) or real(*args))
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    add = _quant_add("signed", "none", relu=False)
    add(a, b)  # the first call initialises the ranges
    add(a, b[:, :, :1])  # broadcasting
    add(a, b.double())
    add.output_quantizer.bits = 32
    add(a, b)
    assert calls == []
    add.output_quantizer.bits = 8
    add(a, b)
    assert calls == [1]
