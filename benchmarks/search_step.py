"""How long one step of the default budgeted search (the knapsack allocation) takes on a network with many
knobs, and how much of it the kernel takes.

    python benchmarks/search_step.py [--net mobilenet_v3_small] [--train 3000] [--epochs 2] [--max-minutes 10]
        [--max-system 0.05]

Stock torchvision MobileNetV3-Small (104 knobs) on the synthetic 6-class shapes task
(``benchmarks/user_nets.py``): 8-bit QAT for ``--epochs``, then ``proqha.search_bits`` with a target of
uniform 3-bit weights' paper cost, one step (its loss table scores every knob at every lower level on the
calibration split, then the step fine-tunes). Prints the step's wall, user and system seconds, and the
share of system time in the same run (user + system); the table's evaluations once more in a child process
with glibc's default allocator settings as the baseline. Exits 1 when the step takes longer than
``--max-minutes`` or the system share exceeds ``--max-system``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from user_nets import NETS, splits  # noqa: E402

import proqha  # noqa: E402
from proqha.quant import searchable_layers  # noqa: E402

EVALS = 20  # loss-table evaluations timed in the baseline child


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _setup(net: str, n_train: int, epochs: int):
    train_set, test_set, classes = splits("shapes", n_train, 600)
    calib = torch.utils.data.Subset(train_set, range(0, n_train, 10))
    torch.manual_seed(0)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    q = proqha.quantize(NETS[net](classes, 64), train_set.tensors[0][:64])
    if epochs:
        proqha.fit(q, loader, epochs=epochs, optimizer="sgd", lr=0.1, weight_decay=5e-4)
    return q, loader, DataLoader(calib, batch_size=64), DataLoader(test_set, batch_size=256)


def baseline_child(net: str, n_train: int) -> dict[str, float]:
    """In a fresh process (glibc's defaults, nothing set by proqha): EVALS calibration-loss evaluations."""
    from proqha.search.scores import loss_score

    q, _, calib, _ = _setup(net, n_train, 0)
    batches = list(calib)
    u0, s0 = _usage()
    t0 = time.perf_counter()
    for _ in range(EVALS):
        loss_score(q, batches, torch.device("cpu"))
    u1, s1 = _usage()
    return {"wall": (time.perf_counter() - t0) / EVALS, "user": (u1 - u0) / EVALS, "system": (s1 - s0) / EVALS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="mobilenet_v3_small", choices=sorted(NETS))
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--max-system", type=float, default=0.05, help="largest system / (user + system)")
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_child:
        print(json.dumps(baseline_child(args.net, args.train)))
        return 0
    child = subprocess.run([sys.executable, __file__, "--baseline-child", "--net", args.net, "--train",
                            str(args.train)], capture_output=True, text=True, check=True)
    base = json.loads(child.stdout.strip().splitlines()[-1])
    q, loader, calib, test = _setup(args.net, args.train, args.epochs)
    knobs = 2 * len(searchable_layers(q))
    u0, s0 = _usage()
    t0 = time.perf_counter()
    result = proqha.search_bits(q, loader, calib, test, steps=1, target_cost=3 / 32, strategy="allocate",
                                finetune_epochs=1, final_epochs=0)
    wall = time.perf_counter() - t0
    u1, s1 = _usage()
    user, system = u1 - u0, s1 - s0
    share = system / max(user + system, 1e-9)
    base_share = base["system"] / max(base["user"] + base["system"], 1e-9)
    print(f"{args.net}: {knobs} knobs, step 1 reached paper cost {result.steps[-1]['cost']:.4f}")
    print(f"step: wall {wall:.0f} s ({wall / 60:.1f} min), user {user:.0f} s, system {system:.1f} s: "
          f"system share {share:.3f} (goal <= {args.max_system})")
    print(f"baseline, glibc defaults in a child: one table evaluation {base['wall']:.3f} s wall, system share "
          f"{base_share:.3f}; this run's share / baseline's = {share / max(base_share, 1e-9):.2f}")
    misses = [m for m, bad in (("step time", wall > 60 * args.max_minutes), ("system share", share > args.max_system))
              if bad]
    print("misses: " + ", ".join(misses) if misses else "both goals met")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
