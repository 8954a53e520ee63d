"""Exact on every CPU: no uint8 x int8 pair of products in an exported graph can leave int16.

x86 CPUs without VNNI add neighbouring products in int16 (vpmaddubsw) and saturate. These tests hold on
any machine: the bound is computed from the graph's integers and the saturating kernel is emulated in
numpy; one test also runs the real onnxruntime kernel and checks it behaves as this CPU's path predicts.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from helpers import configure_bits, random_cifar
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.export.graph_builder import constant_integers
from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import (
    adversarial_activations,
    check_pair_sums,
    cpu_int8_path,
    emulate_int16_pairs,
    pair_sum_bounds,
    worst_pair_sum,
)
from proqha.quant.grid import INT16_MAX, pair_sum_fits_int16, signed_range, unsigned_range, weight_int_factor

runner = CliRunner()


def _act_maxes() -> list[int]:
    """The largest stored uint8 value of every activation grid: unsigned 0..2^b-1, signed shifted by 128."""
    return [unsigned_range(b)[1] for b in range(2, 9)] + [128 + signed_range(b)[1] + 1 for b in range(2, 9)]


@pytest.mark.parametrize("w_qmax", [signed_range(b)[1] for b in range(2, 9)] + [2**b - 1 for b in range(2, 8)])
def test_weight_factor_is_the_largest_that_keeps_pairs_in_int16(w_qmax):
    for act_max in _act_maxes():
        k = weight_int_factor(w_qmax, act_max)
        assert k >= 1 and k * w_qmax <= 127
        if k > 1 or pair_sum_fits_int16(act_max, w_qmax):
            assert 2 * act_max * k * w_qmax <= INT16_MAX, (w_qmax, act_max, k)
        # maximal: one more would break int8 or int16
        assert (k + 1) * w_qmax > 127 or 2 * act_max * (k + 1) * w_qmax > INT16_MAX


def test_worst_pair_sum_is_attained_by_the_adversarial_inputs():
    rng = np.random.default_rng(0)
    for lo, hi in [(0, 255), (0, 15), (-128, 127), (120, 135)]:
        w = rng.integers(-127, 128, size=(6, 19))
        a = adversarial_activations(w, lo, hi)
        assert a.min() >= lo and a.max() <= hi and a.shape == (12, 19)
        pairs = [(a[r, None, i] * w[:, i] + a[r, None, j] * w[:, j]) for r in range(len(a))
                 for i, j in itertools.combinations(range(19), 2)]
        worst, reached = worst_pair_sum(w, lo, hi), np.abs(np.stack(pairs)).max()
        assert worst >= reached  # a bound ...
        # ... that the adversarial inputs reach (signed grids: up to |lo| / hi = 128 / 127 above it)
        assert worst == reached if lo >= 0 else worst * 127 <= reached * 128


@pytest.mark.parametrize("config", ["8", "4", "2", "mixed"])
def test_portable_graph_cannot_saturate_and_the_old_form_can(config):
    # trained on the full 8-bit grid (``int8_kernels="vnni"``): the portable export stores uint8 weights
    # where int8 pair sums could pass int16; int8 weights everywhere ("vnni" form) break the bound
    model, _ = random_cifar("lsq", int8_kernels="vnni")
    configure_bits(model, config)
    portable, info = export_onnx(model, (3, 32, 32))
    bounds = pair_sum_bounds(portable)
    assert len(bounds) == len(info.layers)  # every conv/linear was analysed
    assert check_pair_sums(portable) == []
    # the emulated saturating kernel equals exact integer math on the worst inputs of every int8 layer
    for layer, w, lo, hi in _int8_layers(portable):
        a = adversarial_activations(w, lo, hi)
        assert np.array_equal(emulate_int16_pairs(a, w), a @ w.T), layer
    # int8 weights everywhere (the form before this rule; "vnni"): the bound names the culprits, and the
    # emulation shows the saturation a CPU without VNNI would compute, whatever CPU runs this test
    old, old_info = export_onnx(model, (3, 32, 32), int8_kernels="vnni")
    failures = check_pair_sums(old)
    assert failures and all("int16 pair overflow possible" in f and "> 32767" in f for f in failures)
    assert "conv1" in failures[0]  # the first conv: 8-bit weights on the signed image
    assert old_info.int8_kernels == "vnni"
    saturated = [layer for layer, w, lo, hi in _int8_layers(old)
                 if not np.array_equal(emulate_int16_pairs(a := adversarial_activations(w, lo, hi), w), a @ w.T)]
    assert len(saturated) == len(failures)


@pytest.mark.parametrize("config", ["8", "mixed"])
def test_a_model_trained_portable_runs_int8_weights_everywhere_within_the_bound(config):
    # the default grid: 8-bit weights on inputs reaching uint8 255 train on ±64 levels, so every layer is
    # uint8 x int8 (U8S8, the fast kernels) and no pair sum can leave int16, in either export form
    model, _ = random_cifar("lsq")
    configure_bits(model, config)
    for kernels in ("portable", "vnni"):
        proto, info = export_onnx(model, (3, 32, 32), int8_kernels=kernels)
        bounds = pair_sum_bounds(proto)
        assert len(bounds) == len(info.layers) and all(b.worst is not None and b.fits for b in bounds)
        assert {v.weight_storage for v in info.layers.values()} <= {"int8", "int4", "int2"}
        assert info.int8_kernels == "portable"  # the file is exact on every CPU, whichever form was asked
        for layer, w, lo, hi in _int8_layers(proto):
            a = adversarial_activations(w, lo, hi)
            assert np.array_equal(emulate_int16_pairs(a, w), a @ w.T), layer
    assert max(b.worst for b in bounds) > INT16_MAX // 2  # the cap is not far below the bound: ±64 is used


def _int8_layers(proto: onnx.ModelProto):
    """(layer, int8 weights as (N, K), stored activation range) of every uint8 x int8 layer of a graph."""
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    for b in pair_sum_bounds(proto):
        if b.worst is None:
            continue
        node = next(n for n in proto.graph.node if n.name == b.layer)
        w = constant_integers(producers[node.input[1]].input[0], producers, inits).astype(np.int64)
        yield b.layer, w.reshape(w.shape[0], -1), *b.act_range


def _one_conv(weights: np.ndarray, wide: bool, out_scale: float) -> onnx.ModelProto:
    """uint8 input -> DQ -> Conv 1x1 (weights int8, or uint8 at zero point 128) -> Q (uint8)."""
    k, c = weights.shape
    if wide:
        w, zw = (weights + 128).astype(np.uint8).reshape(k, c, 1, 1), np.full(k, 128, np.uint8)
    else:
        w, zw = weights.astype(np.int8).reshape(k, c, 1, 1), np.zeros(k, np.int8)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(1.0, np.float32), "sx"), (np.array(0, np.uint8), "zx"), (w, "w"), (np.ones(k, np.float32), "sw"),
        (zw, "zw"), (np.array(out_scale, np.float32), "sy"), (np.array(128, np.uint8), "zy")]]
    nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "one_conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, k, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def test_onnxruntime_on_this_cpu_behaves_as_its_int8_path_says():
    rng = np.random.default_rng(0)
    w = rng.integers(100, 128, size=(8, 64)) * rng.choice([-1, 1], size=(8, 1))  # one sign per channel
    x = np.full((1, 64, 4, 4), 255, np.uint8)
    acc = np.einsum("kc,bchw->bkhw", w, x.astype(np.int64))
    out_scale = np.float32(np.abs(acc).max() / 120)  # no output clips
    exact = np.clip(np.rint(acc / out_scale) + 128, 0, 255)
    outputs = {}
    for wide in (False, True):
        model = _one_conv(w, wide, out_scale)
        assert bool(check_pair_sums(model)) is not wide  # the bound flags exactly the int8 form
        outputs[wide] = ort_session(model.SerializeToString()).run(None, {"x": x})[0].astype(np.int64)
    assert np.array_equal(outputs[True], exact)  # uint8 weights (U8U8 kernels): exact on every CPU
    path = cpu_int8_path()
    if path.sums == "int16":  # AVX2 without VNNI: the saturation the emulation predicts is real
        assert np.abs(outputs[False] - exact).max() >= 10
    elif path.sums == "int32":
        assert np.array_equal(outputs[False], exact)


@pytest.mark.parametrize("flags, machine, sums", [
    ("fpu sse2 avx avx2 fma", "x86_64", "int16"),
    ("fpu avx2 avx512f avx512bw", "x86_64", "int16"),
    ("fpu avx2 avx512f avx512bw avx512_vnni", "x86_64", "int32"),
    ("fpu avx2 avx_vnni", "x86_64", "int32"),
    ("fp asimd asimddp", "aarch64", "int32"),
])
def test_cpu_int8_path_from_flags(flags, machine, sums):
    assert cpu_int8_path(f"processor\t: 0\nflags\t\t: {flags}\n", machine).sums == sums
    assert cpu_int8_path("", "x86_64").sums == "unknown"


@pytest.fixture(scope="module")
def vnni_run(tmp_path_factory):
    """A digits run trained on the full 8-bit weight grid (``proqha train --int8-kernels vnni``, 2 epochs)."""
    run = tmp_path_factory.mktemp("vnni") / "train"
    result = runner.invoke(app, ["train", "--epochs", "2", "--batch-size", "128", "--int8-kernels", "vnni",
                                 "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_cli_reports_the_cpu_path_and_parity_flags_an_old_graph_on_any_cpu(vnni_run, tmp_path):
    good = runner.invoke(app, ["export", str(vnni_run), "--out", str(tmp_path / "m.onnx"), "--samples", "64"])
    assert good.exit_code == 0, good.output
    assert "onnxruntime int8 kernels on this CPU" in good.stdout and "exact on every CPU" in good.stdout
    assert "layers store uint8 weights" in good.stdout  # the slow kernels are named, with the way out
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert meta["proqha.int8_kernels"] == "portable" and "every CPU" in meta["proqha.exact_on"]
    # a graph with int8 weights everywhere that claims to be portable (what files before the rule were)
    runner.invoke(app, ["export", str(vnni_run), "--out", str(tmp_path / "old.onnx"), "--no-check",
                        "--int8-kernels", "vnni"])
    old = onnx.load(tmp_path / "old.onnx")
    kept = [p for p in old.metadata_props if p.key not in ("proqha.int8_kernels", "proqha.exact_on")]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, tmp_path / "old.onnx")
    result = runner.invoke(app, ["parity", str(tmp_path / "old.onnx"), "--samples", "64", "--no-reference"])
    assert result.exit_code == 1, result.output
    assert "int16 pair overflow possible" in result.stderr
    bad = runner.invoke(app, ["export", str(vnni_run), "--int8-kernels", "avx", "--out", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 2 and "--int8-kernels must be one of" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_cli_vnni_graph_is_validated_only_where_it_can_be_exact(vnni_run, tmp_path):
    result = runner.invoke(app, ["export", str(vnni_run), "--out", str(tmp_path / "v.onnx"), "--samples", "64",
                                 "--int8-kernels", "vnni"])
    if cpu_int8_path().sums == "int16":
        assert result.exit_code == 1 and "cannot run an int8_kernels='vnni' graph exactly" in result.stderr
        assert not (tmp_path / "v.onnx").exists()
    else:
        assert result.exit_code == 0, result.output
        meta = {p.key: p.value for p in onnx.load(tmp_path / "v.onnx").metadata_props}
        assert meta["proqha.int8_kernels"] == "vnni" and "VNNI" in meta["proqha.exact_on"]
