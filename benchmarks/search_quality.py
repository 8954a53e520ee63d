"""Is the search worth it? Mixed precision at paper cost <= uniform 3 bit, against uniform 3-bit QAT and
against a random-choice search, with the same total training epochs per arm, over several seeds.

    python benchmarks/search_quality.py [--seeds 0 1 2] [--base-epochs 5] [--finetune-epochs 1]

Arms (each starts from the same 8-bit QAT checkpoint of its seed):
- hessian: `proqha search --target-cost 0.09375` (the reference's score, --lam 0.1);
- random:  the same search with `--criterion random` (a control with the same budget);
- uniform: QAT at 3 bit (Adam, the search's fine-tuning recipe) for as many epochs as the hessian
  search fine-tuned.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from proqha.files import read_jsonl
from proqha.search import SearchConfig, run_search
from proqha.train import TrainConfig, fit

UNIFORM_BITS = 3
TARGET = UNIFORM_BITS / 32


def last_row(run: Path) -> dict[str, float]:
    with open(run / "frontier.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    return {"top1": float(row["test_top1"]), "cost": float(row["cost"]), "bitops_ratio": float(row["bitops_ratio"]),
            "steps": int(row["step"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base-epochs", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--lam", type=float, default=0.1)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"hessian": [], "random": [], "uniform": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            base = root / f"base-{seed}"
            fit(TrainConfig(epochs=args.base_epochs, seed=seed).resolved(), base)
            for criterion in ("hessian", "random"):
                run = root / f"{criterion}-{seed}"
                run_search(SearchConfig(source=str(base), criterion=criterion, lam=args.lam, steps=64,
                                        finetune_epochs=args.finetune_epochs, target_cost=TARGET, seed=seed
                                        ).resolved(), run)
                results[criterion].append(last_row(run))
            epochs = results["hessian"][-1]["steps"] * args.finetune_epochs
            uni = root / f"uniform-{seed}"
            fit(TrainConfig(bits=UNIFORM_BITS, epochs=max(epochs, 1), optimizer="adam", lr=1e-3, weight_decay=0.0,
                            seed=seed, init=str(base / "checkpoints" / "last.pt")).resolved(), uni)
            cost = json.loads((uni / "cost.json").read_text())["totals"]
            results["uniform"].append({"top1": read_jsonl(uni / "metrics.jsonl")[-1]["test_top1"],
                                       "cost": cost["paper_cost"], "bitops_ratio": cost["bitops_ratio"],
                                       "steps": float(epochs)})
    print(f"digits_resnet on digits, seeds {args.seeds}, base {args.base_epochs} epochs at 8 bit, "
          f"target paper cost {TARGET:.5f}, {args.finetune_epochs} fine-tune epoch(s) per step")
    print(f"{'arm':<10} {'test top-1 mean':>16} {'spread (sd)':>12} {'paper cost':>11} {'BitOPs ratio':>13} "
          f"{'fine-tune epochs':>17}")
    for arm, rows in results.items():
        top1 = [r["top1"] for r in rows]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        epochs = [r["steps"] * (args.finetune_epochs if arm != "uniform" else 1) for r in rows]
        print(f"{arm:<10} {statistics.mean(top1):16.2f} {sd:12.2f} {statistics.mean(r['cost'] for r in rows):11.4f} "
              f"{statistics.mean(r['bitops_ratio'] for r in rows):13.4f} {statistics.mean(epochs):17.1f}")
    for arm, rows in results.items():
        print(f"  {arm:<8} per seed top-1: " + ", ".join(f"{r['top1']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
