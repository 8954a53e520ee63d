"""onnxruntime CPU latency and exactness of proqha's default int8 graph against the same model's fp32 graph
and onnxruntime's own quantize_static, in one run, as ratios, on three model families.

    python benchmarks/ort_latency.py [--arch resnet18 mobilenet_v2 resnet50] [--batches 1 8] [--threads 2]

Each model is torchvision's (random init; BN statistics and quantizer ranges calibrated on random images),
224x224, quantized as ``proqha.quantize(net, x, bits=8)`` does (the portable default). Graphs:
  fp32                   the float graph
  proqha default         ``proqha.export_onnx`` at uniform 8 bit: 8-bit weights on full-range inputs are
                         trained on ±64 levels, so every layer is uint8 x int8 (U8S8) within the int16 pair
                         bound: exact on every CPU
  ort quantize_static    after quant_pre_process, U8S8, per-channel weights, calibrated on the same images
and for the first model also:
  proqha full grid       the same model on the full 8-bit grid (``int8_kernels="vnni"``) exported portable:
                         uint8 weights (U8U8 kernels) where int8 pair sums could pass int16, the form
                         before the portable grid
  proqha mixed           searched-like bits (every other searchable layer at w4a4, the rest at 8 bit):
                         sub-8-bit activations add integer clamps
  ort qs reduce_range    quantize_static with 7-bit weights, what onnxruntime advises without VNNI
Exactness: each int8 graph's static int16 pair-sum verdict (the same on every CPU); for proqha's graphs
onnxruntime against PyTorch's integer computation in output steps (max, and the share within 2 steps);
for quantize_static its top-1 agreement with its own fp32 graph.
Goals (exit 1 on a miss): proqha's graphs pass the int16 bound, and its uniform 8-bit graphs put >= 99% of
logits within 2 steps of PyTorch (at 4 bit, one-step ties of random weights cascade, so the mixed graph's
figure is printed, not a goal); proqha default <= 1.05x quantize_static at every batch, for every model; for the first model
proqha default <= 0.35x fp32 where int8 sums are int32 (VNNI) and <= 0.5x fp32 where they are int16 (AVX2),
and proqha mixed <= 1.05x proqha default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from proqha.deploy.ort_anchor import quantize_static_graph
from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import check_pair_sums, cpu_int8_path
from proqha.export.validate import ort_kernels
from proqha.models import create_model, get_model_spec
from proqha.quant import QuantConfig, quantize_model, searchable_layers

GOAL_VS_ANCHOR = 1.05
GOAL_VS_FP32 = {"int32": 0.35, "int16": 0.5}
GOAL_MIXED = 1.05


def interleaved_ms(sessions: dict, x: np.ndarray, warmup: int, iters: int) -> dict[str, tuple[float, float]]:
    """Median and p90 latency per session, running them in turn so machine noise hits all alike, in an order
    rotated every round so that no session always runs right after the same one."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for i in range(warmup + iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            session = sessions[name]
            t0 = time.perf_counter()
            session.run(None, {"input": x})
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: (1e3 * statistics.median(t), 1e3 * statistics.quantiles(t, n=10)[-1]) for name, t in times.items()}


def calibrated(arch: str, calib: torch.Tensor, classes: int | None = None, int8_kernels: str = "portable"
               ) -> torch.nn.Module:
    """The 8-bit quantized twin of a random-weight model, its BatchNorm statistics and quantizer ranges set
    from ``calib`` (four images at a time), in eval mode."""
    torch.manual_seed(0)
    model = quantize_model(create_model(arch, num_classes=classes), QuantConfig(bits=8, int8_kernels=int8_kernels))
    model.train()
    with torch.no_grad():
        for i in range(0, len(calib), 4):
            model(calib[i: i + 4])
    return model.eval()


def proqha_exactness(model: torch.nn.Module, data: bytes, output_scale: float, x: torch.Tensor) -> tuple[float, float]:
    """onnxruntime against PyTorch's integer computation: max |diff| and % of logits within 2 output steps."""
    with torch.no_grad():
        ref = model(x).numpy()
    steps = np.abs(ort_session(data).run(None, {"input": x.numpy()})[0] - ref) / output_scale
    return float(steps.max()), 100.0 * float((steps <= 2 + 1e-3).mean())


def mixed_bits(model: torch.nn.Module) -> None:
    """Every other searchable layer at w4a4, the others at w8a8."""
    for i, layer in enumerate(searchable_layers(model).values()):
        layer.set_bits(w=4 if i % 2 else 8, a=4 if i % 2 else 8)


def graphs_for(arch: str, first: bool, calib: torch.Tensor, check_x: torch.Tensor, misses: list[str]
               ) -> tuple[dict[str, bytes], list[str]]:
    """Every graph of one model, and a line per graph on its exactness (misses appended)."""
    size = tuple(calib.shape[1:])
    model = calibrated(arch, calib)
    graphs: dict[str, bytes] = {}
    lines: list[str] = []
    fp32, _ = export_onnx(model, size, quantized=False)
    graphs["fp32"] = fp32.SerializeToString()
    fp32_top1 = ort_session(graphs["fp32"]).run(None, {"input": check_x.numpy()})[0].argmax(1)
    variants = [("proqha default", model, None)]
    if first:
        variants += [("proqha full grid", calibrated(arch, calib, int8_kernels="vnni"), None), ("proqha mixed", model, mixed_bits)]
    for label, m, bits in variants:
        if bits is not None:
            bits(m)
        proto, info = export_onnx(m, size)
        graphs[label] = proto.SerializeToString()
        over = len(check_pair_sums(proto))
        worst, within = proqha_exactness(m, graphs[label], info.output_scale, check_x)
        kernels = ort_kernels(graphs[label])
        wide = sum(1 for v in info.layers.values() if v.weight_storage == "uint8")
        lines.append(f"{label:<22} {over:2d} layers over int16, {wide:2d} uint8-weight layers; vs PyTorch max "
                     f"{worst:5.1f} steps, {within:6.2f}% within 2; onnxruntime runs {kernels.integer_layers} int8 "
                     f"and {kernels.float_layers} float conv/linear")
        if bits is not None:  # ties on a 4-bit grid of random weights cascade through the net: not a goal
            lines[-1] += " (random weights at 4 bit: one-step ties cascade; bound only)"
        if over or (within < 99.0 and bits is None):
            misses.append(f"{arch} {label}: not exact ({over} layers over int16, {within:.2f}% within 2 steps)")
    for label, reduce in (("ort quantize_static", False),) + ((("ort qs reduce_range", True),) if first else ()):
        graphs[label] = quantize_static_graph(graphs["fp32"], calib.numpy(), reduce_range=reduce)
        import onnx

        over = len(check_pair_sums(onnx.load_from_string(graphs[label])))
        agree = 100 * float((ort_session(graphs[label]).run(None, {"input": check_x.numpy()})[0].argmax(1)
                             == fp32_top1).mean())
        lines.append(f"{label:<22} {over:2d} layers over int16; top-1 = its fp32 on {agree:.0f}% of the check images")
    return graphs, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["resnet18", "mobilenet_v2", "resnet50"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    cpu = cpu_int8_path()
    print(f"onnxruntime CPU, {args.threads} threads, median of {args.iters} interleaved runs")
    print(f"this CPU: {cpu.description}")
    misses: list[str] = []
    for n, arch in enumerate(args.arch):
        torch.manual_seed(0)
        size = get_model_spec(arch).input_size
        calib, check_x = torch.randn(16, *size), torch.randn(8, *size)
        graphs, lines = graphs_for(arch, n == 0, calib, check_x, misses)
        print(f"\n{arch} {size[1]}x{size[2]}")
        for line in lines:
            print(f"  exactness  {line}")
        sessions = {name: ort_session(data, threads=args.threads, spin=False) for name, data in graphs.items()}
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
            res = interleaved_ms(sessions, x, args.warmup, args.iters)
            qs, fp32 = res["ort quantize_static"][0], res["fp32"][0]
            for name, (med, p90) in res.items():
                print(f"  batch {batch:>2}  {name:<22} median {med:8.2f} ms   p90 {p90:8.2f} ms   "
                      f"{med / fp32:.2f}x fp32   {med / qs:.2f}x quantize_static")
            default = res["proqha default"][0]
            print(f"  batch {batch:>2}  proqha default / quantize_static = {default / qs:.2f}x (goal <= {GOAL_VS_ANCHOR})")
            if default / qs > GOAL_VS_ANCHOR:
                misses.append(f"{arch} batch {batch}: proqha default / quantize_static = {default / qs:.2f}x > "
                              f"{GOAL_VS_ANCHOR}")
            if n == 0:
                goal = GOAL_VS_FP32.get(cpu.sums)
                mixed = res["proqha mixed"][0] / default
                print(f"  batch {batch:>2}  proqha default / fp32 = {default / fp32:.2f}x (goal <= {goal} on this "
                      f"CPU kind)   proqha mixed / proqha default = {mixed:.2f}x (goal <= {GOAL_MIXED})")
                if goal is not None and default / fp32 > goal:
                    misses.append(f"{arch} batch {batch}: proqha default / fp32 = {default / fp32:.2f}x > {goal}")
                if mixed > GOAL_MIXED:
                    misses.append(f"{arch} batch {batch}: proqha mixed / proqha default = {mixed:.2f}x > {GOAL_MIXED}")
        del sessions
    for miss in misses:
        print(f"MISS: {miss}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
