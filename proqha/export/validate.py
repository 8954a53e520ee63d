"""Validation of an exported graph by the rules of its profile (``qdq.Rules``): ONNX rules, weight ranges,
which layers onnxruntime runs in int8, int16 pair sums, and parity with the PyTorch model (``parity``).
``validate_export`` checks a graph as it is written (its ``ExportInfo``); ``validate_file`` re-checks a
written file by the rules its metadata says it was written under.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch

from proqha.export import qdq
from proqha.export.export_info import ExportInfo
from proqha.export.graph_builder import constant_integers
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import CpuInt8Path, PairSumBound, check_pair_sums, cpu_int8_path, pair_sum_bounds
from proqha.export.parity import (
    ENFORCED_RUNTIMES,
    MIN_AGREEMENT_ORT,
    MIN_AGREEMENT_REFERENCE,
    MIN_WITHIN_2_STEPS,
    Parity,
    check_parity,
    parity,
)

__all__ = ["ENFORCED_RUNTIMES", "KernelCounts", "Parity", "ValidationReport", "check_graph", "check_kernels",
           "check_parity", "check_weight_ranges", "file_metadata", "kernel_weights", "ort_kernels", "parity",
           "rule_failures", "validate_export", "validate_file"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

INTEGER_LAYER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
FLOAT_LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


def check_graph(proto: onnx.ModelProto) -> list[str]:
    """onnx.checker (full check) and strict shape inference; one message per failure."""
    failures = []
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        failures.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        failures.append(f"shape inference: {str(exc).splitlines()[0]}")
    return failures


def kernel_weights(proto: onnx.ModelProto, info: ExportInfo) -> dict[str, np.ndarray]:
    """Per quantized conv/linear, the integers its int8 kernel multiplies by (its weight DequantizeLinear's
    input, packed weights widened as onnxruntime folds them), before the zero point is taken off."""
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {out: n for n in proto.graph.node for out in n.output}
    found = {}
    for name, layer in info.layers.items():
        dq = producers.get(layer.dequantized or "")
        values = None if dq is None else constant_integers(dq.input[0], producers, inits)
        if values is not None:
            found[name] = values
    return found


def check_weight_ranges(proto: onnx.ModelProto, info: ExportInfo) -> list[str]:
    """Every weight initializer holds (k times) integers inside its layer's declared range (after its
    zero point: 128 for uint8 weights), read as its kernel sees them (packed ones widened)."""
    kernels = kernel_weights(proto, info)
    failures = []
    for name, layer in info.layers.items():
        if layer.initializer is None:
            continue
        if name not in kernels:
            failures.append(f"{name}: its weight integers cannot be read from the graph")
            continue
        values = kernels[name].astype(np.int64) - layer.weight_zero_point
        k = layer.int_factor
        ints = values // k
        if np.any(values % k) or ints.min() < layer.qmin or ints.max() > layer.qmax:
            failures.append(f"{name}: weights outside the {layer.w_bits}-bit grid [{layer.qmin}, {layer.qmax}] "
                            f"(x{k})")
        elif layer.odd_levels and np.any(ints % 2 == 0):
            failures.append(f"{name}: DoReFa weights must be odd integers")
    return failures


@dataclass
class KernelCounts:
    """What onnxruntime's optimized graph runs: integer and float layer kernels, integer and float adds,
    and the names of the float layer kernels (a standalone BatchNorm may become one)."""

    ops: dict[str, int]
    integer_layers: int
    float_layers: int
    integer_adds: int
    float_adds: int
    float_layer_names: list[str] = field(default_factory=list)


def ort_kernels(model_bytes: bytes) -> KernelCounts:
    """Count the kernels in the graph onnxruntime actually runs (``optimized_model_filepath``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        ort_session(model_bytes, path)
        nodes = onnx.load(path).graph.node
    ops = Counter(n.op_type for n in nodes)
    return KernelCounts(dict(sorted(ops.items())), sum(ops[o] for o in INTEGER_LAYER_OPS),
                        sum(ops[o] for o in FLOAT_LAYER_OPS), ops["QLinearAdd"], ops["Add"] + ops["Sum"],
                        [n.name for n in nodes if n.op_type in FLOAT_LAYER_OPS])


def _layer_of(kernel: str, layers: Iterable[str]) -> str | None:
    """The exported conv/linear an optimized-graph kernel comes from (onnxruntime keeps the node name,
    adding suffixes such as ``_nchwc`` when it rewrites it), or None for other float work."""
    return next((name for name in layers if kernel == name or kernel.startswith((name + "_", name + "."))), None)


PASS_THROUGH = ("Relu", "Clip", "Identity")  # ops between a layer and the quantizer of its output that fuse away


def feeding_float_layers(proto: onnx.ModelProto, info: ExportInfo) -> set[str]:
    """The quantized layers whose output goes straight (through ``PASS_THROUGH`` ops only) into a float layer
    (one left in float, its input not quantized): with no QuantizeLinear after them onnxruntime cannot fuse
    them into an integer kernel, and they run in float on the same integers (exact up to float rounding)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    float_layers = {name for name, layer in info.layers.items() if layer.a_bits == 32}
    found = set()
    for node in proto.graph.node:
        layer = info.layers.get(node.name)
        if layer is None or not layer.initializer or layer.a_bits == 32:
            continue
        nxt = consumers.get(node.output[0], [])
        while len(nxt) == 1 and nxt[0].op_type in PASS_THROUGH:
            nxt = consumers.get(nxt[0].output[0], [])
        if nxt and all(n.name in float_layers for n in nxt):
            found.add(node.name)
    return found


def check_kernels(counts: KernelCounts, info: ExportInfo, feeding_float: set[str] | None = None) -> list[str]:
    """Every quantized conv/linear and residual add must run as an onnxruntime integer kernel, except the
    layers ``feeding_float`` (``feeding_float_layers``), which run in float beside the float layers."""
    failures = []
    unfused = len(feeding_float or ())
    integer = info.integer_layers - unfused
    expected_float = info.all_layers - integer
    float_layers = sum(1 for n in counts.float_layer_names if _layer_of(n, info.layers) is not None)
    if counts.integer_layers != integer or float_layers != expected_float:
        beside = f"; {unfused} beside float layers" if unfused else ""
        failures.append(f"onnxruntime runs {counts.integer_layers} conv/linear/matmul layers as int8 kernels and "
                        f"{float_layers} in float, where the graph quantizes {integer} and leaves {expected_float} "
                        f"in float{beside}")
    if counts.integer_adds != info.quant_adds:
        failures.append(f"onnxruntime runs {counts.integer_adds} of {info.quant_adds} quantized adds in int8")
    return failures


@dataclass
class ValidationReport:
    """Everything validation found; ``failures`` empty means the export is valid."""

    failures: list[str]
    kernels: KernelCounts | None
    parity: list[Parity]
    weights_checked: int
    pair_sums: list[PairSumBound] = field(default_factory=list)
    cpu: CpuInt8Path = field(default_factory=cpu_int8_path)
    int8_kernels: str = "portable"
    openvino_layers: tuple[int, int] | None = None  # (int8, float) conv/linear layers OpenVINO runs, where it ran

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failures": self.failures, "weights_checked": self.weights_checked,
                "kernels": asdict(self.kernels) if self.kernels else None,
                "int8_kernels": self.int8_kernels, "exact_on": qdq.EXACT_ON[self.int8_kernels],
                "openvino_layers": None if self.openvino_layers is None else
                dict(zip(("int8", "float"), self.openvino_layers)),
                "cpu_int8_path": asdict(self.cpu),
                "pair_sums": [asdict(b) | {"fits_int16": b.fits} for b in self.pair_sums],
                "parity": [p.to_dict() for p in self.parity],
                "thresholds": {"min_agreement_onnxruntime": MIN_AGREEMENT_ORT,
                               "min_within_2_steps": MIN_WITHIN_2_STEPS,
                               "min_agreement_reference": MIN_AGREEMENT_REFERENCE}}


def rule_failures(rules: qdq.Rules, proto: onnx.ModelProto, results: list[Parity], has_steps: bool,
                  int8_kernels: str, kernel_failures: list[str] | None = None) -> list[str]:
    """What a graph breaks of its ``rules`` (TensorRT's graph rules aside): int16 pair sums, then
    ``kernel_failures`` (the int8 kernel count, where the writer's record is at hand), then parity."""
    failures = check_pair_sums(proto) if rules.pair_sums else []
    if not rules.exact:
        return failures
    failures += kernel_failures or []
    parity_failures = check_parity(results, has_steps)
    cpu = cpu_int8_path()
    if parity_failures and int8_kernels == "vnni" and cpu.sums == "int16":
        parity_failures.append(f"this CPU ({cpu.description}) cannot run an int8_kernels='vnni' graph exactly; "
                               "validate it on a VNNI machine, or export the portable default")
    return failures + parity_failures


def validate_export(proto: onnx.ModelProto, info: ExportInfo, model: torch.nn.Module, batches: Batches,
                    reference: bool = True) -> ValidationReport:
    """All checks of a graph as written (``info``), by its profile's rules (``info.rules``): the checker and
    weight ranges always; kernels, int16 pair sums and parity where the profile enforces them (the exact
    ort-profile quantized graph), else measured and reported. The pair-sum rule is a bound on the graph's
    integers, so it holds whatever CPU runs it; a ``vnni`` graph is exempt from it (it claims exactness only
    where int8 sums are int32)."""
    model_bytes = proto.SerializeToString()
    rules = info.rules
    failures = check_graph(proto) + check_weight_ranges(proto, info)
    cpu = cpu_int8_path()
    kernels = ort_kernels(model_bytes)
    stream = iter(batches)
    first = next(stream, None)
    results = parity(model, model_bytes, [] if first is None else itertools.chain([first], stream),
                     info.output_scale, reference)
    failures += rule_failures(rules, proto, results, info.output_scale is not None, info.int8_kernels,
                              check_kernels(kernels, info, feeding_float_layers(proto, info)))
    if info.other_size is not None and first is not None:
        other, other_failures = parity_at(info.other_size, model, model_bytes, first, info.output_scale)
        results.append(other)
        failures += other_failures if rules.exact else []
    return ValidationReport(failures, kernels, results, sum(1 for v in info.layers.values() if v.initializer),
                            pair_sum_bounds(proto) if info.quantized else [], cpu, info.int8_kernels)


OTHER_SIZE_IMAGES = 16  # a dynamic-size graph's images at its second size (each has 6 times the pixels)


def parity_at(size: tuple[int, ...], model: torch.nn.Module, model_bytes: bytes, batch: tuple[torch.Tensor, Any],
              output_step: float | None) -> tuple[Parity, list[str]]:
    """A dynamic-size graph's parity at a second input ``size``: the batch's first ``OTHER_SIZE_IMAGES``
    images resized to it (linear), run by PyTorch and onnxruntime, judged by the same rules (per pixel for a
    dense output: labels at the traced size are not counted); the result, named "onnxruntime at CxHxW",
    and its failures so named."""
    x, y = batch[0][:OTHER_SIZE_IMAGES], batch[1][:OTHER_SIZE_IMAGES]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size) - 1]
    resized = torch.nn.functional.interpolate(x.float(), size=tuple(size[1:]), mode=mode, align_corners=False)
    labels = y if y.dim() == 1 else torch.full((len(x),), -1)
    result = parity(model, model_bytes, [(resized, labels)], output_step, reference=False)[0]
    name = "onnxruntime at " + "x".join(map(str, size))
    failures = [f"{name}: " + f.split(": ", 1)[1] for f in check_parity([result], output_step is not None)]
    result.runtime = name
    return result, failures


def file_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """A model's metadata_props as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def validate_file(model_bytes: bytes, model: torch.nn.Module, batches: Batches, reference: bool = True,
                  others: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                  openvino_layers: tuple[int, int] | None = None) -> ValidationReport:
    """Re-check a written file against ``model`` (the one it was exported from, or its float twin for an
    ``onnx-fp32`` file) by the rules its metadata says it was written under (``qdq.file_rules``): TensorRT's
    graph rules, int16 pair sums and parity as its profile enforces them; ``others``' parity (name: run
    function, e.g. OpenVINO's, whose int8 and float layer counts are ``openvino_layers``) is reported."""
    proto = onnx.load_from_string(model_bytes)
    meta = file_metadata(proto)
    rules, int8_kernels = qdq.file_rules(meta)
    step = float(meta["proqha.output_scale"]) if meta.get("proqha.output_scale") else None
    results = parity(model, model_bytes, batches, step, reference, others)
    failures = []
    if rules.trt_graph:
        from proqha.deploy.trt_check import check_trt_graph

        failures += check_trt_graph(proto)
    failures += rule_failures(rules, proto, results, step is not None, int8_kernels)
    return ValidationReport(failures, ort_kernels(model_bytes), results, 0, pair_sum_bounds(proto),
                            int8_kernels=int8_kernels, openvino_layers=openvino_layers)
