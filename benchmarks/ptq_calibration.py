"""Which post-training calibration should be the default? Every ``calib_method`` x ``bn_recalib`` at 8, 6 and
4 bit on float models trained here in plain PyTorch, on data proqha was not designed for, over several seeds.

    python benchmarks/ptq_calibration.py [--quick] [--seeds 0,1] [--bits 8 6 4]

Models (trained anew for each seed, in float, into a temporary folder that lives as long as the seed's run; the
seed draws the shapes images, initializes and orders the training):
  resnet18 shapes     torchvision ResNet-18 on the shapes folder of ``examples/own_float_model.py``
                      (its ``draw_folder``/``train_float``; image size 32), saved as a plain state dict
  mobilenet_v2 shapes torchvision MobileNetV2 (depthwise convs, ReLU6) on the same folder, trained with
                      train_float's recipe (Adam, one-cycle, batch 16), saved as a plain state dict
  digits_resnet       proqha's own network trained in float on digits (``proqha train --bits 32 --epochs 6``
                      through the library: ``train_run``)

Each arm is the CLI's path, ``proqha.ptq_run.quantize_run`` (calib_batches and percentile at their defaults),
with a resolved TrainConfig whose init is the float model; the quantized run it writes is read back to get
its logits, for the mean KL divergence KL(float || quantized) over the test images (and a check that the
saved run reproduces quantize_run's test loss). Per (model, seed) a table: float top-1 and loss, each arm's
quantized top-1, top-1 drop (points), test loss, loss increase and KL; and, as the bn_recalib arms'
reference, the float model with its BatchNorm re-estimated on the same calibration images (a model whose
training-time statistics are off gains from that without any quantization). Test sets are a few hundred images,
so top-1 is coarse: the loss increase decides.

The default arm is ``PTQConfig()`` as ``quantize_run`` resolves it at each bit width: its calib_method, and
bn_recalib=None resolved by ``PTQConfig.recalibrates`` on the model's lowest layer width (off at 8 bit, on
below), so it is one of the measured arms at every width, labelled "<method> (default)"; it is not run again.
Summary: per bit width, each arm's mean loss increase over the (model, seed) pairs, and the verdict: the
default against the arm with the lowest mean loss increase, paired over the pairs (d_i = the default's loss
increase - that arm's; its mean and standard error over the n pairs). The default passes a width when
mean(d) <= 2 SE (not measurably worse than the best); exit 1 when it fails any width. With one pair (n = 1)
there is no standard error and it passes only as the best arm.
``--quick``: fewer images and epochs, one seed, only the ResNet-18 (a smoke run; its verdict says little).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from own_float_model import IMAGENET_STATS, draw_folder, train_float  # noqa: E402

from proqha.loaders import make_loader  # noqa: E402
from proqha.options import default  # noqa: E402
from proqha.ptq_config import CALIB_METHODS, PTQConfig  # noqa: E402
from proqha.ptq_run import quantize_run  # noqa: E402
from proqha.train_config import TrainConfig  # noqa: E402

IMAGE_SIZE = 32
BN_SETTINGS = (False, True)
FULL = {"train_per_class": 200, "val_per_class": 100, "shapes_epochs": 4, "mobilenet_epochs": 6, "digits_epochs": 6}
QUICK = {"train_per_class": 40, "val_per_class": 15, "shapes_epochs": 1, "mobilenet_epochs": 1, "digits_epochs": 1}
RELOAD_TOLERANCE = 1e-4  # the saved run's test loss against quantize_run's


@dataclass
class FloatModel:
    """A trained float model: the TrainConfig options that point proqha at it, and its own float figures."""

    name: str
    options: dict[str, Any]
    train_s: float
    own_top1: float | None = None  # as its training script measured it


def train_tv(root: Path, model: nn.Module, epochs: int, seed: int) -> float:
    """``train_float``'s recipe for any torchvision classifier; its val top-1."""
    T = torchvision.transforms
    resize = round(IMAGE_SIZE / 0.875)
    tf = T.Compose([T.Resize(resize), T.CenterCrop(IMAGE_SIZE), T.ToTensor(), T.Normalize(*IMAGENET_STATS)])
    train_tf = T.Compose([T.Resize(resize), T.RandomCrop(IMAGE_SIZE), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(*IMAGENET_STATS)])
    rgb = lambda path: Image.open(path).convert("RGB")  # noqa: E731
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=rgb)
    val = torchvision.datasets.ImageFolder(str(root / "val"), transform=tf, loader=rgb)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in torch.utils.data.DataLoader(val, batch_size=100))
    return 100.0 * right / len(val)


def make_models(tmp: Path, sizes: dict[str, int], seed: int, quick: bool) -> list[FloatModel]:
    """Train every float model once into ``tmp``."""
    models = []
    shapes = tmp / "shapes"
    draw_folder(shapes, sizes["train_per_class"], sizes["val_per_class"], seed)
    folder = {"dataset": "imagefolder", "data_dir": str(shapes), "image_size": IMAGE_SIZE}

    t0 = time.perf_counter()
    net, top1 = train_float(shapes, sizes["shapes_epochs"], IMAGE_SIZE, seed)
    torch.save(net.state_dict(), tmp / "resnet18.pth")
    models.append(FloatModel("resnet18 shapes", folder | {"arch": "resnet18", "init": str(tmp / "resnet18.pth")},
                             time.perf_counter() - t0, top1))
    print(f"trained {models[-1].name}: val top-1 {top1:.2f}% in {models[-1].train_s:.0f}s", flush=True)
    if quick:
        return models

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=len(list((shapes / "train").iterdir())))
    top1 = train_tv(shapes, net, sizes["mobilenet_epochs"], seed)
    torch.save(net.state_dict(), tmp / "mobilenet_v2.pth")
    models.append(FloatModel("mobilenet_v2 shapes", folder | {"arch": "mobilenet_v2",
                                                              "init": str(tmp / "mobilenet_v2.pth")},
                             time.perf_counter() - t0, top1))
    print(f"trained {models[-1].name}: val top-1 {top1:.2f}% in {models[-1].train_s:.0f}s", flush=True)

    from proqha.train import train_run

    t0 = time.perf_counter()
    run = tmp / "digits-float"
    train_run(TrainConfig(bits=32, epochs=sizes["digits_epochs"], seed=seed).resolved(), run)
    models.append(FloatModel("digits_resnet digits", {"init": str(run)}, time.perf_counter() - t0))
    print(f"trained {models[-1].name} (proqha train --bits 32 --epochs {sizes['digits_epochs']}) in "
          f"{models[-1].train_s:.0f}s", flush=True)
    return models


def config(model: FloatModel, bits: int, seed: int, init: str | None = None) -> TrainConfig:
    """The resolved TrainConfig of an arm, as ``proqha quantize`` builds it."""
    opts = model.options | ({"init": init} if init else {})
    return TrainConfig(bits=bits, seed=seed, **opts).following_init(tuple(opts)).resolved()


@torch.no_grad()
def logits_of(cfg: TrainConfig, quantized: bool, bn_recalib: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-set logits and labels of the model ``cfg.init`` names: quantized as saved, or its float twin
    (with ``bn_recalib``, its BatchNorm statistics re-estimated on the calibration batches a PTQConfig's
    defaults take, as ``quantize_run`` takes them: the float reference of the bn_recalib arms)."""
    from proqha.quant import float_twin
    from proqha.quant.ptq import recalibrate_batchnorm
    from proqha.train import prepare_model

    device = torch.device("cpu")
    model, _, _ = prepare_model(cfg, device)
    model = model.eval() if quantized else float_twin(model)
    if bn_recalib:
        loader = make_loader(cfg.data_source().load("calib"), cfg.batch_size, shuffle=False)
        batches = [x for x, _ in itertools.islice(loader, PTQConfig().calib_batches)]
        recalibrate_batchnorm(model, batches, device)
    outs, labels = [], []
    for x, y in make_loader(cfg.data_source().load("test"), cfg.batch_size, shuffle=False):
        outs.append(model(x).float())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def mean_kl(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> float:
    """Mean over images of KL(float || quantized) of the softmax outputs, in nats."""
    return float(nn.functional.kl_div(quant_logits.log_softmax(1), float_logits.log_softmax(1), log_target=True,
                                      reduction="batchmean"))


Arm = tuple[int, str, bool]  # (bits, calib_method, bn_recalib)


@dataclass
class Record:
    """One (model, seed) pair's measurements."""

    model: FloatModel
    seed: int
    floats: dict[str, float]
    arms: dict[Arm, dict[str, float]]
    default_bn: dict[int, bool]  # per bit width, what the default bn_recalib=None resolves to for this model


def measure(model: FloatModel, bit_widths: list[int], seed: int, tmp: Path,
            log: Callable[[str], None]) -> tuple[dict[str, float], dict[Arm, dict[str, float]], dict[int, bool]]:
    """The float figures of one model, each arm's, and per bit width the default's resolved bn_recalib."""
    from proqha.quant.ptq import lowest_bits
    from proqha.train import prepare_model

    base = config(model, bit_widths[0], seed)
    float_logits, labels = logits_of(base, quantized=False)
    floats = {"top1": 100.0 * float((float_logits.argmax(1) == labels).float().mean()),
              "loss": float(nn.functional.cross_entropy(float_logits, labels)), "images": len(labels)}
    bn_logits, _ = logits_of(base, quantized=False, bn_recalib=True)
    floats |= {"bn_top1": 100.0 * float((bn_logits.argmax(1) == labels).float().mean()),
               "bn_loss": float(nn.functional.cross_entropy(bn_logits, labels)), "bn_kl": mean_kl(float_logits, bn_logits)}
    arms: dict[Arm, dict[str, float]] = {}
    default_bn: dict[int, bool] = {}
    for bits in bit_widths:
        cfg = config(model, bits, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            default_bn[bits] = PTQConfig().recalibrates(lowest_bits(prepare_model(cfg, torch.device("cpu"))[0]))
        for method in CALIB_METHODS:
            for bn in BN_SETTINGS:
                run_dir = tmp / "arm"
                shutil.rmtree(run_dir, ignore_errors=True)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = quantize_run(cfg, PTQConfig(calib_method=method, bn_recalib=bn), run_dir)
                quant_logits, _ = logits_of(config(model, bits, seed, init=str(run_dir)), quantized=True)
                reloaded = float(nn.functional.cross_entropy(quant_logits, labels))
                q, f = result["quantized"], result["float"]
                if abs(f["test_loss"] - floats["loss"]) > RELOAD_TOLERANCE:
                    log(f"  note: quantize_run's float loss {f['test_loss']:.5f} differs from the float twin's "
                        f"{floats['loss']:.5f}")
                if abs(reloaded - q["test_loss"]) > RELOAD_TOLERANCE:
                    log(f"  note: {bits} bit {method} bn={bn}: the saved run's test loss {reloaded:.5f} differs from "
                        f"quantize_run's {q['test_loss']:.5f}")
                arms[(bits, method, bn)] = {
                    "top1": q["test_top1"], "drop": result["drop"], "loss": q["test_loss"],
                    "dloss": q["test_loss"] - f["test_loss"], "kl": mean_kl(float_logits, quant_logits),
                    "calib": result["calib_images"], "warnings": len(result["warnings"]),
                    "bn_layers": result["bn_layers"], "time": time.perf_counter() - t0}
        shutil.rmtree(tmp / "arm", ignore_errors=True)
    return floats, arms, default_bn


def arm_name(method: str, bn: bool) -> str:
    return f"{method}{' +bn' if bn else ''}"


def default_method() -> str:
    return default(PTQConfig, "calib_method")


def label(bits: int, method: str, bn: bool, default_bn: dict[int, bool]) -> str:
    """An arm's name, "<method> (default)" where it is the default at that width."""
    is_default = method == default_method() and bn == default_bn[bits]
    return f"{method} (default)" if is_default else arm_name(method, bn)


def print_record(rec: Record) -> None:
    floats, arms = rec.floats, rec.arms
    calib = next(iter(arms.values()))["calib"]
    print(f"\n== {rec.model.name}, seed {rec.seed}: float top-1 {floats['top1']:.2f}%  loss {floats['loss']:.4f}  "
          f"({floats['images']} test images, {calib} calibration images; trained in {rec.model.train_s:.0f}s)")
    print(f"float with BatchNorm re-estimated on the calibration images (no quantization; the bn arms' "
          f"reference): top-1 {floats['bn_top1']:.2f}%  loss {floats['bn_loss']:.4f} "
          f"({floats['bn_loss'] - floats['loss']:+.4f})  KL {floats['bn_kl']:.5f}")
    print(f"{'bits':>4} {'arm':16} {'bn':>3} {'top-1':>7} {'drop':>7} {'loss':>8} {'d loss':>9} {'KL':>9} "
          f"{'warn':>4} {'time':>5}")
    for (bits, method, bn), r in arms.items():
        print(f"{bits:>4} {label(bits, method, bn, rec.default_bn):16} {'on' if bn else 'off':>3} {r['top1']:7.2f} "
              f"{r['drop']:+7.2f} {r['loss']:8.4f} {r['dloss']:+9.4f} {r['kl']:9.5f} {r['warnings']:>4} "
              f"{r['time']:4.1f}s")


def paired(records: list[Record], bits: int, best: tuple[str, bool]) -> tuple[float, float, int]:
    """mean(d) and its standard error over the pairs, d_i = the default's loss increase - ``best``'s."""
    d = [r.arms[(bits, default_method(), r.default_bn[bits])]["dloss"] - r.arms[(bits, *best)]["dloss"]
         for r in records]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return statistics.fmean(d), se, len(d)


def why(ok: bool, mean_d: float, count: int) -> str:
    if count < 2:
        return "the best arm (n 1: no SE)" if ok else "n 1: no SE, and not the best arm"
    return "not measurably worse than the best" if ok else "mean(d) > 2 SE: measurably worse than the best"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"one or more distinct seeds, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer images and epochs, one seed (the first), one model (a smoke run)")
    parser.add_argument("--seeds", type=parse_seeds, default=[0, 1],
                        help="comma-separated seeds; each retrains the float models (default 0,1)")
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4])
    args = parser.parse_args(argv)
    bit_widths = list(dict.fromkeys(args.bits))
    seeds = args.seeds[:1] if args.quick else args.seeds
    arm_keys = [(m, bn) for m in CALIB_METHODS for bn in BN_SETTINGS]
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seeds {seeds}; default calib_method="
          f"{default_method()} bn_recalib={default(PTQConfig, 'bn_recalib')} (resolved per bit width)", flush=True)
    records: list[Record] = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="ptq_calibration-") as tmp_name:
            tmp = Path(tmp_name)
            print(f"\n-- seed {seed}", flush=True)
            for model in make_models(tmp, QUICK if args.quick else FULL, seed, args.quick):
                floats, arms, default_bn = measure(model, bit_widths, seed, tmp, print)
                records.append(Record(model, seed, floats, arms, default_bn))
                print_record(records[-1])
                print(f"(elapsed {time.perf_counter() - start:.0f}s)", flush=True)

    n = len(records)
    resolved = {}
    for bits in bit_widths:
        settings = {r.default_bn[bits] for r in records}
        resolved[bits] = "on" if settings == {True} else "off" if settings == {False} else "mixed"
    print(f"\n== mean over {n} (model, seed) pair(s): loss increase (mean KL) per arm")
    print(f"{'arm':16} " + " ".join(f"{f'{b} bit ':>21}" for b in bit_widths))
    means: dict[Arm, float] = {}
    for method, bn in arm_keys:
        cells = []
        for bits in bit_widths:
            key = (bits, method, bn)
            means[key] = statistics.fmean(r.arms[key]["dloss"] for r in records)
            kl = statistics.fmean(r.arms[key]["kl"] for r in records)
            star = "*" if method == default_method() and resolved[bits] == ("on" if bn else "off") else " "
            cells.append(f"{means[key]:+9.4f} ({kl:8.5f}){star}")
        print(f"{arm_name(method, bn):16} " + " ".join(f"{c:>21}" for c in cells))
    cells = []
    for bits in bit_widths:
        inc = statistics.fmean(r.arms[(bits, default_method(), r.default_bn[bits])]["dloss"] for r in records)
        cells.append(f"{inc:+9.4f} (bn {resolved[bits]:>5}) ")
    print(f"{default_method() + ' (default)':16} " + " ".join(f"{c:>21}" for c in cells))
    print(f"{'(float +bn)':16} {statistics.fmean(r.floats['bn_loss'] - r.floats['loss'] for r in records):+9.4f}: "
          "the loss change of re-estimating BatchNorm alone, without quantization")
    print("* = the default's arm at that width (calib_method default, bn_recalib=None resolved)")

    lines, ok_all = [], True
    for bits in bit_widths:
        best = min(arm_keys, key=lambda a: means[(bits, *a)])
        mean_d, se, count = paired(records, bits, best)
        default_inc = statistics.fmean(r.arms[(bits, default_method(), r.default_bn[bits])]["dloss"] for r in records)
        ok = mean_d <= 2 * se or math.isclose(mean_d, 0.0, abs_tol=1e-12)
        ok_all &= ok
        se_text = f"{se:.4f}" if count > 1 else "n/a"
        lines.append(f"{bits} bit: default {default_method()} (bn {resolved[bits]}) {default_inc:+.4f}, best "
                     f"{arm_name(*best)} {means[(bits, *best)]:+.4f}; mean(d) {mean_d:+.4f}, SE {se_text}, n {count}"
                     f" -> {'PASS' if ok else 'FAIL'} ({why(ok, mean_d, count)})")
    print(f"\n== summary: default arm = calib_method {default_method()} + bn_recalib "
          f"{default(PTQConfig, 'bn_recalib')} (resolved per width) against the best arm by mean loss increase, "
          f"paired over {n} (model, seed) pair(s), seeds {seeds}; pass when mean(d) <= 2 SE")
    for line in lines:
        print("  " + line)
    print(f"  verdict: {'PASS at every width' if ok_all else 'FAIL'}; total {time.perf_counter() - start:.0f}s")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
