"""Validation of an exported graph: ONNX rules, weight ranges, which layers onnxruntime runs in int8, and
parity against the PyTorch model on real test images (onnxruntime and the ONNX reference evaluator).

Parity is judged on predictions and on logits counted in output quantization steps, never on bit
equality: onnxruntime accumulates in int32 and the reference evaluator in float.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch

from proqha.errors import ProqhaError, first_line
from proqha.export.graph_builder import constant_integers
from proqha.export.onnx_export import EXACT_ON, ExportInfo
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import CpuInt8Path, PairSumBound, check_pair_sums, cpu_int8_path, pair_sum_bounds

INTEGER_LAYER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
FLOAT_LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
MIN_AGREEMENT_ORT = 99.5  # % top-1 agreement with PyTorch
MIN_WITHIN_2_STEPS = 99.0  # % of logits within 2 output steps of PyTorch
MIN_AGREEMENT_REFERENCE = 99.9


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


def check_kernels(counts: KernelCounts, info: ExportInfo) -> list[str]:
    """Every quantized conv/linear and residual add must run as an onnxruntime integer kernel."""
    failures = []
    expected_float = info.all_layers - info.integer_layers
    float_layers = sum(1 for n in counts.float_layer_names if _layer_of(n, info.layers) is not None)
    if counts.integer_layers != info.integer_layers or float_layers != expected_float:
        failures.append(f"onnxruntime runs {counts.integer_layers} of {info.integer_layers} quantized "
                        f"conv/linear/matmul layers in int8 ({float_layers} float kernels, {expected_float} expected)")
    if counts.integer_adds != info.quant_adds:
        failures.append(f"onnxruntime runs {counts.integer_adds} of {info.quant_adds} quantized adds in int8")
    return failures


ENFORCED_RUNTIMES = ("onnxruntime", "onnx.reference")


@dataclass
class Parity:
    """Agreement of one runtime with the PyTorch model over ``samples`` test images."""

    runtime: str
    samples: int = 0
    agreement: float = 0.0
    agreement_ties: float = 0.0
    torch_top1: float = 0.0
    runtime_top1: float = 0.0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    max_steps: float | None = None
    mean_steps: float | None = None
    within_2_steps: float | None = None
    _agree: int = field(default=0, repr=False)
    _agree_ties: int = field(default=0, repr=False)
    _torch_ok: int = field(default=0, repr=False)
    _rt_ok: int = field(default=0, repr=False)
    _sum: float = field(default=0.0, repr=False)
    _within: int = field(default=0, repr=False)
    _elements: int = field(default=0, repr=False)

    def update(self, ref: np.ndarray, out: np.ndarray, labels: np.ndarray, step: float | None) -> None:
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        self.samples += len(labels)
        self._agree += int((out.argmax(1) == ref.argmax(1)).sum())
        # a runtime pick whose PyTorch logit is within one output step of PyTorch's best is a tie at the
        # deployed precision (quantized logits that differ by one step, which parity allows)
        picked = ref[np.arange(len(ref)), out.argmax(1)]
        tol = (step or 0.0) * (1 + 1e-6)
        self._agree_ties += int((picked >= ref.max(1) - tol).sum())
        self._torch_ok += int((ref.argmax(1) == labels).sum())
        self._rt_ok += int((out.argmax(1) == labels).sum())
        self._sum += float(diff.sum())
        self._elements += diff.size
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        if step:
            self._within += int((diff / step <= 2 + 1e-6).sum())
        n = max(self.samples, 1)
        self.agreement, self.torch_top1, self.runtime_top1 = (100 * self._agree / n, 100 * self._torch_ok / n,
                                                              100 * self._rt_ok / n)
        self.agreement_ties = 100 * self._agree_ties / n
        self.mean_abs_diff = self._sum / max(self._elements, 1)
        if step:
            self.max_steps, self.mean_steps = self.max_abs_diff / step, self.mean_abs_diff / step
            self.within_2_steps = 100 * self._within / max(self._elements, 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def parity(model: torch.nn.Module, model_bytes: bytes, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
           output_step: float | None, reference: bool = True, others: dict[str, Callable[[np.ndarray], np.ndarray]]
           | None = None) -> list[Parity]:
    """Stream ``batches`` through PyTorch, onnxruntime, (optionally) the ONNX reference evaluator, and the
    ``others`` runtimes (name: run function, e.g. OpenVINO's), measured and reported, not enforced."""
    session = ort_session(model_bytes)
    evaluator = None
    if reference:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load_from_string(model_bytes))
    others = others or {}
    results = [Parity("onnxruntime")] + ([Parity("onnx.reference")] if reference else [])
    extra = {name: Parity(name) for name in others}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            ref = model(x.to(device)).float().cpu().numpy()
            feed = {"input": x.cpu().numpy().astype(np.float32)}
            labels = y.cpu().numpy()
            try:
                out = session.run(None, feed)[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types
                if "onnxruntime" not in type(exc).__module__:
                    raise
                raise ProqhaError(f"onnxruntime cannot run the parity data (input {tuple(x.shape)}): "
                                  f"{first_line(exc)}") from None
            results[0].update(ref, out, labels, output_step)
            if evaluator is not None:
                results[1].update(ref, evaluator.run(None, feed)[0], labels, output_step)
            for name, run in others.items():
                extra[name].update(ref, run(feed["input"]), labels, output_step)
    return results + list(extra.values())


def check_parity(results: list[Parity], has_steps: bool) -> list[str]:
    """The thresholds a deploy-exact export must meet (onnxruntime and the reference evaluator; other
    runtimes are reported only)."""
    failures = []
    for r in results:
        if r.runtime not in ENFORCED_RUNTIMES:
            continue
        need = MIN_AGREEMENT_ORT if r.runtime == "onnxruntime" else MIN_AGREEMENT_REFERENCE
        agreement = r.agreement_ties if has_steps else r.agreement
        if agreement < need:
            failures.append(f"{r.runtime}: top-1 agreement with PyTorch {agreement:.2f}% < {need}% "
                            "(ties within one output step count as agreement)" if has_steps else
                            f"{r.runtime}: top-1 agreement with PyTorch {agreement:.2f}% < {need}%")
        if r.runtime == "onnxruntime" and has_steps and (r.within_2_steps or 0) < MIN_WITHIN_2_STEPS:
            failures.append(f"{r.runtime}: {r.within_2_steps:.2f}% of logits within 2 output steps < "
                            f"{MIN_WITHIN_2_STEPS}%")
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
                "int8_kernels": self.int8_kernels, "exact_on": EXACT_ON[self.int8_kernels],
                "openvino_layers": None if self.openvino_layers is None else
                dict(zip(("int8", "float"), self.openvino_layers)),
                "cpu_int8_path": asdict(self.cpu),
                "pair_sums": [asdict(b) | {"fits_int16": b.fits} for b in self.pair_sums],
                "parity": [p.to_dict() for p in self.parity],
                "thresholds": {"min_agreement_onnxruntime": MIN_AGREEMENT_ORT,
                               "min_within_2_steps": MIN_WITHIN_2_STEPS,
                               "min_agreement_reference": MIN_AGREEMENT_REFERENCE}}


def validate_export(proto: onnx.ModelProto, info: ExportInfo, model: torch.nn.Module,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], reference: bool = True
                    ) -> ValidationReport:
    """All checks of an export. Kernel, int16 pair-sum and parity rules apply to the exact (ort-profile,
    quantized) graph; for the trt profile and the float graph they are measured and reported, not
    enforced. The pair-sum rule is a bound on the graph's integers, so it holds whatever CPU runs it;
    a ``vnni`` graph is exempt from it (it claims exactness only where int8 sums are int32)."""
    model_bytes = proto.SerializeToString()
    failures = check_graph(proto) + check_weight_ranges(proto, info)
    enforce = info.quantized and info.profile == "ort"
    cpu = cpu_int8_path()
    if enforce and info.int8_kernels == "portable":
        failures += check_pair_sums(proto)
    kernels = ort_kernels(model_bytes)
    if enforce:
        failures += check_kernels(kernels, info)
    results = parity(model, model_bytes, batches, info.output_scale, reference)
    if enforce:
        parity_failures = check_parity(results, info.output_scale is not None)
        if parity_failures and info.int8_kernels == "vnni" and cpu.sums == "int16":
            parity_failures.append(f"this CPU ({cpu.description}) cannot run a --int8-kernels vnni graph exactly; "
                                   "validate it on a VNNI machine, or export the portable default")
        failures += parity_failures
    return ValidationReport(failures, kernels, results, sum(1 for v in info.layers.values() if v.initializer),
                            pair_sum_bounds(proto) if info.quantized else [], cpu, info.int8_kernels)
