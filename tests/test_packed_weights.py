"""Packed low-bit weights: INT2/INT4 initializers that onnxruntime widens at load, with the kernels and
outputs of int8 storage, in a smaller file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import configure_bits, random_cifar
from onnx import TensorProto, numpy_helper
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.export import qdq
from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.validate import check_graph, kernel_weights, ort_kernels, validate_export
from proqha.quant import quant_layers


def _ort_outputs(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    return ort_session(proto.SerializeToString()).run(None, {"input": x.numpy()})[0]


def _storages(info) -> set[str]:
    return {layer.weight_storage for layer in info.layers.values()}


@pytest.mark.parametrize("weights", ["lsq", "dorefa"])
def test_packed_and_int8_storage_compute_the_same_in_onnxruntime(weights):
    model, batches = random_cifar(weights)
    configure_bits(model, "mixed")  # every knob cycling through 2..8 (2..7 for DoReFa)
    if weights == "lsq":  # a packed linear too (Gemm: onnxruntime fuses it into QGemm only with a weight zero point)
        quant_layers(model)["fc"].set_bits(w=2, a=8)
    packed, packed_info = export_onnx(model, (3, 32, 32))
    plain, plain_info = export_onnx(model, (3, 32, 32), weights="int8")
    assert {"int2", "int4"} <= _storages(packed_info) if weights == "lsq" else "int2" in _storages(packed_info)
    assert weights != "lsq" or packed_info.layers["fc"].weight_storage == "int2"
    assert _storages(plain_info) <= {"int8", "uint8"}
    x = torch.cat([x for x, _ in batches])
    assert np.array_equal(_ort_outputs(packed, x), _ort_outputs(plain, x))  # byte for byte
    # onnxruntime folds the widening: the graph it runs is the int8 one, kernel for kernel
    assert ort_kernels(packed.SerializeToString()).ops == ort_kernels(plain.SerializeToString()).ops
    assert check_graph(packed) == []  # onnx.checker full check and strict shape inference
    bits = {"int2": 2, "int4": 4}
    saving = sum(layer.weight.numel() * (8 - bits[packed_info.layers[name].weight_storage]) // 8
                 for name, layer in quant_layers(model).items() if packed_info.layers[name].weight_storage in bits)
    shrunk = len(plain.SerializeToString()) - len(packed.SerializeToString())
    assert 0.9 * saving <= shrunk <= saving  # the packed bytes, less a few widening nodes
    if weights == "lsq":  # (mixed DoReFa on random weights is chaotic: see test_parity_ort)
        report = validate_export(packed, packed_info, model, batches, reference=False)
        assert report.ok, report.failures


def test_packed_integers_unpack_to_the_trained_ones():
    model, _ = random_cifar("lsq")
    configure_bits(model, "mixed")
    proto, info = export_onnx(model, (3, 32, 32))
    inits = {t.name: t for t in proto.graph.initializer}
    kernels = kernel_weights(proto, info)
    seen = set()
    for name, layer in quant_layers(model).items():
        record = info.layers[name]
        tensor = inits[record.initializer]
        trained = layer.weight_quantizer.integers(layer.weight).numpy().reshape(len(layer.weight), -1)
        stored = numpy_helper.to_array(tensor).astype(np.int64)  # onnx's own unpacking
        if record.weight_storage in ("int2", "int4"):
            seen.add(record.weight_storage)
            bits = 2 if record.weight_storage == "int2" else 4
            assert tensor.data_type == (TensorProto.INT2 if bits == 2 else TensorProto.INT4)
            assert len(tensor.raw_data) == -(-stored.size * bits // 8)  # packed: 8 / bits values per byte
            assert record.w_bits == 2 if bits == 2 else record.w_bits in (3, 4)
            # each output channel holds the trained integers, or their negation where a folded BatchNorm's
            # gain is negative
            rows = stored.reshape(len(stored), -1)
            assert all(np.array_equal(r, t) or (record.bn_folded and np.array_equal(r, -t))
                       for r, t in zip(rows, trained)), name
            assert np.array_equal(kernels[name], stored * record.int_factor), name
        else:
            assert record.w_bits > 4 and tensor.data_type in (TensorProto.INT8, TensorProto.UINT8)
    assert seen == {"int2", "int4"}


def test_dorefa_odd_grids_pack_one_type_smaller():
    assert qdq.packed_type(-3, 3, odd_levels=True).name == "int2"  # 2-bit DoReFa: -3, -1, 1, 3
    assert qdq.packed_type(-15, 15, odd_levels=True).name == "int4"
    assert qdq.packed_type(-7, 7).name == "int4" and qdq.packed_type(-1, 1).name == "int2"
    assert qdq.packed_type(-15, 15) is None and qdq.packed_type(-31, 31, odd_levels=True) is None


@pytest.mark.parametrize("config, storage, opset", [("2", "int2", 25), ("4", "int4", 21), ("8", None, 19)])
def test_the_opset_follows_the_narrowest_type(config, storage, opset):
    model, _ = random_cifar("lsq")
    configure_bits(model, config)
    proto, info = export_onnx(model, (3, 32, 32))
    assert proto.opset_import[0].version == opset == info.opset
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import))
    assert (storage in _storages(info)) if storage else _storages(info) <= {"int8", "uint8"}
    plain, _ = export_onnx(model, (3, 32, 32), weights="int8")
    assert plain.opset_import[0].version == 19 and plain.ir_version == 9


def test_trt_profile_keeps_int8_weights():
    model, _ = random_cifar("lsq")
    configure_bits(model, "2")
    proto, info = export_onnx(model, (3, 32, 32), profile="trt")
    assert _storages(info) == {"int8"} and info.opset == 19
    assert not any(t.data_type in (TensorProto.INT2, TensorProto.INT4) for t in proto.graph.initializer)


@pytest.mark.slow
def test_cli_weights_option(tmp_path, search_run):
    runner = CliRunner()
    out = tmp_path / "int8.onnx"
    result = runner.invoke(app, ["export", str(search_run), "--weights", "int8", "--out", str(out), "--samples", "64"])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["proqha.weights"] == "int8" and meta["proqha.opset"] == "19"
    assert int(meta["proqha.file_bytes"]) == out.stat().st_size
    bad = runner.invoke(app, ["export", str(search_run), "--weights", "int3", "--out", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 2 and "--weights must be one of packed, int8" in bad.output
    assert not (tmp_path / "x.onnx").exists()
