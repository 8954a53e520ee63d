"""torchvision's classifiers (or segmentation networks, or detector heads) through proqha: convert, export, int8
kernels, parity and latency, one row each.

    python benchmarks/zoo.py [--models resnet18,convnext_tiny] [--size 64] [--bits 8|mixed] [--iters 20]
    python benchmarks/zoo.py --task segmentation|detection [--size 128] [--reference] [--dynamic-size]

Every classification model in ``torchvision.models`` (random weights, 10 classes, nothing downloaded),
its quantizer ranges and BatchNorm statistics set on 8 random images (two passes at the default momentum:
exact per-channel statistics of random features make some channels' gains huge, and the network
chaotic). Per model: converted, exported (or the one-line reason it is refused), int8 kernels / all
conv+linear+matmul in onnxruntime's optimized graph, top-1 agreement with PyTorch (ties within one output
step count), the largest and mean logit difference in output steps, the model's noise floor (mean steps
PyTorch itself moves when the input moves by 1e-5), and onnxruntime int8 latency against the float graph
of the same model (batch 1, 2 threads, interleaved, same run).
With ``--task segmentation``: every model in ``torchvision.models.segmentation`` (5 classes, no auxiliary
head, wrapped in ``proqha.OutputOf(model, "out")``) on images with regions (``scenes``), its class scores
centred and spread (``centre_classes``: random heads score one class everywhere), BatchNorm statistics exact
and every range calibrated again (minmax); judged per pixel (argmax over classes at every position, output
steps of the grid before the final upsampling). Exact statistics make these deep random networks chaotic
(the noise floor reaches 15 steps), so their parity is also proved layer by layer (``per_layer_steps``:
each quantized tensor fed onnxruntime's own input, at most one step off).
With ``--task detection``: the backbone and head of RetinaNet (v1, v2), FCOS and SSDlite
(``proqha.DetectionHeads``: (batch, classes + 4 (+ 1), anchors), box decoding left out), judged the same way;
their output concatenates several grids, so it has no output steps. ``--dynamic-size`` also exports each with
a dynamic height and width and requires its outputs at 1.5 x 2 times the size to equal, bit for bit, those of
a static export at that size.
Exits 1 if a model that exports misses the zoo rules: every conv/linear/matmul in an int8 kernel, no int16
pair overflow possible, top-1 agreement >= min(90%, the floor's) and a mean logit difference
<= max(1, the floor's) output steps. The export's own rules (>= 99% of logits within 2 steps) are
reported beside them but not required here: in these random networks a one-step tie between PyTorch's and onnxruntime's rounding is amplified by
the layers after it (with exact BatchNorm statistics, noise of 1e-3 on the input moved googlenet's quantized
logits by up to 53 output steps; vit_b_16's floor is several steps), which trained networks do not do.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from google.protobuf.message import EncodeError
from torch.utils.data import DataLoader, TensorDataset

from proqha.errors import ProqhaError
from proqha.export.layer_parity import per_layer_steps
from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import check_pair_sums
from proqha.export.validate import ValidationReport, validate_export
from proqha.quant import QuantConfig, float_twin, quantize_model, searchable_layers
from proqha.quant.ptq import calibrate_ranges

MIN_SIZE = {"inception_v3": 96}  # its stem needs at least 75x75
FIXED_SIZE = ("vit_", "swin_", "maxvit_")  # built for 224x224


def classifiers() -> list[str]:
    """Every classification model torchvision offers."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def segmenters() -> list[str]:
    """Every semantic segmentation model torchvision offers."""
    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def calibrated_segmenter(name: str, size: int, bits: str = "8", seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """``calibrated_model`` for a torchvision segmentation network, its ``out`` as the one output."""
    from proqha.models.outputs import OutputOf

    torch.manual_seed(seed)
    model = OutputOf(torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5,
                                                  aux_loss=False), "out")
    return calibrated_dense(model, size, bits, seed, centre=True)


def calibrated_dense(model: torch.nn.Module, size: int, bits: str, seed: int, centre: bool
                     ) -> tuple[torch.nn.Module, torch.Tensor]:
    """A dense network calibrated on ``scenes`` with exact BatchNorm statistics, its class scores centred
    (``centre``), then every range again (minmax); and its held-out images."""
    exact_statistics(model)
    x = scenes(24, size)
    q, held_out = calibrate(model, size, bits, seed, x)
    if centre:
        centre_classes(q, x[:8])
    calibrate_ranges(q, [x[:8]], "minmax")  # every range again, for the centred scores
    return q.eval(), held_out


DETECTORS = ("fcos_resnet50_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large")


def calibrated_detector(name: str, size: int, bits: str = "8", seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """``calibrated_model`` for the backbone and head of a torchvision one-stage detector
    (``proqha.DetectionHeads``: raw scores and box regressions per anchor, no decoding)."""
    from proqha.models.outputs import DetectionHeads

    torch.manual_seed(seed)
    model = DetectionHeads(torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5))
    return calibrated_dense(model, size, bits, seed, centre=False)


def exact_statistics(model: torch.nn.Module) -> None:
    """BatchNorm statistics averaged over the calibration passes: at momentum 0.1 (0.01 in MobileNetV3) a deep
    random net keeps them near 0 and 1, and its features fade to constants within a few stages."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None


def scenes(n: int, size: int) -> torch.Tensor:
    """Images with regions (smooth random fields, upsampled from 1/16 of the size, plus pixel noise): on white
    noise a segmenter's scores barely change from pixel to pixel."""
    coarse = torch.randn(n, 3, max(2, size // 16), max(2, size // 16))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") + 0.3 * torch.randn(
        n, 3, size, size)


def centre_classes(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Give a random-weight segmenter trained-looking class scores: the last conv that outputs class scores
    gets its per-class mean over ``x`` taken off its bias (else the mean feature's projection, the same at
    every pixel, picks one class everywhere) and its spread widened to about 4 per pixel."""
    model.eval()
    with torch.no_grad():
        out = model(x)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == out.shape[1]][-1]
        head.weight.mul_(4.0 / max(float(out.std(1).mean()), 1e-6))
        head.bias.sub_(model(x).mean((0, 2, 3)))


def input_size(name: str, size: int) -> int:
    return 224 if name.startswith(FIXED_SIZE) else max(size, MIN_SIZE.get(name, 0))


def calibrated_model(name: str, size: int, bits: str = "8", seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """The quantized twin of a random-weight torchvision classifier with trained-looking statistics, at
    uniform 8 bit or a mixed config (every searchable knob cycling through 2..8), and held-out images."""
    torch.manual_seed(seed)
    options = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        options |= {"aux_logits": False, "init_weights": True}
    return calibrate(torchvision.models.get_model(name, weights=None, **options), size, bits, seed)


def calibrate(model: torch.nn.Module, size: int, bits: str = "8", seed: int = 0, x: torch.Tensor | None = None
              ) -> tuple[torch.nn.Module, torch.Tensor]:
    """``calibrated_model`` for a float model built by the caller (on 24 images ``x``, default random)."""
    torch.manual_seed(seed)
    model = model.eval()
    for m in model.modules():  # torchvision starts classifiers near zero (std 0.01): logits would all be 0
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    x = torch.randn(24, 3, size, size) if x is None else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_model(model, QuantConfig(bits=8), (3, size, size))
    q.train()
    with torch.no_grad():
        for _ in range(2):  # quantizer ranges and BatchNorm statistics (default momentum) from 8 images
            q(x[:8])
    q.eval()
    if bits == "mixed":
        cycle = itertools.cycle(range(2, 9))
        for layer in searchable_layers(q).values():
            layer.set_bits(w=next(cycle), a=next(cycle))
    return q, x[8:]


ZOO_MIN_AGREEMENT = 90.0  # % top-1 agreement (ties within one output step count)
ZOO_MAX_MEAN_STEPS = 1.0
ZOO_MAX_LAYER_STEPS = 1.0  # per layer, each fed the runtime's input: a rounding tie at most


ZOO_MIN_SPREAD = 8.0  # output steps between the largest and smallest logit of an image, on average


def logit_spread(model: torch.nn.Module, x: torch.Tensor, output_step: float | None) -> float | None:
    """Mean (max - min) logit per image in output steps: a model whose logits all sit on one or two steps
    agrees with any runtime and proves nothing. None when the logits have no output grid (squeezenet's
    pool after its last quantizer)."""
    if output_step is None:
        return None
    with torch.no_grad():
        y = model(x)
    return float((y.amax(1) - y.amin(1)).mean() / output_step)


def classes_predicted(model: torch.nn.Module, x: torch.Tensor) -> int:
    """How many classes the model's argmax picks over ``x`` (every pixel of a dense output): one class
    everywhere agrees with any runtime and proves nothing."""
    with torch.no_grad():
        return int(model(x).argmax(1).unique().numel())


NOISE = 1e-5  # input perturbation of the noise floor


@dataclass(frozen=True)
class NoiseFloor:
    """How far PyTorch's own quantized model moves when its input moves by ``NOISE``: mean logit change in
    output steps and top-1 agreement (%). Float rounding alone carries one-step ties that far through the
    network; no runtime can be asked to agree more closely."""

    mean_steps: float = 0.0
    agreement: float = 100.0


def noise_floor(model: torch.nn.Module, x: torch.Tensor, output_step: float | None, draws: int = 3) -> NoiseFloor:
    """The model's ``NoiseFloor`` on images ``x``: the largest move over ``draws`` perturbations (steps
    only where the output has a grid; agreement per pixel for a dense output)."""
    steps, agreement = 0.0, 100.0
    with torch.no_grad():
        a = model(x)
        for _ in range(draws):
            b = model(x + NOISE * torch.randn_like(x))
            if output_step is not None:
                steps = max(steps, float((a - b).abs().mean() / output_step))
            agreement = min(agreement, 100.0 * float((a.argmax(1) == b.argmax(1)).float().mean()))
    return NoiseFloor(steps, agreement)


def zoo_failures(report: ValidationReport, layers: int, pair_overflows: list[str], spread: float | None,
                 floor: NoiseFloor = NoiseFloor(), layer_steps: float | None = None, predicted: int | None = None
                 ) -> list[str]:
    """The zoo rules (module docstring) a validated random-weight export misses; the model's noise
    ``floor`` relaxes the bounds for networks that amplify ties more than they allow; ``layer_steps``: the
    largest per-layer difference (``per_layer_steps``), at most one step; ``predicted``: how many classes
    its argmax picks (at least 2)."""
    ort = report.parity[0]
    failures = list(pair_overflows)
    if layer_steps is not None and layer_steps > ZOO_MAX_LAYER_STEPS + 1e-4:
        failures.append(f"a layer fed onnxruntime's own input is {layer_steps:.2f} output steps off (> "
                        f"{ZOO_MAX_LAYER_STEPS})")
    if predicted is not None and predicted < 2:
        failures.append("degenerate output: one class predicted everywhere")
    if spread is not None and spread < ZOO_MIN_SPREAD:
        failures.append(f"degenerate logits: mean spread {spread:.1f} < {ZOO_MIN_SPREAD} output steps")
    if report.kernels.integer_layers != layers:
        failures.append(f"{report.kernels.integer_layers} of {layers} conv/linear/matmul layers in int8 kernels")
    least = min(ZOO_MIN_AGREEMENT, floor.agreement)
    if ort.agreement_ties < least:
        failures.append(f"top-1 agreement {ort.agreement_ties:.1f}% < {least:.1f}%")
    bound = max(ZOO_MAX_MEAN_STEPS, floor.mean_steps)
    if ort.mean_steps is not None and ort.mean_steps > bound:
        failures.append(f"mean logit difference {ort.mean_steps:.2f} > {bound:.2f} output steps")
    return failures


def _session(proto):
    """An onnxruntime session of a graph, through a file with external weights when it is over 2 GB
    (protobuf's limit: the fp32 graphs of regnet_y_128gf and vit_h_14)."""
    try:
        return ort_session(proto.SerializeToString(), threads=2, spin=False)
    except EncodeError:  # over protobuf's 2 GB
        pass
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as folder:  # the session holds the weights once created
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(proto, path, save_as_external_data=True, location="weights.bin")
        return ort_session(path, threads=2, spin=False)


def _median_ms(session, x: np.ndarray, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def zoo_row(name: str, size: int, bits: str, iters: int, task: str = "classification", reference: bool = False,
            dynamic: bool = False) -> dict:
    """Convert, export, validate and time one model; a refusal is recorded with its one-line reason. With
    ``dynamic``, the dynamic-size export is checked too (``dynamic_difference``, a miss unless 0)."""
    dense = task != "classification"
    s = size if dense else input_size(name, size)
    row = {"model": name, "size": s, "converted": False, "exported": False}
    try:
        q, x = TASKS[task][1](name, s, bits)
        row["converted"] = True
        proto, info = export_onnx(q, (3, s, s))
        row["exported"] = True
    except ProqhaError as exc:
        row["reason"] = str(exc)
        return row
    report = validate_export(proto, info, q, DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                                        batch_size=8), reference=reference)
    ort = report.parity[0]
    floor = noise_floor(q, x, info.output_scale)
    layer_steps = max(per_layer_steps(q, proto, x).values(), default=0.0) if dense else None
    failures = zoo_failures(report, info.all_layers, check_pair_sums(proto), logit_spread(q, x, info.output_scale),
                            floor, layer_steps, classes_predicted(q, x) if dense else None)
    row |= {"floor": floor, "layer_steps": layer_steps, "int8": report.kernels.integer_layers, "layers": info.all_layers,
            "agreement": ort.agreement_ties,
            "max_steps": ort.max_steps, "mean_steps": ort.mean_steps, "ok": not failures, "failures": failures,
            "export_rules": report.ok, "reference": report.parity[1] if reference else None}
    if dynamic:
        try:
            row["dynamic_diff"] = dynamic_difference(q, x, s)
        except ProqhaError as exc:
            row["failures"].append(f"dynamic size refused: {exc}")
        else:
            if row["dynamic_diff"] != 0:
                row["failures"].append(f"dynamic size: {row['dynamic_diff']:.3g} off the static export")
        row["ok"] = not row["failures"]
    if iters:
        fp32, _ = export_onnx(float_twin(q), (3, s, s), quantized=False)
        sessions = [_session(p) for p in (proto, fp32)]
        one = x[:1].numpy()
        for session in sessions:
            session.run(None, {"input": one})
        int8_ms, fp32_ms = _median_ms(sessions[0], one, iters), _median_ms(sessions[1], one, iters)
        row |= {"int8_ms": int8_ms, "fp32_ms": fp32_ms}
    return row


def dynamic_check_size(size: int) -> tuple[int, int]:
    """Where ``--dynamic-size`` runs a graph traced at ``size`` x ``size``: 1.5 x 2 times it."""
    return size * 3 // 2, size * 2


def dynamic_difference(q: torch.nn.Module, x: torch.Tensor, size: int) -> float:
    """The graph exported with a dynamic height and width at ``size``, run at ``dynamic_check_size``, against
    a static export at that size: the largest difference of their outputs (0 when they agree bit for bit)."""
    other = dynamic_check_size(size)
    dynamic = _session(export_onnx(q, (3, size, size), dynamic_size=True)[0])
    static = _session(export_onnx(q, (3, *other))[0])
    xx = torch.nn.functional.interpolate(x[:2], size=other, mode="bilinear").numpy()
    return float(np.abs(dynamic.run(None, {"input": xx})[0] - static.run(None, {"input": xx})[0]).max())


TASKS = {"classification": (classifiers, calibrated_model), "segmentation": (segmenters, calibrated_segmenter),
         "detection": (lambda: list(DETECTORS), calibrated_detector)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated (default: every torchvision model of the task)")
    ap.add_argument("--task", choices=tuple(TASKS), default="classification")
    ap.add_argument("--size", type=int, default=None, help="input height and width (default 64; 128 to segment "
                                                             "or detect)")
    ap.add_argument("--bits", choices=("8", "mixed"), default="8")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reference", action="store_true", help="also measure parity in the ONNX reference evaluator "
                                                             "(reported, not a zoo rule)")
    ap.add_argument("--dynamic-size", action="store_true", help="also export with a dynamic height and width and "
                                                                "require its outputs at 1.5 x 2 times the size to "
                                                                "equal a static export's there")
    args = ap.parse_args()
    size = args.size or (64 if args.task == "classification" else 128)
    names = args.models.split(",") if args.models else TASKS[args.task][0]()
    print(f"{'model':<22} {'size':>4} {'conv':>4} {'export':>6} {'int8/all':>9} {'agree':>7} {'max steps':>9} "
          f"{'mean':>5} {'floor':>5} {'f.agr':>6} {'layer':>5} {'rules':>5} {'int8 ms':>8} {'fp32 ms':>8} {'ratio':>6}  note")
    misses = 0
    for name in names:
        r = zoo_row(name, size, args.bits, args.iters, args.task, args.reference, args.dynamic_size)
        if not r["exported"]:
            print(f"{name:<22} {r['size']:>4} {'yes' if r['converted'] else 'no':>4} {'no':>6}  refused: {r['reason']}",
                  flush=True)
            continue
        steps = "-" if r["max_steps"] is None else f"{r['max_steps']:.1f}"
        mean = "-" if r["mean_steps"] is None else f"{r['mean_steps']:.2f}"
        rules = "pass" if r["export_rules"] else "miss"
        layer = "-" if r["layer_steps"] is None else f"{r['layer_steps']:.2f}"
        ratio = f"{r['int8_ms'] / r['fp32_ms']:.2f}" if "int8_ms" in r else "-"
        times = f"{r.get('int8_ms', float('nan')):8.2f} {r.get('fp32_ms', float('nan')):8.2f}"
        note = "" if r["ok"] else "MISS: " + "; ".join(r["failures"])
        misses += not r["ok"]
        print(f"{name:<22} {r['size']:>4} {'yes':>4} {'yes':>6} {r['int8']:>4}/{r['layers']:<4} {r['agreement']:6.1f}% "
              f"{steps:>9} {mean:>5} {r['floor'].mean_steps:5.2f} {r['floor'].agreement:5.1f}% {layer:>5} {rules:>5} "
              f"{times} {ratio:>6}  {note}", flush=True)
        if r["reference"] is not None:
            ref = r["reference"]
            steps = "" if ref.max_steps is None else f", max {ref.max_steps:.1f} / mean {ref.mean_steps:.2f} steps"
            print(f"{'':<22} onnx.reference: agreement {ref.agreement_ties:.1f}%{steps}", flush=True)
        if "dynamic_diff" in r:
            h, w = dynamic_check_size(r["size"])
            print(f"{'':<22} dynamic size at {h}x{w}: largest difference from the static export "
                  f"{r['dynamic_diff']:.3g}", flush=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
