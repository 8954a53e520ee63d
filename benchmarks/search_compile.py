"""A search with --compile against the same search eager, with eager on one thread as the control
(digits, from one trained checkpoint).

    python benchmarks/search_compile.py [--steps 4] [--epochs 3] [--out runs/search-compile-check]

It trains once (``proqha train``), then runs ``proqha search`` three times from that checkpoint: eager,
eager with OMP_NUM_THREADS=1, and with --compile; it compares their ``frontier.csv`` files step by step
with the first. A greedy search amplifies float summation order: once fine-tuning has moved the weights
by rounding noise, two candidates whose scores are within that noise can swap. The one-thread control
shows where eager itself stops agreeing with eager. Exit 1 if the compiled search differs (a knob's bits,
or test top-1 more than --tol points apart) at an earlier step than the control does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from proqha.search.frontier import read_frontier
from proqha.search.knobs import KNOB_SEP


def _run(*args: str, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "proqha", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def differences(base: list[dict], other: list[dict], tol: float) -> list[tuple[int, str]]:
    """(step, what) for each step where ``other``'s frontier differs from ``base``'s: knob bits
    (``layer/kind`` columns) or test top-1 more than ``tol`` points apart."""
    out = []
    for a, b in zip(base, other):
        bits = [k for k in a if KNOB_SEP in k and a[k] != b.get(k)]
        if bits:
            out.append((a["step"], f"bits differ at {', '.join(bits)}"))
        if abs(a["test_top1"] - b["test_top1"]) > tol:
            out.append((a["step"], f"test top-1 {a['test_top1']:.2f} against {b['test_top1']:.2f}"))
    if len(base) != len(other):
        out.append((min(len(base), len(other)), f"{len(base)} steps against {len(other)}"))
    return out


def first_difference(diffs: list[tuple[int, str]]) -> float:
    """The first step with a difference (infinity: none)."""
    return min((step for step, _ in diffs), default=float("inf"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/search-compile-check"))
    ap.add_argument("--tol", type=float, default=0.5, help="test top-1 points (digits: 450 images, 1 = 0.22)")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; pass another --out", file=sys.stderr)
        return 2
    train = args.out / "train"
    _run("train", "--epochs", str(args.epochs), "--run-dir", str(train))
    common = ["search", "--from", str(train), "--steps", str(args.steps), "--final-epochs", "1"]
    runs = {"eager": ([], {}), "eager_1thread": ([], {"OMP_NUM_THREADS": "1"}), "compiled": (["--compile"], {})}
    frontiers = {}
    for name, (extra, env) in runs.items():
        seconds = _run(*common, *extra, "--run-dir", str(args.out / name), env=env)
        frontiers[name] = read_frontier(args.out / name)
        print(f"{name:<14} search {seconds:6.0f} s  cost per step "
              + " ".join(f"{r['cost']:.4f}" for r in frontiers[name])
              + "  test top-1 " + " ".join(f"{r['test_top1']:.2f}" for r in frontiers[name]))
    base = frontiers["eager"]
    control = differences(base, frontiers["eager_1thread"], args.tol)
    compiled = differences(base, frontiers["compiled"], args.tol)
    for name, diffs in (("eager_1thread", control), ("compiled", compiled)):
        print(f"{name} against eager: " + ("; ".join(f"step {s}: {w}" for s, w in diffs) or "identical"))
    if first_difference(compiled) < first_difference(control):
        print(f"MISS: the compiled search differs from step {first_difference(compiled)}, "
              f"eager on one thread only from step {first_difference(control)}")
        return 1
    if compiled:
        print(f"compiled agrees with eager up to step {first_difference(compiled) - 1}, as far as eager on one "
              f"thread does (first difference: step {first_difference(control)})")
    else:
        print("compiled agrees with eager at every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
