"""Which post-training calibration should be the default? Every ``calib_method`` x ``bn_recalib`` at 8, 6 and
4 bit on float models trained here in plain PyTorch, on data proqha was not designed for.

    python benchmarks/ptq_calibration.py [--quick] [--seed 0] [--bits 8 6 4] [--tolerance 0.10]

Models (each trained once, in float, into a temporary folder that lives as long as the run):
  resnet18 shapes     torchvision ResNet-18 on the shapes folder of ``examples/own_float_model.py``
                      (its ``draw_folder``/``train_float``; image size 32), saved as a plain state dict
  mobilenet_v2 shapes torchvision MobileNetV2 (depthwise convs, ReLU6) on the same folder, trained with
                      train_float's recipe (Adam, one-cycle, batch 16), saved as a plain state dict
  digits_resnet       proqha's own network trained in float on digits (``proqha train --bits 32 --epochs 6``
                      through the library: ``train_run``)

Each arm is the CLI's path, ``proqha.ptq_run.quantize_run`` (calib_batches and percentile at their defaults),
with a resolved TrainConfig whose init is the float model; the quantized run it writes is read back to get
its logits, for the mean KL divergence KL(float || quantized) over the test images (and a check that the
saved run reproduces quantize_run's test loss). Per model a table: float top-1 and loss, each arm's
quantized top-1, top-1 drop (points), test loss, loss increase and KL; and, as the bn_recalib arms'
reference, the float model with its BatchNorm re-estimated on the same calibration images (a model whose
training-time statistics are off gains from that without any quantization). Test sets are a few hundred images,
so top-1 is coarse: the loss increase decides. Summary: per bit width, the arm with the lowest mean loss
increase over the models. Goal (exit 1 on a miss): the current default (``PTQConfig``'s calib_method and
bn_recalib) has a mean 8-bit loss increase within ``--tolerance`` (relative) of the best arm's.
``--quick``: fewer images and epochs, only the ResNet-18 (a smoke run; its verdict says little).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
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


def measure(model: FloatModel, bit_widths: list[int], seed: int, tmp: Path,
            log: Callable[[str], None]) -> tuple[dict[str, float], dict[tuple[int, str, bool], dict[str, float]]]:
    """The float figures of one model and each arm's."""
    base = config(model, bit_widths[0], seed)
    float_logits, labels = logits_of(base, quantized=False)
    floats = {"top1": 100.0 * float((float_logits.argmax(1) == labels).float().mean()),
              "loss": float(nn.functional.cross_entropy(float_logits, labels)), "images": len(labels)}
    bn_logits, _ = logits_of(base, quantized=False, bn_recalib=True)
    floats |= {"bn_top1": 100.0 * float((bn_logits.argmax(1) == labels).float().mean()),
               "bn_loss": float(nn.functional.cross_entropy(bn_logits, labels)), "bn_kl": mean_kl(float_logits, bn_logits)}
    arms: dict[tuple[int, str, bool], dict[str, float]] = {}
    for bits in bit_widths:
        cfg = config(model, bits, seed)
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
                    "time": time.perf_counter() - t0}
        shutil.rmtree(tmp / "arm", ignore_errors=True)
    return floats, arms


def arm_name(method: str, bn: bool) -> str:
    return f"{method}{' +bn' if bn else ''}"


def print_model(model: FloatModel, floats: dict[str, float], arms: dict) -> None:
    calib = next(iter(arms.values()))["calib"]
    print(f"\n== {model.name}: float top-1 {floats['top1']:.2f}%  loss {floats['loss']:.4f}  "
          f"({floats['images']} test images, {calib} calibration images; trained in {model.train_s:.0f}s)")
    print(f"float with BatchNorm re-estimated on the calibration images (no quantization; the bn arms' "
          f"reference): top-1 {floats['bn_top1']:.2f}%  loss {floats['bn_loss']:.4f} "
          f"({floats['bn_loss'] - floats['loss']:+.4f})  KL {floats['bn_kl']:.5f}")
    print(f"{'bits':>4} {'arm':16} {'top-1':>7} {'drop':>7} {'loss':>8} {'d loss':>9} {'KL':>9} {'warn':>4} "
          f"{'time':>5}")
    for (bits, method, bn), r in arms.items():
        print(f"{bits:>4} {arm_name(method, bn):16} {r['top1']:7.2f} {r['drop']:+7.2f} {r['loss']:8.4f} "
              f"{r['dloss']:+9.4f} {r['kl']:9.5f} {r['warnings']:>4} {r['time']:4.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs, one model (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4])
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="how far (relative) the default's mean 8-bit loss increase may exceed the best arm's")
    args = parser.parse_args(argv)
    if 8 not in args.bits:
        parser.error("--bits must include 8 (the default's goal)")
    bit_widths = [8] + [b for b in args.bits if b != 8]
    the_default = (default(PTQConfig, "calib_method"), default(PTQConfig, "bn_recalib"))
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default calib_method="
          f"{the_default[0]} bn_recalib={the_default[1]}", flush=True)
    results, bn_refs = [], []
    with tempfile.TemporaryDirectory(prefix="ptq_calibration-") as tmp_name:
        tmp = Path(tmp_name)
        for model in make_models(tmp, QUICK if args.quick else FULL, args.seed, args.quick):
            floats, arms = measure(model, bit_widths, args.seed, tmp, print)
            print_model(model, floats, arms)
            results.append(arms)
            bn_refs.append(floats["bn_loss"] - floats["loss"])

    print(f"\n== mean over {len(results)} model(s): loss increase (mean KL) per arm")
    print(f"{'arm':16} " + " ".join(f"{f'{b} bit':>20}" for b in bit_widths))
    means: dict[tuple[int, str, bool], float] = {}
    for method in CALIB_METHODS:
        for bn in BN_SETTINGS:
            cells = []
            for bits in bit_widths:
                key = (bits, method, bn)
                means[key] = sum(r[key]["dloss"] for r in results) / len(results)
                kl = sum(r[key]["kl"] for r in results) / len(results)
                cells.append(f"{means[key]:+9.4f} ({kl:8.5f})")
            mark = "  <- default" if (method, bn) == the_default else ""
            print(f"{arm_name(method, bn):16} " + " ".join(f"{c:>20}" for c in cells) + mark)
    print(f"{'(float +bn)':16} {sum(bn_refs) / len(bn_refs):+9.4f}: the loss change of re-estimating BatchNorm "
          "alone, without quantization")
    for bits in bit_widths:
        best = min(((m, bn) for m in CALIB_METHODS for bn in BN_SETTINGS), key=lambda a: means[(bits, *a)])
        print(f"best at {bits} bit: {arm_name(*best)} (mean loss increase {means[(bits, *best)]:+.4f}; default "
              f"{arm_name(*the_default)} {means[(bits, *the_default)]:+.4f})")
    best8 = min(((m, bn) for m in CALIB_METHODS for bn in BN_SETTINGS), key=lambda a: means[(8, *a)])
    best_inc, default_inc = means[(8, *best8)], means[(8, *the_default)]
    limit = best_inc + args.tolerance * abs(best_inc)
    ok = default_inc <= limit or math.isclose(default_inc, best_inc)
    print(f"verdict: default {arm_name(*the_default)} mean 8-bit loss increase {default_inc:+.4f} "
          f"{'within' if ok else 'NOT within'} {args.tolerance:.0%} of the best ({arm_name(*best8)} {best_inc:+.4f}, "
          f"limit {limit:+.4f}){'' if ok else ': MISS'}")
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
