"""Does 8-bit QAT learn what float learns, on networks and data proqha was not designed for?

    python benchmarks/qat_accuracy.py [--cases depthwise:prototypes plain:shapes ...] [--optimizers sgd adam]
        [--seeds 0 1] [--epochs 6] [--train 3000] [--test 600] [--max-gap 2.0] [--full-grid]

Per case (a network of ``benchmarks/user_nets.py`` on one of its synthetic tasks), optimizer and seed: the
same network trained in float (``proqha.quantize(..., bits=32)``) and at 8 bit (``bits=8``, every default),
through ``proqha.fit`` with the same data order and epochs (SGD lr 0.1 or Adam 1e-3, weight decay 5e-4:
the CLI's recipes). Prints final test top-1 of both and the gap (float minus 8 bit, in points); exits 1
when any gap exceeds ``--max-gap``. ``--full-grid`` also trains 8 bit on the full 8-bit weight grid
(``int8_kernels="vnni"``, ±127 levels) beside the portable default (±64 on full-range inputs): what the
grid that is exact on every CPU costs in accuracy. Top-1 is the argmax the exported graph gives (ties to the lower index).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from user_nets import NETS, image_size, splits  # noqa: E402

import proqha  # noqa: E402

DEFAULT_CASES = ("depthwise:prototypes", "plain:prototypes", "plain:shapes", "mobilenet_v3_small:shapes",
                 "resnet18:prototypes")
RECIPES = {"sgd": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4},
           "adam": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-4}}


def train_once(net_name: str, data, bits: int, optimizer: str, seed: int, epochs: int,
               int8_kernels: str = "portable") -> float:
    """Final test top-1 of one run."""
    train_set, test_set, classes, size = data
    torch.manual_seed(seed)
    net = NETS[net_name](classes, size)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    qmodel = proqha.quantize(net, train_set.tensors[0][:64], bits=bits, int8_kernels=int8_kernels)
    rows = proqha.fit(qmodel, loader, DataLoader(test_set, batch_size=256), epochs=epochs, **RECIPES[optimizer])
    return rows[-1]["test_top1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="net:dataset pairs")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--max-gap", type=float, default=2.0, help="points of top-1 float may lead by")
    parser.add_argument("--full-grid", action="store_true", help="also train on the full 8-bit weight grid")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="epoch ")  # fit's per-epoch output warnings: the gap says it
    misses = 0
    print(f"{'case':32} {'opt':5} {'seed':>4} {'float':>7} {'8 bit':>7} {'gap':>6} "
          f"{'full grid (gap)':>16} {'time':>6}")
    for case in args.cases:
        net_name, data_name = case.split(":")
        train_set, test_set, classes = splits(data_name, args.train, args.test)
        data = (train_set, test_set, classes, image_size(data_name))
        for optimizer in args.optimizers:
            for seed in args.seeds:
                t0 = time.perf_counter()
                top_float = train_once(net_name, data, 32, optimizer, seed, args.epochs)
                top_q = train_once(net_name, data, 8, optimizer, seed, args.epochs)
                full = (f"{(top_full := train_once(net_name, data, 8, optimizer, seed, args.epochs, 'vnni')):7.2f} "
                        f"({top_float - top_full:+6.2f})" if args.full_grid else "-")
                gap = top_float - top_q
                miss = gap > args.max_gap
                misses += miss
                learned = top_float >= 2 * 100.0 / classes  # else the case says nothing about quantization
                print(f"{case:32} {optimizer:5} {seed:>4} {top_float:7.2f} {top_q:7.2f} {gap:+6.2f} {full:>16} "
                      f"{time.perf_counter() - t0:5.0f}s{'  MISS' if miss else ''}"
                      f"{'' if learned else '  (float did not learn: no comparison)'}", flush=True)
    print(f"{misses} gap(s) above {args.max_gap} points" if misses else f"every gap within {args.max_gap} points")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
