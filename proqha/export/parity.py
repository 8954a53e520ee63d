"""Parity of an exported graph with its PyTorch model: the same batches through PyTorch, onnxruntime, the
ONNX reference evaluator and any other runtime (``parity``), and the thresholds an exact export meets
(``check_parity``). Judged on predictions and on logits counted in output quantization steps, never on
bit equality: onnxruntime accumulates in int32 and the reference evaluator in float. A dense prediction
(batch, classes, *spatial: segmentation) is judged per pixel, by the same rules: its argmax over classes at
every position, and every output value in steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch

from proqha.errors import ProqhaError, first_line
from proqha.export.ort_session import ort_session

MIN_AGREEMENT_ORT = 99.5  # % top-1 agreement with PyTorch
MIN_WITHIN_2_STEPS = 99.0  # % of logits within 2 output steps of PyTorch
MIN_AGREEMENT_REFERENCE = 99.9
ENFORCED_RUNTIMES = ("onnxruntime", "onnx.reference")


def per_position(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs as (positions, classes) rows: a classifier's as they are, a dense prediction's (batch, classes,
    *spatial) one row per pixel; its labels per pixel where they have the spatial shape (else -1: none)."""
    if ref.ndim <= 2:
        return ref, out, labels
    rows = lambda a: np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])  # noqa: E731
    dense = labels.reshape(-1) if labels.shape == ref.shape[:1] + ref.shape[2:] else np.full(
        ref.size // ref.shape[1], -1)
    return rows(ref), rows(out), dense


@dataclass
class Parity:
    """Agreement of one runtime with the PyTorch model over ``samples`` test images (pixels, for a dense
    prediction)."""

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
        if out.shape != ref.shape:
            raise ProqhaError(f"{self.runtime}: output shape {out.shape} differs from PyTorch's {ref.shape}")
        ref, out, labels = per_position(ref, out, labels)
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
