"""A budget in measured latency: the search at a latency between the int8 and the fp32 graph, on onnxruntime.

    python benchmarks/search_latency_budget.py [--seeds 0 1 2] [--fraction 0.5] [--budget ratio|ms] [--engine ort] [--batch 1]
        [--threads N] [--base-epochs 10] [--final-epochs 8] [--no-resnet18] [--r18-base-epochs 3]
        [--r18-final-epochs 1] [--r18-lr 1e-4] [--r18-train 1200] [--r18-calib 128] [--r18-test 1500] [--out DIR]

Pipeline model (the `proqha pipeline` default: digits_resnet on digits), per seed: one 8-bit QAT checkpoint;
its exported int8 graph and its fp32 graph are timed (interleaved, ``RETIME_BLOCKS`` blocks); the budget is int8 + fraction x (fp32 - int8) ms (where
the fp32 graph is not slower, the int8 graph's own latency); with ``--budget ratio`` (default) it is given to the
search as that budget over the int8 graph's latency. Arms:
- search:  `proqha search --target-latency-ratio <budget / int8>` (``--budget ms``: `--target-latency-ms
  <budget>`) with its defaults (the allocation may leave layers in float where the budget pays for them; the
  per-layer table is timed once, every step's graph is measured, beside the int8 graph under a ratio);
- uniform: QAT at 8 bit from the same start for as many epochs as the search fine-tuned, by the search's own
  fine-tuning (recipe and batches of its last step; uniform int8; the start itself where the search kept it).
At the end the chosen configuration's graph is timed again, interleaved with the start's int8 and fp32 graphs
(``RETIME_BLOCKS`` blocks). Under a ratio budget the chosen graph's latency over the int8 graph timed beside it,
against the search's ratio, decides ("x int8", "/budget"); under an ms budget its ms against the search's
budget; "/ms-bud" (its ms against the budget in ms set at the start) and "/re-bud" (its ratio to the budget the
same rule gives from the graphs timed beside it) show what the machine's drift did either way. ResNet-18 (torchvision, 224x224, on
``user_nets.shapes`` resized to 224: 1,200 training, 128 calibration and 1,500 test images): 8-bit QAT from
scratch for ``--r18-base-epochs``, then the same budget rule and search (one step, ``--r18-final-epochs`` of
fine-tuning at ``--r18-lr``) against uniform int8 QAT from the same start for as many epochs at that rate.
"1-float": the fastest graph with one layer in float over the int8 graph, timed beside it; where the search keeps
int8 and that graph is over the budget, the row says no graph lies between int8 and the budget (it still counts).
Exits 1 unless, for every model and seed, the chosen graph's measured latency is within 10% of the budget, and
its top-1 is at least uniform int8's. Never time it while another process computes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from user_nets import shapes  # the same directory

from proqha.api import evaluate
from proqha.deploy.latency_table import EngineLatency, cpu_name
from proqha.quant import BitConfig, searchable_layers
from proqha.quant.grid import FULL_PRECISION
from proqha.recipe import load_model
from proqha.runs import RunDir
from proqha.search import SearchConfig, run_search
from proqha.search.data import LoaderData
from proqha.search.finetune import FineTune
from proqha.train import TrainConfig, train_run

TOLERANCE = 0.10
SEARCH_SEED = 0  # ResNet-18's search; its uniform arm draws the batches of the search's fine-tuning
RETIME_BLOCKS = 9  # the budget's int8 and fp32 timing, and the final one (with the chosen graph): blocks


def budget_ms(int8: float, fp32: float, fraction: float) -> float:
    """The latency budget between the int8 and the fp32 graph (the int8 graph's where fp32 is not slower)."""
    return int8 + fraction * (fp32 - int8) if fp32 > int8 else int8


def retime(retimed: list[float], args: argparse.Namespace) -> dict:
    """The final interleaved timing (int8, fp32, chosen graph): the chosen graph's latency, its ratio to the int8
    graph beside it, and the budget the same rule gives from the int8 and fp32 graphs timed beside it (what a
    drift of the machine did to it)."""
    int8, fp32, chosen = retimed
    return {"measured_ms": chosen, "measured_ratio": chosen / int8, "retimed_int8_ms": int8, "retimed_fp32_ms": fp32,
            "retimed_target_ms": budget_ms(int8, fp32, args.fraction)}


def one_float_ratio(clock: EngineLatency, model: torch.nn.Module, size: tuple[int, ...]) -> float:
    """The fastest graph with one searchable layer of ``model`` (at uniform int8) in float, over the int8 graph,
    timed interleaved with it (``RETIME_BLOCKS`` blocks): the nearest configuration above int8. Where it is over
    the budget, no graph but the int8 one is under it."""
    probe = copy.deepcopy(model)
    start = BitConfig.from_model(probe).to_dict()
    graphs = [clock.graph_of(probe, size)]
    for name in (n for n in searchable_layers(probe) if n in start):
        BitConfig(start | {name: {"w": FULL_PRECISION, "a": FULL_PRECISION}}).apply(probe)
        graphs.append(clock.graph_of(probe, size))
    BitConfig(start).apply(probe)
    ms = clock.time_graphs(graphs, size, repeats=RETIME_BLOCKS)
    return min(ms[1:]) / ms[0]


def empty_gap(r: dict) -> bool:
    """Whether the row's chosen graph is the int8 one and the nearest graph above it is over the budget."""
    return r["float_layers"] == 0 and r["one_float_ratio"] > r["target_ms"] / r["int8_ms"]


def budget_options(int8: float, target: float, args: argparse.Namespace) -> dict:
    """The search's latency budget: ``target`` ms over ``int8`` as a ratio (``--budget ratio``), else in ms."""
    return {"target_latency_ratio": target / int8} if args.budget == "ratio" else {"target_latency_ms": target}


def judged(r: dict, args: argparse.Namespace) -> float:
    """What decides a row: the chosen graph's measured latency over the search's budget (under a ratio, its
    ratio to the int8 graph timed beside it, over the budget's ratio)."""
    if args.budget == "ratio":
        return r["measured_ratio"] / (r["target_ms"] / r["int8_ms"])
    return r["measured_ms"] / r["target_ms"]


def pipeline_seed(seed: int, args: argparse.Namespace, root: Path) -> dict:
    base = root / f"base-{seed}"
    train_run(TrainConfig(epochs=args.base_epochs, seed=seed).resolved(), base)
    model, state = load_model(RunDir(base).last)
    size = tuple(state.input_size)
    clock = EngineLatency(args.engine, args.batch, threads=args.threads)
    ends = [clock.graph_of(model, size), clock.fp32_graph_of(model, size)]
    int8, fp32 = clock.time_graphs(ends, size, repeats=RETIME_BLOCKS)
    target = budget_ms(int8, fp32, args.fraction)
    run = root / f"search-{seed}"
    cfg = SearchConfig(source=str(base), **budget_options(int8, target, args), latency_engine=args.engine,
                       latency_batch=args.batch, final_epochs=args.final_epochs, seed=seed).resolved()
    searches: list = []  # the search, for its data, recipe and device
    run_search(cfg, run, measure_latency=EngineLatency(args.engine, args.batch, RunDir(run).latency_table,
                                                       threads=args.threads), on_start=searches.append)
    with open(RunDir(run).frontier, newline="") as f:
        frontier = list(csv.DictReader(f))
    last = frontier[-1]
    chosen, _ = load_model(RunDir(run).step_checkpoint(int(last["step"])))
    retimed = clock.time_graphs([*ends, clock.graph_of(chosen, size)], size, repeats=RETIME_BLOCKS)
    epochs = sum(int(r["epochs"]) for r in frontier)
    search = searches[0]
    one_float = one_float_ratio(clock, model, size)
    if epochs:  # uniform int8: the search's fine-tuning (recipe, batches) at its last step, for as many epochs
        FineTune(model, search.cfg, search.data, search.device, int(last["step"]), epochs, search.loss_fn).run_to(epochs)
    uniform_top1 = evaluate(model, search.data.test_batches())["test_top1"]  # at 0 epochs: the start itself
    floats = sum(1 for k, v in last.items() if k.endswith("/w") and v == "32")
    return {"model": "pipeline", "seed": seed, "int8_ms": int8, "fp32_ms": fp32, "target_ms": target,
            "predicted_ms": float(last["latency_ms_pred"]), "step_ms": float(last["latency_ms"]), **retime(retimed, args),
            "one_float_ratio": one_float, "float_layers": floats, "layers": sum(1 for k in last if k.endswith("/w")),
            "epochs": epochs,
            "top1": float(last["test_top1"]), "uniform_top1": uniform_top1,
            "step_errors": [float(r["latency_err"]) for r in frontier]}


def resnet18_data(args: argparse.Namespace) -> tuple:
    """Train, calibration and test loaders of ``user_nets.shapes`` drawn at 64x64 and resized to 224x224
    (other seeds per split): a task that ResNet-18 learns in a few epochs on 2 cores. The training loader
    shuffles by the global RNG, which the search's fine-tuning seeds per epoch (either arm the same batches)."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    def split(n: int, seed: int, shuffle: bool = False) -> DataLoader:
        x, y = shapes(n, seed).tensors
        big = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
        return DataLoader(TensorDataset(big, y), batch_size=16, shuffle=shuffle)

    return split(args.r18_train, 1, shuffle=True), split(args.r18_calib, 3), split(args.r18_test, 2)


def resnet18(args: argparse.Namespace) -> dict:
    """torchvision ResNet-18 at 224x224 on resized shapes: 8-bit QAT from scratch (``--r18-base-epochs``), then
    the latency-budget search with ``--r18-final-epochs`` of fine-tuning at ``--r18-lr`` against uniform int8
    QAT for as many epochs at that rate from the same start (the start itself at 0 epochs)."""
    import torchvision

    import proqha
    from proqha.deploy import latency_table

    torch.manual_seed(0)
    size = (3, 224, 224)
    train, calib, test = resnet18_data(args)
    example = next(iter(calib))[0]
    start = proqha.quantize(torchvision.models.resnet18(num_classes=6), example[:8], bits=8)
    proqha.fit(start, train, epochs=args.r18_base_epochs, optimizer="adam")
    clock = EngineLatency(args.engine, args.batch, threads=args.threads)
    ends = [clock.graph_of(start, size), clock.fp32_graph_of(start, size)]
    int8, fp32 = clock.time_graphs(ends, size, repeats=RETIME_BLOCKS)
    target = budget_ms(int8, fp32, args.fraction)
    uniform = copy.deepcopy(start)
    measurer = EngineLatency(args.engine, args.batch, threads=args.threads)
    original = latency_table.search_latency
    latency_table.search_latency = lambda cfg, run_dir, on_progress=None: measurer  # the same clock settings
    try:
        result = proqha.search_bits(start, train, calib, test, steps=1, **budget_options(int8, target, args),
                                    latency_engine=args.engine, latency_batch=args.batch, finetune_epochs=0,
                                    final_epochs=args.r18_final_epochs, lr=args.r18_lr, seed=SEARCH_SEED)
    finally:
        latency_table.search_latency = original
    last = result.steps[-1]
    retimed = clock.time_graphs([*ends, clock.graph_of(result.model, size)], size, repeats=RETIME_BLOCKS)
    floats = sum(1 for b in last["bits"].values() if b["w"] == 32)
    epochs = sum(int(r.get("epochs", 0)) for r in result.steps)
    one_float = one_float_ratio(clock, uniform, size)
    if epochs:  # uniform int8: the search's fine-tuning (recipe, batches) at its last step, for as many epochs
        cfg = SearchConfig(source="resnet18", lr=args.r18_lr, seed=SEARCH_SEED).resolved()
        FineTune(uniform, cfg, LoaderData(train), torch.device("cpu"), last["step"], epochs).run_to(epochs)
    uniform_top1 = proqha.evaluate(uniform, test)["test_top1"]
    return {"model": "resnet18-224", "seed": 0, "int8_ms": int8, "fp32_ms": fp32, "target_ms": target,
            "predicted_ms": last["latency_ms_pred"], "step_ms": last["latency_ms"], **retime(retimed, args),
            "one_float_ratio": one_float, "float_layers": floats, "layers": len(last["bits"]), "epochs": epochs,
            "top1": last["test_top1"], "start_top1": result.steps[0]["test_top1"], "uniform_top1": uniform_top1,
            "step_errors": [r["latency_err"] for r in result.steps]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="pipeline seeds (none: ResNet-18 only)")
    ap.add_argument("--fraction", type=float, default=0.5, help="where between int8 and fp32 the budget lies")
    ap.add_argument("--budget", default="ratio", choices=("ratio", "ms"),
                    help="the search's budget: a ratio to the int8 graph (timed beside it), or ms")
    ap.add_argument("--engine", default="ort", choices=("ort", "openvino"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's own)")
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--final-epochs", type=int, default=SearchConfig().final_epochs)
    ap.add_argument("--resnet18", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--r18-train", type=int, default=1200, help="ResNet-18's training images")
    ap.add_argument("--r18-calib", type=int, default=128, help="ResNet-18's calibration images")
    ap.add_argument("--r18-test", type=int, default=1500, help="ResNet-18's test images")
    ap.add_argument("--r18-base-epochs", type=int, default=3, help="ResNet-18's 8-bit QAT epochs from scratch")
    ap.add_argument("--r18-final-epochs", type=int, default=1, help="fine-tuning of the search and of uniform int8")
    ap.add_argument("--r18-lr", type=float, default=1e-4,
                    help="their Adam learning rate (one epoch at the search's 1e-3 moved top-1 by 4-10 points)")
    ap.add_argument("--out", type=Path, default=Path("search_latency_budget"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(pipeline_seed(seed, args, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.resnet18:
        rows.append(resnet18(args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ok = True
    print(f"{args.engine} batch {args.batch} on {cpu_name()}; budget: int8 + {args.fraction} x (fp32 - int8), "
          f"given as {'a ratio to int8' if args.budget == 'ratio' else 'ms'}")
    print(f"{'model':<13} {'seed':>4} {'int8 ms':>8} {'fp32 ms':>8} {'budget':>8} {'x int8':>6} {'pred':>8} "
          f"{'measured':>8} {'x int8':>6} {'/budget':>7} {'/ms-bud':>7} {'re-int8':>8} {'/re-bud':>7} {'float':>5} "
          f"{'top-1':>6} {'uniform':>7} {'max step err':>12} {'1-float':>7}")
    for r in rows:
        ratio = judged(r, args)
        good = abs(ratio - 1) <= TOLERANCE and not (r["top1"] < r["uniform_top1"])
        ok &= good
        print(f"{r['model']:<13} {r['seed']:>4} {r['int8_ms']:>8.4f} {r['fp32_ms']:>8.4f} {r['target_ms']:>8.4f} "
              f"{r['target_ms'] / r['int8_ms']:>6.3f} {r['predicted_ms']:>8.4f} {r['measured_ms']:>8.4f} "
              f"{r['measured_ratio']:>6.3f} {ratio:>7.3f} {r['measured_ms'] / r['target_ms']:>7.3f} "
              f"{r['retimed_int8_ms']:>8.4f} {r['measured_ms'] / r['retimed_target_ms']:>7.3f} "
              f"{r['float_layers']:>2}/{r['layers']:<2} "
              f"{r['top1']:>6.2f} {r['uniform_top1']:>7.2f} {max(abs(e) for e in r['step_errors']) * 100:>11.1f}% "
              f"{r['one_float_ratio']:>7.3f}{'' if good else '  MISS'}"
              f"{'  (no graph between int8 and the budget)' if empty_gap(r) else ''}")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"verdict: {'met' if ok else 'NOT met'} (measured latency within {TOLERANCE:.0%} of the budget, top-1 at "
          f"least uniform int8's); {(time.perf_counter() - t0) / 60:.1f} min")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
