"""Median training-step time of the 8-bit quantized ResNet-20 against the same model in float, eager and
under torch.compile, in one run.

    python benchmarks/qat_overhead.py [--arch resnet20] [--batch 128] [--steps 20] [--no-compile] [--ablate] [--glibc-defaults]

The models run in the same process, interleaved step by step (in reversed order every other round), so
machine noise hits all alike: float eager, QAT eager and (unless --no-compile) QAT compiled
(`proqha.compiling.Compiled`, compiled before timing). A model's ratio is the median over rounds of its
step time over the float step of the same round, which cancels the drift of a shared machine better
than a ratio of medians. On a CPU all run with the allocator settings training uses (`proqha.malloc_tuning`; --glibc-defaults
leaves glibc's own). Goals (exit 1 on a miss): QAT eager / float eager <= 1.15, and QAT compiled / float
eager <= 1.0.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from proqha.compiling import Compiled
from proqha.malloc_tuning import reuse_freed_memory
from proqha.models import create_model
from proqha.quant import QuantAdd, QuantConfig, Quantizer, WeightQuantizer, quantize_model

EAGER_GOAL = 1.15
COMPILED_GOAL = 1.0


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              amp: bool = False) -> float:
    """Seconds of one SGD step (forward, backward, update; bf16 autocast with ``amp``), synchronised on CUDA."""
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


ABLATIONS = {  # --ablate: the QAT model with one group of quantizers off (32 bit), to see what each costs
    "qat_no_weight_q": lambda q, in_add: isinstance(q, WeightQuantizer),
    "qat_no_add_q": lambda q, in_add: in_add,
    "qat_no_act_q": lambda q, in_add: not isinstance(q, WeightQuantizer),
    "qat_all_q_off": lambda q, in_add: True,
}


def _ablated(model: torch.nn.Module, off: Callable[[Quantizer, bool], bool]) -> torch.nn.Module:
    """A copy of ``model`` with every quantizer ``off(quantizer, inside_an_add)`` selects at 32 bit."""
    twin = copy.deepcopy(model)
    in_adds = {id(q) for add in twin.modules() if isinstance(add, QuantAdd) for q in add.children()}
    for q in twin.modules():
        if isinstance(q, Quantizer) and off(q, id(q) in in_adds):
            q.bits = 32
    return twin


def measure(arch: str, batch: int, steps: int, warmup: int, weights: str, compile: bool, device: str = "cpu",
            amp: bool = False, reuse_memory: bool = True, ablate: bool = False) -> dict[str, list[float]]:
    """Step seconds, round by round, of float eager, QAT eager, (with ``compile``) QAT compiled, and (with
    ``ablate``) QAT eager with each group of quantizers in ABLATIONS off."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    float_model = create_model(arch).to(device).train()
    quant_model = quantize_model(create_model(arch), QuantConfig(bits=8, weight_quantizer=weights)).to(device).train()
    with torch.no_grad():
        quant_model(x)  # ranges set, as training's calibration does
    models = {"float": float_model, "qat": quant_model}
    if device == "cpu" and reuse_memory:
        reuse_freed_memory()
    if ablate:
        models |= {name: _ablated(quant_model, off) for name, off in ABLATIONS.items()}
    if compile:
        models["qat_compiled"] = Compiled(copy.deepcopy(quant_model))
    runs = {name: (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), []) for name, m in models.items()}
    if compile:
        t0 = time.perf_counter()
        step_time(runs["qat_compiled"][0], runs["qat_compiled"][1], x, y, amp)
        print(f"compiling took {time.perf_counter() - t0:.1f} s")
    for i in range(warmup + steps):
        for name in list(runs)[:: 1 if i % 2 == 0 else -1]:
            model, opt, times = runs[name]
            t = step_time(model, opt, x, y, amp)
            if i >= warmup:
                times.append(t)
    return {name: times for name, (_, _, times) in runs.items()}


def summarize(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per model: the median step seconds, and the median over rounds of its step over float's."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: statistics.median(a / b for a, b in zip(t, times["float"])) for name, t in times.items()}
    return medians, ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--weight-quantizer", default="lsq")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--ablate", action="store_true", help="also time the QAT model with quantizer groups off")
    ap.add_argument("--glibc-defaults", dest="reuse_memory", action="store_false",
                    help="leave glibc's allocator settings as they are")
    args = ap.parse_args()
    med, ratio = summarize(measure(args.arch, args.batch, args.steps, args.warmup, args.weight_quantizer,
                                   args.compile, reuse_memory=args.reuse_memory, ablate=args.ablate))
    print(f"arch={args.arch} batch={args.batch} threads={torch.get_num_threads()} steps={args.steps} "
          f"weights={args.weight_quantizer} reuse_freed_memory={args.reuse_memory and reuse_freed_memory()}")
    for name, seconds in med.items():
        print(f"{name:<16} step median {seconds * 1e3:8.1f} ms  {ratio[name]:5.2f}x float")
    misses = []
    eager = ratio["qat"]
    print(f"QAT eager / float eager     {eager:6.2f}x  (goal <= {EAGER_GOAL})")
    if eager > EAGER_GOAL:
        misses.append(f"QAT eager / float eager = {eager:.2f}x > {EAGER_GOAL}")
    if "qat_compiled" in med:
        compiled = ratio["qat_compiled"]
        print(f"QAT compiled / float eager  {compiled:6.2f}x  (goal <= {COMPILED_GOAL})")
        if compiled > COMPILED_GOAL:
            misses.append(f"QAT compiled / float eager = {compiled:.2f}x > {COMPILED_GOAL}")
    for miss in misses:
        print(f"MISS: {miss}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
