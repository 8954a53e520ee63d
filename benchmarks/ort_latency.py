"""onnxruntime CPU latency and exactness of proqha's QDQ graph forms against the same model's fp32 ONNX
and onnxruntime's own quantize_static, all in one run, as ratios.

    python benchmarks/ort_latency.py [--arch resnet18] [--batches 1 8] [--threads 2]

The model is torchvision ResNet-18 (random init, BN statistics and quantizer ranges calibrated on random
images), 224x224. Graphs:
  proqha portable w8a8   the default export at uniform 8 bit: exact on every CPU (uint8 weights, U8U8
                         kernels, where int8 pair sums could pass int16)
  proqha vnni w8a8       int8 weights everywhere (the form before the int16 rule; --int8-kernels vnni):
                         exact only where int8 kernels sum in int32 (VNNI, AMX, ARM64)
  proqha portable w7a8   searchable layers at 7-bit weights: int8 pair sums fit int16, U8S8 kernels
  ort quantize_static    after quant_pre_process, U8S8, per-channel weights, calibrated on the same images;
                         and its reduce_range=True variant (7-bit weights, what onnxruntime recommends
                         for CPUs without VNNI)
Exactness: each int8 graph's static int16 pair-sum verdict (the same on every CPU), and on this CPU the
onnxruntime output against the exact integer computation (PyTorch eval for proqha, onnx.reference for
quantize_static), in output quantization steps or as top-1 agreement with its float graph.
Goals (exit 1 on a miss): the portable graphs pass the int16 bound and match PyTorch within 2 steps on
this CPU; proqha portable w7a8 <= 1.05x quantize_static (same U8S8 kernels); on a CPU whose int8 sums
are int32, proqha portable w8a8 <= 1.05x quantize_static too (onnxruntime routes U8U8 to U8S8 there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from proqha.export.onnx_export import export_onnx
from proqha.export.pair_sums import check_pair_sums, cpu_int8_path
from proqha.export.ort_session import ort_session
from proqha.export.validate import ort_kernels
from proqha.models import create_model, get_model_spec
from proqha.quant import QuantConfig, quantize_model, searchable_layers, set_uniform_bits


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


def ort_quantize_static(fp32_path: Path, out: Path, calib: np.ndarray, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i: i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def calibrated(arch: str, calib: torch.Tensor, classes: int | None = None) -> torch.nn.Module:
    """The 8-bit quantized twin of a random-weight model, its BatchNorm statistics and quantizer ranges set
    from ``calib`` (four images at a time), in eval mode."""
    model = quantize_model(create_model(arch, num_classes=classes), QuantConfig(bits=8))
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 4):
            model(calib[i: i + 4])
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    size = get_model_spec(args.arch).input_size
    calib = torch.randn(16, *size)
    model = calibrated(args.arch, calib)
    check_x = torch.randn(4, *size)
    cpu = cpu_int8_path()
    misses: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graphs: dict[str, bytes] = {}
        exact_ok: dict[str, str] = {}
        fp32, _ = export_onnx(model, size, quantized=False)
        graphs["fp32"] = fp32.SerializeToString()
        (tmp / "fp32.onnx").write_bytes(graphs["fp32"])
        fp32_out = ort_session(graphs["fp32"]).run(None, {"input": check_x.numpy()})[0]
        for label, w_bits, kernels in (("proqha portable w8a8", 8, "portable"), ("proqha vnni w8a8", 8, "vnni"),
                                       ("proqha portable w7a8", 7, "portable")):
            for layer in searchable_layers(model).values():
                layer.set_bits(w=w_bits, a=8)
            proto, info = export_onnx(model, size, int8_kernels=kernels)
            graphs[label] = proto.SerializeToString()
            over = len(check_pair_sums(proto))
            with torch.no_grad():
                ref = model(check_x).numpy()
            out = ort_session(graphs[label]).run(None, {"input": check_x.numpy()})[0]
            steps = float(np.abs(out - ref).max() / info.output_scale)
            exact_ok[label] = f"{over:2d} layers over int16; vs PyTorch max {steps:6.1f} steps"
            if kernels == "portable" and (over or steps > 2):
                misses.append(f"{label}: not exact ({exact_ok[label]})")
        set_uniform_bits(model, 8)
        from onnx.reference import ReferenceEvaluator

        for label, reduce in (("ort quantize_static", False), ("ort qs reduce_range", True)):
            path = tmp / f"qs-{int(reduce)}.onnx"
            ort_quantize_static(tmp / "fp32.onnx", path, calib.numpy(), reduce)
            graphs[label] = path.read_bytes()
            proto = onnx.load(path)
            over = len(check_pair_sums(proto))
            x1 = check_x[:1].numpy()
            ref = ReferenceEvaluator(proto).run(None, {"input": x1})[0]
            out = ort_session(graphs[label]).run(None, {"input": check_x.numpy()})[0]
            rel = float(np.abs(out[:1] - ref).max() / (np.abs(ref).max() + 1e-12))
            agree = 100 * float((out.argmax(1) == fp32_out.argmax(1)).mean())
            exact_ok[label] = (f"{over:2d} layers over int16; vs onnx.reference max {100 * rel:5.1f}% of |logit|; "
                               f"top-1 vs its fp32 {agree:.0f}%")
        kernels = ort_kernels(graphs["proqha portable w8a8"])
        sessions = {name: ort_session(data, threads=args.threads, spin=False) for name, data in graphs.items()}
        print(f"{args.arch} {size[1]}x{size[2]}, onnxruntime CPU, {args.threads} threads, median of {args.iters} "
              f"interleaved runs")
        print(f"this CPU: {cpu.description}")
        print(f"proqha portable graph in onnxruntime: {kernels.integer_layers} int8 conv/linear, "
              f"{kernels.float_layers} float, {kernels.integer_adds} int8 adds, {kernels.float_adds} float adds")
        for name, verdict in exact_ok.items():
            print(f"  exactness  {name:<22} {verdict}")
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
            res = interleaved_ms(sessions, x, args.warmup, args.iters)
            for name, (med, p90) in res.items():
                print(f"  batch {batch:>2}  {name:<22} median {med:8.2f} ms   p90 {p90:8.2f} ms   "
                      f"{med / res['fp32'][0]:.2f}x fp32")
            qs = res["ort quantize_static"][0]
            w8, w7, vnni = (res[k][0] for k in ("proqha portable w8a8", "proqha portable w7a8", "proqha vnni w8a8"))
            print(f"  batch {batch:>2}  portable w8a8 / quantize_static = {w8 / qs:.2f}x   portable w7a8 / "
                  f"quantize_static = {w7 / qs:.2f}x (goal <= 1.05)   portable w8a8 / vnni w8a8 = {w8 / vnni:.2f}x")
            if w7 / qs > 1.05:
                misses.append(f"batch {batch}: portable w7a8 / quantize_static = {w7 / qs:.2f}x > 1.05")
            if cpu.sums == "int32" and w8 / qs > 1.05:
                misses.append(f"batch {batch}: portable w8a8 / quantize_static = {w8 / qs:.2f}x > 1.05 on an int32 CPU")
    for miss in misses:
        print(f"MISS: {miss}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
