"""Is the search worth it? Mixed precision against uniform-bit QAT at no more paper cost and no more BitOPs.

    python benchmarks/search_quality.py [--targets 3 2.5] [--seeds 0 1 2 3 4] [--arch A] [--dataset D]
        [--data-dir DIR] [--base-epochs 5] [--finetune-epochs 1] [--final-epochs 4] [--out DIR]

Per seed, one 8-bit QAT checkpoint is the start of every arm. Per target b (bits), the budget is that of
uniform WbAb on the same model: paper cost and BitOPs both at most uniform's (edge layers as trained);
at a fractional b the budget interpolates (paper cost linearly, BitOPs at b x b) and the accuracy to beat
is the straight line between the two neighbouring uniform points. Arms:
- default:   `proqha search` with both targets and its default options (with a budget, `--strategy auto`
  is the knapsack allocation; `--final-epochs 8`);
- reference: the reference's search (`--strategy sets --lam 0 --no-fit-budget --final-epochs 0`), stopped
  at the same targets;
- random:    `--strategy table --criterion random` (a control: random knobs, the same budget and epochs);
- uniform:   QAT at floor(b) and ceil(b) bits (Adam, the search's fine-tuning recipe) for as many epochs
  as the default search fine-tuned in total, per seed.
Prints, per target: mean +- sd top-1, the paired per-seed difference of each arm to uniform, paper cost
and BitOPs reached, wall time; per-seed figures; writes results.json and frontier.png to --out. Exits 1
when the default search does not beat uniform (mean and at least 4 of 5 paired seeds, or all but one)
at no more cost and BitOPs, at every target.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from proqha.cost import cost_report
from proqha.files import read_jsonl
from proqha.quant import BitConfig, searchable_layers
from proqha.recipe import load_model
from proqha.search import SearchConfig, run_search
from proqha.train import TrainConfig, train_run

ARMS = ("default", "reference", "random")


def uniform_budget(base: Path, bits: float) -> tuple[float, float]:
    """(paper cost, BitOPs ratio) of the base model with every searchable layer at ``bits`` weights and
    activations (edge layers as trained); fractional bits interpolate the formula itself."""
    model, state = load_model(base / "checkpoints" / "last.pt")
    report = cost_report(model, state.input_size)
    config = BitConfig.from_model(model).to_dict()
    for name in searchable_layers(model):
        config[name] = {"w": bits, "a": bits}
    at = report.with_bits(config)
    return at.paper_cost, at.bitops_ratio


def final_row(run: Path) -> dict[str, float]:
    with open(run / "frontier.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    return {"top1": float(row["test_top1"]), "cost": float(row["cost"]), "bitops_ratio": float(row["bitops_ratio"]),
            "steps": int(row["step"])}


def search_arm(arm: str, base: Path, run: Path, target: tuple[float, float], args: argparse.Namespace,
               seed: int) -> dict[str, float]:
    options = {"reference": {"lam": 0.0, "fit_budget": False, "final_epochs": 0, "strategy": "sets"},
               "random": {"criterion": "random", "strategy": "table", "final_epochs": args.final_epochs},
               "default": {"final_epochs": args.final_epochs, "strategy": args.strategy,
                           "criterion": args.criterion, "ratio": args.ratio, "table_data": args.table_data}}[arm]
    cfg = SearchConfig(**({"source": str(base), "steps": args.steps, "finetune_epochs": args.finetune_epochs,
                           "lam": args.lam, "target_cost": target[0], "target_bitops": target[1], "seed": seed}
                          | options)).resolved()
    t0 = time.perf_counter()
    run_search(cfg, run)
    row = final_row(run)
    extra = cfg.final_epochs if row["steps"] else 0
    return row | {"epochs": row["steps"] * cfg.finetune_epochs + extra, "wall_s": time.perf_counter() - t0}


def uniform_arm(base: Path, run: Path, bits: int, epochs: int, args: argparse.Namespace, seed: int
                ) -> dict[str, float]:
    t0 = time.perf_counter()
    train_run(TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, bits=bits, epochs=max(epochs, 1),
                    optimizer="adam", lr=1e-3, weight_decay=0.0, seed=seed,
                    init=str(base / "checkpoints" / "last.pt")).resolved(), run)
    cost = json.loads((run / "cost.json").read_text())["totals"]
    return {"top1": read_jsonl(run / "metrics.jsonl")[-1]["test_top1"], "cost": cost["paper_cost"],
            "bitops_ratio": cost["bitops_ratio"], "epochs": max(epochs, 1), "wall_s": time.perf_counter() - t0}


def uniform_line(low: dict[str, float], high: dict[str, float], b: float, lo: int, hi: int) -> float:
    """Uniform accuracy at ``b`` bits on the straight line between the neighbouring integer points."""
    if hi == lo:
        return low["top1"]
    return low["top1"] + (high["top1"] - low["top1"]) * (b - lo) / (hi - lo)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} +- {sd:4.2f}"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"default": "o", "reference": "s", "random": "x"}
    for target, per in results["targets"].items():
        for arm in ARMS:
            ax.scatter([r["cost"] for r in per[arm]], [r["top1"] for r in per[arm]], marker=markers[arm],
                       label=f"{arm} @ {target} bit")
    uniform = {}
    for per in results["targets"].values():
        for bits, rows in per["uniform"].items():
            uniform.setdefault(int(bits), rows)
    xs = sorted(uniform)
    ax.plot([statistics.mean(r["cost"] for r in uniform[b]) for b in xs],
            [statistics.mean(r["top1"] for r in uniform[b]) for b in xs], "k--", marker="D", label="uniform (mean)")
    ax.set_xlabel("paper cost (weight bits / 32)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[3.0, 2.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--arch", default=None)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--base-epochs", type=int, default=5)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--final-epochs", type=int, default=SearchConfig().final_epochs)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--strategy", default=SearchConfig().strategy, help="the default arm's --strategy (to try another)")
    ap.add_argument("--criterion", default=SearchConfig().criterion, help="the default arm's --criterion")
    ap.add_argument("--ratio", type=float, default=SearchConfig().ratio, help="the default arm's --ratio")
    ap.add_argument("--table-data", default=SearchConfig().table_data, help="the default arm's --table-data")
    ap.add_argument("--lam", type=float, default=SearchConfig().lam)
    ap.add_argument("--out", type=Path, default=Path("search_quality"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "targets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            base = root / f"base-{seed}"
            train_run(TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, epochs=args.base_epochs,
                            seed=seed).resolved(), base)
            for b in args.targets:
                lo, hi = math.floor(b), math.ceil(b)
                cost_lo, bitops_lo = uniform_budget(base, lo)
                cost_hi, bitops_hi = uniform_budget(base, hi)
                w = 0.0 if hi == lo else (b - lo) / (hi - lo)
                budget = (cost_lo + w * (cost_hi - cost_lo), uniform_budget(base, b)[1])
                per = results["targets"].setdefault(str(b), {arm: [] for arm in ARMS} | {"uniform": {}, "line": [],
                                                                                          "budget": []})
                per["budget"].append(budget)
                for arm in ARMS:
                    per[arm].append(search_arm(arm, base, root / f"{arm}-{b}-{seed}", budget, args, seed))
                epochs = int(per["default"][-1]["epochs"])
                points = {bits: uniform_arm(base, root / f"uniform{bits}-{b}-{seed}", bits, epochs, args, seed)
                          for bits in sorted({lo, hi})}
                for bits, row in points.items():
                    per["uniform"].setdefault(str(bits), []).append(row)
                per["line"].append(uniform_line(points[lo], points[hi], b, lo, hi))
                print(f"seed {seed} target {b}: " + ", ".join(f"{arm} {per[arm][-1]['top1']:.2f}" for arm in ARMS)
                      + f", uniform line {per['line'][-1]:.2f}", file=sys.stderr, flush=True)
    ok = report(results, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "frontier.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'frontier.png'}")
    return 0 if ok else 1


def report(results: dict, args: argparse.Namespace) -> bool:
    """Print the tables; True when the default search wins at every target."""
    arch = args.arch or "the dataset's default model"
    print(f"{arch} on {args.dataset}, seeds {args.seeds}, base {args.base_epochs} epochs at 8 bit, "
          f"{args.finetune_epochs} fine-tune epoch(s) per step, {args.final_epochs} final")
    ok = True
    for target, per in results["targets"].items():
        line = per["line"]
        cost_budget = statistics.mean(c for c, _ in per["budget"])
        bitops_budget = statistics.mean(bo for _, bo in per["budget"])
        print(f"\ntarget {target} bit: paper cost <= {cost_budget:.4f}, BitOPs ratio <= {bitops_budget:.5f}; "
              f"uniform (line) {mean_sd(line)}")
        print(f"{'arm':<10} {'top-1 mean +- sd':>17} {'vs uniform (paired)':>20} {'wins':>5} {'cost':>7} "
              f"{'BitOPs':>8} {'epochs':>6} {'wall s':>7}")
        for arm in ARMS:
            rows = per[arm]
            diffs = [r["top1"] - u for r, u in zip(rows, line)]
            wins = sum(d > 0 if float(target) % 1 else d >= 0 for d in diffs)
            within = all(r["cost"] <= c * (1 + 1e-9) and r["bitops_ratio"] <= bo * (1 + 1e-9)
                         for r, (c, bo) in zip(rows, per["budget"]))
            print(f"{arm:<10} {mean_sd([r['top1'] for r in rows]):>17} {mean_sd(diffs):>20} "
                  f"{wins:>2}/{len(rows):<2} {statistics.mean(r['cost'] for r in rows):7.4f} "
                  f"{statistics.mean(r['bitops_ratio'] for r in rows):8.5f} "
                  f"{statistics.mean(r['epochs'] for r in rows):6.1f} {statistics.mean(r['wall_s'] for r in rows):7.1f}"
                  + ("" if within else "  OVER BUDGET"))
            if arm == "default":
                mean_diff = statistics.mean(diffs)
                beat = mean_diff > 0 if float(target) % 1 else mean_diff >= 0
                ok &= beat and within and wins >= max(1, len(rows) - 1)
        for bits, rows in per["uniform"].items():
            means = [statistics.mean(r[key] for r in rows) for key in ("cost", "bitops_ratio", "epochs", "wall_s")]
            print(f"uniform {bits:<2} {mean_sd([r['top1'] for r in rows]):>17} {'':>20} {'':>5} "
                  f"{means[0]:7.4f} {means[1]:8.5f} {means[2]:6.1f} {means[3]:7.1f}")
        print("per seed top-1: " + "; ".join(
            f"{arm} " + " ".join(f"{r['top1']:.2f}" for r in per[arm]) for arm in ARMS)
            + "; uniform line " + " ".join(f"{v:.2f}" for v in line))
    print("\nverdict: the default search " + ("wins" if ok else "does NOT win") + " at every target")
    return ok


if __name__ == "__main__":
    sys.exit(main())
