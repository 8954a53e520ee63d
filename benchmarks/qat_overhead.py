"""Median training-step time of the 8-bit quantized ResNet-20 over the same model in float.

    python benchmarks/qat_overhead.py [--arch resnet20] [--batch 128] [--steps 20]

Both models run in the same process, interleaved step by step, so machine noise hits both alike.
Goal: ratio <= 1.3 (above 1.5 is a defect).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from proqha.models import create_model
from proqha.quant import QuantConfig, quantize_model


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weight-quantizer", default="lsq")
    args = ap.parse_args()
    torch.manual_seed(0)
    float_model = create_model(args.arch).train()
    quant_model = quantize_model(float_model, QuantConfig(bits=8, weight_quantizer=args.weight_quantizer)).train()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    runs = {}
    for name, model in (("float", float_model), ("quant8", quant_model)):
        runs[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), [])
    for i in range(args.warmup + args.steps):
        for name, (model, opt, times) in runs.items():
            t = step_time(model, opt, x, y)
            if i >= args.warmup:
                times.append(t)
    med = {name: statistics.median(times) for name, (_, _, times) in runs.items()}
    print(f"arch={args.arch} batch={args.batch} threads={torch.get_num_threads()} steps={args.steps} "
          f"weights={args.weight_quantizer}")
    print(f"float step median   {med['float'] * 1e3:8.1f} ms")
    print(f"quant8 step median  {med['quant8'] * 1e3:8.1f} ms")
    print(f"ratio quant8/float  {med['quant8'] / med['float']:8.2f}x  (goal <= 1.3, defect > 1.5)")


if __name__ == "__main__":
    main()
