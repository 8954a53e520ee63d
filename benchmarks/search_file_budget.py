"""A budget in file bytes: the search at the size of the uniform 4-bit file, against uniform 4-bit QAT.

    python benchmarks/search_file_budget.py [--seeds 0 1 2 3 4] [--bits 4] [--dataset digits_hard]
        [--base-epochs 15] [--finetune-epochs 1] [--final-epochs 8] [--out DIR]

Per seed, one 8-bit QAT checkpoint is the start of both arms. The budget is the exported file (`proqha export`,
packed weights) of that checkpoint at uniform W4A4 (every searchable layer; edge layers as trained).
- search:  `proqha search --target-file-kb <budget>` with its defaults (the knapsack allocation, the final race);
- uniform: QAT at uniform W4A4 from the same start, for as many epochs as the search fine-tuned in total.
Both final checkpoints are exported and their written files measured. Prints per seed the bytes (budget, the
search's predicted and written file, uniform's file) and top-1, the paired difference with its 95% t-interval.
Exits 1 unless, in every seed, the search's written file is at most the budget and its top-1 at least uniform's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from search_quality import interval, mean_sd, uniform_config  # the same directory

from proqha.export.file_size import exported_file, measure_file_model
from proqha.files import read_jsonl
from proqha.quant import BitConfig
from proqha.runs import RunDir
from proqha.search import SearchConfig, run_search
from proqha.train import TrainConfig, train_run


def start_file_bytes(base: Path, bits: int, tmp: Path) -> int:
    """The written file of the base checkpoint with every searchable layer at W{bits}A{bits}."""
    from dataclasses import replace

    from proqha.checkpoint import load_checkpoint, save_checkpoint
    from proqha.recipe import load_model

    model, _ = load_model(RunDir(base).last)
    config = uniform_config(base, bits, bits)
    BitConfig(config).apply(model)
    path = tmp / f"{base.name}-w{bits}.pt"
    save_checkpoint(replace(load_checkpoint(RunDir(base).last), model=model.state_dict(), bits=config), path)
    return len(exported_file(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--dataset", default="digits_hard")
    ap.add_argument("--base-epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--final-epochs", type=int, default=SearchConfig().final_epochs)
    ap.add_argument("--out", type=Path, default=Path("search_file_budget"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, ok, t0 = [], True, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            base = root / f"base-{seed}"
            train_run(TrainConfig(dataset=args.dataset, epochs=args.base_epochs, seed=seed).resolved(), base)
            budget = start_file_bytes(base, args.bits, root)
            run = root / f"search-{seed}"
            run_search(SearchConfig(source=str(base), target_file_kb=budget / 1e3, finetune_epochs=args.finetune_epochs,
                                    final_epochs=args.final_epochs, seed=seed).resolved(), run,
                       measure_file=measure_file_model)
            with open(RunDir(run).frontier, newline="") as f:
                frontier = list(csv.DictReader(f))
            last = frontier[-1]
            step, epochs = int(last["step"]), sum(int(r["epochs"]) for r in frontier)
            written = len(exported_file(RunDir(run).step_checkpoint(step), step))
            uniform = root / f"uniform-{seed}"
            bits_file = root / f"uniform-{seed}-bits.json"
            BitConfig(uniform_config(base, args.bits, args.bits)).save(bits_file)
            train_run(TrainConfig(dataset=args.dataset, bits_file=str(bits_file), epochs=max(epochs, 1),
                                  optimizer="adam", lr=1e-3, weight_decay=0.0, seed=seed,
                                  init=str(RunDir(base).last)).resolved(), uniform)
            row = {"seed": seed, "budget": budget, "predicted": float(last["file_bytes"]), "written": written,
                   "uniform_bytes": len(exported_file(RunDir(uniform).last)), "epochs": epochs,
                   "search_top1": float(last["test_top1"]), "selected": last["selected"],
                   "uniform_top1": read_jsonl(uniform / "metrics.jsonl")[-1]["test_top1"]}
            rows.append(row)
            ok &= row["written"] <= budget and row["search_top1"] >= row["uniform_top1"]
            print(f"seed {seed}: budget {budget} B, search {row['written']} B (predicted {row['predicted']:.0f}) "
                  f"{row['search_top1']:.2f}% ({row['selected']}), uniform W{args.bits}A{args.bits} "
                  f"{row['uniform_bytes']} B {row['uniform_top1']:.2f}%", file=sys.stderr, flush=True)
    diffs = [r["search_top1"] - r["uniform_top1"] for r in rows]
    mean, low, high = interval(diffs)
    print(f"digits_resnet on {args.dataset}, seeds {args.seeds}, base {args.base_epochs} epochs at 8 bit; "
          f"budget: the uniform W{args.bits}A{args.bits} file")
    print(f"{'seed':>4} {'budget B':>9} {'search B':>9} {'predicted':>9} {'uniform B':>9} {'search %':>8} "
          f"{'uniform %':>9} {'epochs':>6}  race winner")
    for r in rows:
        print(f"{r['seed']:>4} {r['budget']:>9} {r['written']:>9} {r['predicted']:>9.0f} {r['uniform_bytes']:>9} "
              f"{r['search_top1']:>8.2f} {r['uniform_top1']:>9.2f} {r['epochs']:>6}  {r['selected']}")
    print(f"search {mean_sd([r['search_top1'] for r in rows])}, uniform {mean_sd([r['uniform_top1'] for r in rows])}, "
          f"paired difference {mean:+.2f} [95% CI {low:+.2f}, {high:+.2f}]; written/budget "
          f"{max(r['written'] / r['budget'] for r in rows):.4f} at most; prediction error "
          f"{max(abs(r['predicted'] - r['written']) / r['written'] for r in rows) * 100:.3f}% at most")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"verdict: {'met' if ok else 'NOT met'} (every seed: written file <= budget and top-1 >= uniform's); "
          f"{(time.perf_counter() - t0) / 60:.1f} min")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
