"""Is the search worth it? Mixed precision against uniform-bit QAT at no more paper cost and no more BitOPs.

    python benchmarks/search_quality.py [--targets 3 2.5] [--seeds 0 1 2 3 4] [--arms default reference random]
        [--arch A] [--dataset digits_hard] [--data-dir DIR] [--base-epochs 15] [--finetune-epochs 1]
        [--final-epochs 8] [--out DIR]

Per seed, one 8-bit QAT checkpoint is the start of every arm. Per target b (bits), the budget is that of
uniform WbAb on the same model: paper cost and BitOPs both at most uniform's (edge layers as trained);
at a fractional b the budget interpolates (paper cost linearly, BitOPs at b x b). Arms:
- default:   `proqha search` with both targets and its default options (with a budget, `--strategy auto`
  is the knapsack allocation; `--final-epochs 8`; at the last step one allocation at or above each maximal
  uniform configuration, raced when there are several);
- norace:    the default without its final race (`--no-select-final`: the first floored allocation);
- reference: the reference's search (`--strategy sets --lam 0 --no-fit-budget --final-epochs 0
  --no-select-final`), stopped at the same targets;
- random:    `--strategy table --criterion random --no-select-final` (a control: random knobs, the same budget);
- uniform:   QAT of every uniform configuration WwAa that meets the budget and is maximal (at 3 bit W3A3 and
  W2A4, at 2.5 bit W2A3; Adam, the search's fine-tuning recipe) for as many epochs as the default search
  fine-tuned in total (its race included), per seed; the best of them per seed is "uniform".
Prints, per target: mean +- sd top-1, the paired per-seed difference of each arm to uniform with its 95%
t-interval, paper cost and BitOPs reached, epochs, wall time; per-seed figures; writes results.json and
frontier.png to --out. Exits 1 unless the default search is at or above uniform in every seed and above
it on the mean, at no more cost and BitOPs, at every target.
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

ARMS = ("default", "norace", "reference", "random")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)


def uniform_config(base: Path, w: float, a: float) -> dict:
    """The base model's bits with every searchable layer at ``w`` weight and ``a`` activation bits."""
    model, _ = load_model(base / "checkpoints" / "last.pt")
    config = BitConfig.from_model(model).to_dict()
    return config | {name: {"w": w, "a": a} for name in searchable_layers(model)}


def uniform_budget(base: Path, w: float, a: float | None = None) -> tuple[float, float]:
    """(paper cost, BitOPs ratio) of the base model at ``uniform_config`` (edge layers as trained);
    fractional bits interpolate the formula itself."""
    model, state = load_model(base / "checkpoints" / "last.pt")
    at = cost_report(model, state.input_size).with_bits(uniform_config(base, w, w if a is None else a))
    return at.paper_cost, at.bitops_ratio


def uniform_pairs(base: Path, budget: tuple[float, float]) -> list[tuple[int, int]]:
    """The maximal uniform (w, a) pairs within ``budget`` (what the final race tries too)."""
    fits = [(w, a) for w in range(2, 9) for a in range(2, 9)
            if all(v <= lim * (1 + 1e-9) for v, lim in zip(uniform_budget(base, w, a), budget))]
    return [p for p in fits if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in fits)]


def final_row(run: Path) -> dict[str, float]:
    with open(run / "frontier.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    return {"top1": float(row["test_top1"]), "cost": float(row["cost"]), "bitops_ratio": float(row["bitops_ratio"]),
            "steps": int(row["step"])}


def search_arm(arm: str, base: Path, run: Path, target: tuple[float, float], args: argparse.Namespace,
               seed: int) -> dict[str, float]:
    options = {"reference": {"lam": 0.0, "fit_budget": False, "final_epochs": 0, "strategy": "sets",
                             "select_final": False},
               "random": {"criterion": "random", "strategy": "table", "final_epochs": args.final_epochs,
                          "select_final": False},
               "norace": {"final_epochs": args.final_epochs, "strategy": args.strategy, "criterion": args.criterion,
                          "ratio": args.ratio, "table_data": args.table_data, "select_final": False},
               "default": {"final_epochs": args.final_epochs, "strategy": args.strategy,
                           "criterion": args.criterion, "ratio": args.ratio, "table_data": args.table_data,
                           "select_final": args.select_final, "select_epochs": args.select_epochs,
                           "uniform_floor": args.uniform_floor,
                           "select_candidates": args.select_candidates}}[arm]
    cfg = SearchConfig(**({"source": str(base), "steps": args.steps, "finetune_epochs": args.finetune_epochs,
                           "lam": args.lam, "target_cost": target[0], "target_bitops": target[1], "seed": seed}
                          | options)).resolved()
    t0 = time.perf_counter()
    run_search(cfg, run)
    with open(run / "frontier.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return final_row(run) | {"epochs": sum(int(r["epochs"]) for r in rows), "selected": rows[-1]["selected"],
                             "wall_s": time.perf_counter() - t0}


def uniform_arm(base: Path, run: Path, pair: tuple[int, int], epochs: int, args: argparse.Namespace, seed: int
                ) -> dict[str, float]:
    t0 = time.perf_counter()
    bits_file = run.with_name(run.name + "-bits.json")
    BitConfig(uniform_config(base, *pair)).save(bits_file)
    train_run(TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, bits_file=str(bits_file),
                          epochs=max(epochs, 1), optimizer="adam", lr=1e-3, weight_decay=0.0, seed=seed,
                          init=str(base / "checkpoints" / "last.pt")).resolved(), run)
    cost = json.loads((run / "cost.json").read_text())["totals"]
    return {"top1": read_jsonl(run / "metrics.jsonl")[-1]["test_top1"], "cost": cost["paper_cost"],
            "bitops_ratio": cost["bitops_ratio"], "epochs": max(epochs, 1), "wall_s": time.perf_counter() - t0}


def label(pair: tuple[int, int]) -> str:
    return f"W{pair[0]}A{pair[1]}"


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} +- {sd:4.2f}"


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95% t-interval (the mean twice with one seed)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, mean, mean
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"default": "o", "norace": "v", "reference": "s", "random": "x"}
    for target, per in results["targets"].items():
        for arm in results["arms"]:
            ax.scatter([r["cost"] for r in per[arm]], [r["top1"] for r in per[arm]], marker=markers[arm],
                       label=f"{arm} @ {target} bit")
        for name, rows in per["uniform"].items():
            ax.scatter([r["cost"] for r in rows], [r["top1"] for r in rows], marker="D", label=f"uniform {name}")
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
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="search arms beside uniform")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--dataset", default="digits_hard")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--base-epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--final-epochs", type=int, default=SearchConfig().final_epochs)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--strategy", default=SearchConfig().strategy, help="the default arm's --strategy (to try another)")
    ap.add_argument("--criterion", default=SearchConfig().criterion, help="the default arm's --criterion")
    ap.add_argument("--ratio", type=float, default=SearchConfig().ratio, help="the default arm's --ratio")
    ap.add_argument("--table-data", default=SearchConfig().table_data, help="the default arm's --table-data")
    ap.add_argument("--select-final", action=argparse.BooleanOptionalAction, default=SearchConfig().select_final,
                    help="the default arm's final race")
    ap.add_argument("--uniform-floor", action=argparse.BooleanOptionalAction,
                    default=SearchConfig().uniform_floor, help="the default arm's allocation at or above uniform bits")
    ap.add_argument("--select-epochs", type=int, default=SearchConfig().select_epochs)
    ap.add_argument("--select-candidates", type=int, default=SearchConfig().select_candidates)
    ap.add_argument("--lam", type=float, default=SearchConfig().lam)
    ap.add_argument("--out", type=Path, default=Path("search_quality"))
    args = ap.parse_args()
    if "default" not in args.arms:
        args.arms = ["default", *args.arms]  # uniform's epochs are the default's
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "arms": args.arms, "targets": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            base = root / f"base-{seed}"
            train_run(TrainConfig(arch=args.arch, dataset=args.dataset, data_dir=args.data_dir, epochs=args.base_epochs,
                                  seed=seed).resolved(), base)
            results.setdefault("base_top1", []).append(read_jsonl(base / "metrics.jsonl")[-1]["test_top1"])
            for b in args.targets:
                lo, hi = math.floor(b), math.ceil(b)
                cost_lo, _ = uniform_budget(base, lo)
                cost_hi, _ = uniform_budget(base, hi)
                w = 0.0 if hi == lo else (b - lo) / (hi - lo)
                budget = (cost_lo + w * (cost_hi - cost_lo), uniform_budget(base, b)[1])
                per = results["targets"].setdefault(str(b), {arm: [] for arm in args.arms} | {
                    "uniform": {}, "best_uniform": [], "budget": []})
                per["budget"].append(budget)
                for arm in args.arms:
                    per[arm].append(search_arm(arm, base, root / f"{arm}-{b}-{seed}", budget, args, seed))
                epochs = int(per["default"][-1]["epochs"])
                points = {label(pair): uniform_arm(base, root / f"uniform{label(pair)}-{b}-{seed}", pair, epochs,
                                                   args, seed) for pair in uniform_pairs(base, budget)}
                for name, row in points.items():
                    per["uniform"].setdefault(name, []).append(row)
                best = max(points, key=lambda name: points[name]["top1"])
                per["best_uniform"].append({"name": best, "top1": points[best]["top1"]})
                print(f"seed {seed} target {b}: " + ", ".join(f"{arm} {per[arm][-1]['top1']:.2f}" for arm in args.arms)
                      + f" (won the race: {per['default'][-1]['selected']}), uniform "
                      + ", ".join(f"{n} {r['top1']:.2f}" for n, r in points.items()),
                      file=sys.stderr, flush=True)
    results["wall_s"] = time.perf_counter() - t_start
    ok = report(results, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "frontier.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'frontier.png'} ({results['wall_s'] / 60:.1f} min)")
    return 0 if ok else 1


def report(results: dict, args: argparse.Namespace) -> bool:
    """Print the tables; True when the default search is at or above uniform in every seed and above it on
    the mean, within the budget, at every target."""
    arch = args.arch or "the dataset's default model"
    print(f"{arch} on {args.dataset}, seeds {args.seeds}, base {args.base_epochs} epochs at 8 bit, "
          f"{args.finetune_epochs} fine-tune epoch(s) per step, {args.final_epochs} final, "
          f"final race {'on' if args.select_final else 'off'}; the 8-bit start {mean_sd(results['base_top1'])}")
    ok = True
    for target, per in results["targets"].items():
        best = [u["top1"] for u in per["best_uniform"]]
        cost_budget = statistics.mean(c for c, _ in per["budget"])
        bitops_budget = statistics.mean(bo for _, bo in per["budget"])
        print(f"\ntarget {target} bit: paper cost <= {cost_budget:.4f}, BitOPs ratio <= {bitops_budget:.5f}; "
              f"uniform (the best maximal uniform configuration per seed) {mean_sd(best)}")
        print(f"{'arm':<14} {'top-1 mean +- sd':>17} {'vs uniform, paired (95% CI)':>30} {'>= uniform':>10} "
              f"{'cost':>7} {'BitOPs':>8} {'epochs':>6} {'wall s':>7}")
        for arm in results["arms"]:
            rows = per[arm]
            diffs = [r["top1"] - u for r, u in zip(rows, best)]
            mean, low, high = interval(diffs)
            at_least = sum(d >= 0 for d in diffs)
            within = all(r["cost"] <= c * (1 + 1e-9) and r["bitops_ratio"] <= bo * (1 + 1e-9)
                         for r, (c, bo) in zip(rows, per["budget"]))
            print(f"{arm:<14} {mean_sd([r['top1'] for r in rows]):>17} "
                  f"{f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]':>30} {at_least:>4}/{len(rows):<5} "
                  f"{statistics.mean(r['cost'] for r in rows):7.4f} "
                  f"{statistics.mean(r['bitops_ratio'] for r in rows):8.5f} "
                  f"{statistics.mean(r['epochs'] for r in rows):6.1f} {statistics.mean(r['wall_s'] for r in rows):7.1f}"
                  + ("" if within else "  OVER BUDGET"))
            if arm == "default":
                ok &= within and at_least == len(rows) and mean > 0
        for name, rows in per["uniform"].items():
            means = [statistics.mean(r[key] for r in rows) for key in ("cost", "bitops_ratio", "epochs", "wall_s")]
            print(f"{'uniform ' + name:<14} {mean_sd([r['top1'] for r in rows]):>17} {'':>30} {'':>10} "
                  f"{means[0]:7.4f} {means[1]:8.5f} {means[2]:6.1f} {means[3]:7.1f}")
        print("per seed top-1: " + "; ".join(
            f"{arm} " + " ".join(f"{r['top1']:.2f}" for r in per[arm]) for arm in results["arms"])
            + "; uniform " + " ".join(f"{u['name']} {u['top1']:.2f}" for u in per["best_uniform"]))
        print("the race's winners: " + ", ".join(r["selected"] for r in per["default"]))
    print("\nverdict: the default search " + ("is" if ok else "is NOT") + " at or above uniform in every seed and "
          "above it on the mean, at every target")
    return ok


if __name__ == "__main__":
    sys.exit(main())
