"""Wall time of a whole search in epoch-equivalents of plain QAT training of the same model.

    python benchmarks/search_cost.py [--steps 8] [--candidates 16] [--finetune-epochs 2]

One run measures both: a short `proqha train` (its median epoch time is the unit), then the default
search from it, with the time split into scoring, fine-tuning and evaluation/saving.
Goal: scoring overhead per step <= 1 epoch-equivalent on digits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from proqha.files import read_jsonl
from proqha.search import SearchConfig, run_search
from proqha.search.progressive import ProgressiveSearch
from proqha.train import TrainConfig, train_run

SPENT: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - t0
    return wrapper


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--criterion", default="hessian")
    args = ap.parse_args()
    ProgressiveSearch.score_candidates = timed("scoring", ProgressiveSearch.score_candidates)
    ProgressiveSearch.finetune = timed("fine-tuning", ProgressiveSearch.finetune)
    ProgressiveSearch.evaluate_row = timed("evaluation", ProgressiveSearch.evaluate_row)
    ProgressiveSearch.save_step = timed("saving", ProgressiveSearch.save_step)
    with tempfile.TemporaryDirectory() as tmp:
        train_run(TrainConfig(epochs=args.train_epochs).resolved(), Path(tmp) / "train")
        epoch_s = statistics.median(r["time_s"] for r in read_jsonl(Path(tmp) / "train" / "metrics.jsonl"))
        cfg = SearchConfig(source=str(Path(tmp) / "train"), steps=args.steps, candidates=args.candidates,
                           finetune_epochs=args.finetune_epochs, criterion=args.criterion).resolved()
        t0 = time.perf_counter()
        result = run_search(cfg, Path(tmp) / "search")
        total = time.perf_counter() - t0
    steps = result["steps"]
    print(f"plain QAT epoch (digits_resnet, 8 bit, batch 64): {epoch_s:.3f} s = 1 epoch-equivalent (EE)")
    print(f"search: {steps} steps x {args.candidates} candidates ({args.criterion}), "
          f"{args.finetune_epochs} fine-tune epochs per step")
    print(f"  whole search          {total:7.2f} s = {total / epoch_s:6.2f} EE")
    for name in ("scoring", "fine-tuning", "evaluation", "saving"):
        print(f"  {name:<21} {SPENT[name]:7.2f} s = {SPENT[name] / epoch_s:6.2f} EE"
              f"  ({100 * SPENT[name] / total:4.1f}%)")
    other = total - sum(SPENT.values())
    print(f"  setup and other       {other:7.2f} s = {other / epoch_s:6.2f} EE")
    per_step = SPENT["scoring"] / max(steps, 1) / epoch_s
    print(f"scoring overhead per step: {per_step:.2f} EE  (goal <= 1)")
    if per_step > 1:
        print(f"MISS: scoring costs {per_step:.2f} epoch-equivalents per step (> 1)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
