"""onnxruntime CPU latency of a proqha QDQ export against the same model's fp32 ONNX and against
onnxruntime's own quantize_static QDQ of that fp32 graph, all in one run, as ratios.

    python benchmarks/ort_latency.py [--arch resnet18] [--bits 8] [--batches 1 8] [--threads 2]

The model is torchvision ResNet-18 (random init, BN statistics and quantizer ranges calibrated on
random images), 224x224. quantize_static runs after quant_pre_process (without it its QDQ model is
slower than fp32 here), U8S8, per-channel weights, calibrated on the same images.
Goals: proqha int8 <= 0.5x fp32; proqha <= 1.05x quantize_static.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from proqha.export.onnx_export import export_onnx
from proqha.export.validate import ort_kernels, ort_session
from proqha.models import create_model, get_model_spec
from proqha.quant import QuantConfig, quantize_model, set_uniform_bits


def interleaved_ms(sessions: dict, x: np.ndarray, warmup: int, iters: int) -> dict[str, tuple[float, float]]:
    """Median and p90 latency per session, running them in turn so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(warmup + iters):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"input": x})
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: (1e3 * statistics.median(t), 1e3 * statistics.quantiles(t, n=10)[-1]) for name, t in times.items()}


def ort_quantize_static(fp32_path: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i: i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    size = get_model_spec(args.arch).input_size
    calib = torch.randn(16, *size)
    model = quantize_model(create_model(args.arch), QuantConfig(bits=8))
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 4):
            model(calib[i: i + 4])
    set_uniform_bits(model, args.bits)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"proqha int8": tmp / "proqha.onnx", "fp32": tmp / "fp32.onnx", "ort quantize_static": tmp / "ort.onnx"}
        proto, info = export_onnx(model, size)
        onnx.save(proto, paths["proqha int8"])
        fp32, _ = export_onnx(model, size, quantized=False)
        onnx.save(fp32, paths["fp32"])
        ort_quantize_static(paths["fp32"], paths["ort quantize_static"], calib.numpy())
        kernels = ort_kernels(paths["proqha int8"].read_bytes())
        sessions = {name: ort_session(p.read_bytes(), threads=args.threads, spin=False) for name, p in paths.items()}
        print(f"{args.arch} {size[1]}x{size[2]}, proqha at {args.bits} bit, onnxruntime CPU, {args.threads} threads, "
              f"median of {args.iters} interleaved runs")
        print(f"proqha graph in onnxruntime: {kernels.integer_layers} int8 conv/linear, {kernels.float_layers} float, "
              f"{kernels.integer_adds} int8 adds, {kernels.float_adds} float adds")
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
            res = interleaved_ms(sessions, x, args.warmup, args.iters)
            for name, (med, p90) in res.items():
                print(f"  batch {batch:>2}  {name:<20} median {med:8.2f} ms   p90 {p90:8.2f} ms")
            q, f, o = res["proqha int8"][0], res["fp32"][0], res["ort quantize_static"][0]
            print(f"  batch {batch:>2}  proqha/fp32 = {q / f:.2f}x (goal <= 0.5)   "
                  f"proqha/quantize_static = {q / o:.2f}x (goal <= 1.05)")


if __name__ == "__main__":
    main()
