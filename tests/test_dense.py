"""Dense prediction: upsampling exports at PyTorch's sample positions, dense outputs are judged per pixel, and a
model that returns a dict of outputs is one line saying how to pick one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import calibrate_bn
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import proqha
from proqha.errors import ProqhaError
from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.parity import Parity
from proqha.export.validate import validate_export
from proqha.quant import QuantConfig, float_twin, quantize_model


class Upsampler(nn.Module):
    """conv (stride 2) -> upsampling -> conv: the upsampling between two quantized layers, as in a decoder."""

    def __init__(self, up) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = up
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.down(x)
        y = self.up(y, x) if not isinstance(self.up, nn.Module) else self.up(y)
        return self.head(y)


UPSAMPLINGS = {  # name: the upsampling, an input size whose ratio it exercises
    "nearest-scale": (lambda y, x: F.interpolate(y, scale_factor=2, mode="nearest"), 12),
    "nearest-size-odd": (lambda y, x: F.interpolate(y, size=x.shape[-2:], mode="nearest"), 13),  # 7 -> 13
    "nearest-exact-size": (lambda y, x: F.interpolate(y, size=x.shape[-2:], mode="nearest-exact"), 13),
    "bilinear-size": (lambda y, x: F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False), 13),
    "bilinear-corners": (lambda y, x: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True), 12),
    "bilinear-scale-1.5": (lambda y, x: F.interpolate(y, scale_factor=1.5, mode="bilinear"), 12),
    "upsample-module": (nn.Upsample(scale_factor=2, mode="nearest"), 12),
    "upsampling-bilinear2d": (nn.UpsamplingBilinear2d(size=(11, 9)), 12),
}


def _quantized(up, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = quantize_model(Upsampler(up), QuantConfig(bits=8), (3, size, size))
    x = torch.randn(24, 3, size, size)
    calibrate_bn(model, x[:8])
    return model, x[8:]


@pytest.mark.parametrize("case", UPSAMPLINGS)
def test_upsampling_samples_where_pytorch_does(case):
    """The float graph of each mode, size or scale and align_corners: onnx.reference and onnxruntime compute
    PyTorch's values (float rounding apart), at a batch the graph was not traced with."""
    up, size = UPSAMPLINGS[case]
    model, x = _quantized(up, size)
    proto, _ = export_onnx(float_twin(model), (3, size, size), quantized=False)
    assert [n.op_type for n in proto.graph.node].count("Resize") == 1
    x = x[:3]  # not the trace's batch
    with torch.no_grad():
        want = float_twin(model).eval()(x).numpy()
    feed = {"input": x.numpy()}
    for got in (ReferenceEvaluator(proto).run(None, feed)[0], ort_session(proto.SerializeToString()).run(None, feed)[0]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["nearest-size-odd", "bilinear-size", "bilinear-corners"])
def test_quantized_upsampling_exports_within_the_parity_rules(case):
    """Between two quantized convs the Resize runs in float between DequantizeLinear and QuantizeLinear;
    every conv stays in an int8 kernel and the export's own rules hold in onnxruntime and onnx.reference."""
    up, size = UPSAMPLINGS[case]
    model, x = _quantized(up, size)
    proto, info = export_onnx(model, (3, size, size))
    report = validate_export(proto, info, model, DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                                            batch_size=8))
    assert report.failures == []
    assert report.kernels.integer_layers == 2 and report.kernels.float_layers == 0
    assert [p.samples for p in report.parity] == [len(x) * size * size] * 2  # judged per pixel


def test_dense_parity_is_per_pixel():
    """Argmax over classes at every position, labels per pixel, and output steps over every value."""
    ref = np.zeros((2, 3, 2, 2), np.float32)
    ref[:, 1] = 1.0  # class 1 everywhere
    out = ref.copy()
    out[0, :, 0, 0] = [0.0, 0.0, 2.0]  # one pixel of eight picks class 2
    labels = np.ones((2, 2, 2), np.int64)
    p = Parity("onnxruntime")
    p.update(ref, out, labels, step=0.5)
    assert p.samples == 8
    assert p.agreement == pytest.approx(100 * 7 / 8)
    assert p.torch_top1 == 100.0 and p.runtime_top1 == pytest.approx(100 * 7 / 8)
    assert p.max_steps == pytest.approx(4.0)  # 2.0 - 0.0 at class 2, in steps of 0.5
    assert p.within_2_steps == pytest.approx(100 * 23 / 24)  # class 1 moved 2 steps (within), class 2 four
    with pytest.raises(ProqhaError, match="output shape"):
        p.update(ref, out[:, :2], labels, step=0.5)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return {"out": y, "aux": y * 2}


def test_a_model_that_returns_a_dict_is_told_how_to_wrap_it():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ProqhaError, match=r"returns a dict of outputs \('out', 'aux'\); wrap it so it returns one "
                                          r"tensor: proqha.OutputOf\(model, 'out'\)"):
        proqha.quantize(TwoOutputs(), x)
    q = proqha.quantize(proqha.OutputOf(TwoOutputs(), "out"), x)
    assert tuple(q(x).shape) == (2, 4, 8, 8)


def test_a_dense_model_exports_through_the_api(tmp_path):
    """``proqha.quantize`` takes a (batch, classes, H, W) output and ``proqha.export_onnx`` validates it per pixel."""
    torch.manual_seed(0)
    net = proqha.OutputOf(TwoOutputs(), "out")
    x = torch.randn(8, 3, 8, 8)
    q = proqha.quantize(net, x, calib_data=[x])
    report = proqha.export_onnx(q, tmp_path / "dense.onnx", (3, 8, 8))
    assert report.ok and report.parity[0].samples == 64 * 8 * 8
    out = ort_session((tmp_path / "dense.onnx").read_bytes()).run(None, {"input": x.numpy()})[0]
    assert out.shape == (8, 4, 8, 8)
    assert onnx.load(tmp_path / "dense.onnx").graph.output[0].type.tensor_type.shape.dim[2].dim_value == 8


def test_the_segmentation_example_keeps_its_mean_iou_in_the_file(tmp_path):
    """examples/segmentation.py end to end: trains, searches two steps, exports with per-pixel parity, and the
    written file's mean IoU in onnxruntime is the PyTorch model's."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "segmentation.py"
    done = subprocess.run([sys.executable, str(example), "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"mean IoU: PyTorch ([\d.]+)%, onnxruntime \(the file\) ([\d.]+)%", done.stdout)
    assert found, done.stdout
    torch_miou, file_miou = map(float, found.groups())
    assert torch_miou > 50 and abs(torch_miou - file_miou) <= 0.5
    assert len(re.findall(r"^search step \d", done.stdout, re.M)) == 3  # the start and two steps
    assert (tmp_path / "model.onnx").is_file()


def test_mean_iou_and_pixel_accuracy_count_every_labelled_pixel():
    from proqha.errors import OptionError
    from proqha.metrics import IGNORE_INDEX, MeanIoU, metric_of

    target = torch.tensor([[[0, 0], [1, 1]]])  # one image, 2x2
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, :] = 1  # top row: class 0 (right)
    logits[0, 1, 1, 0] = 1  # bottom left: class 1 (right)
    logits[0, 2, 1, 1] = 1  # bottom right: class 2 (wrong: 1)
    miou = MeanIoU()
    miou.update(logits, target)
    # class 0: 2/2; class 1: 1/2; class 2: 0/1 -> mean of three
    assert miou.value() == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    accuracy = metric_of("pixel_accuracy")
    accuracy.update(logits, target)
    assert accuracy.value() == pytest.approx(75.0)
    ignored = target.clone()
    ignored[0, 1, 1] = IGNORE_INDEX  # the wrong pixel left out
    accuracy.reset()
    accuracy.update(logits, ignored)
    assert accuracy.value() == pytest.approx(100.0)
    with pytest.raises(OptionError, match="metric"):
        metric_of("dice")
    top1 = metric_of("top1")  # a classifier's label 255 is a class (ImageNet has 1000), not "ignore"
    scores = torch.zeros(2, 1000)
    scores[:, IGNORE_INDEX] = 1
    top1.update(scores, torch.tensor([IGNORE_INDEX, 3]))
    assert top1.value() == pytest.approx(50.0)


def test_bench_reports_a_dense_model_s_metric_per_engine():
    """``proqha.bench(metric="miou")``: each row carries the metric in PyTorch and on its engine, beside top-1."""
    torch.manual_seed(0)
    net = proqha.OutputOf(TwoOutputs(), "out")
    x = torch.randn(16, 3, 8, 8)
    q = proqha.quantize(net, x, calib_data=[x])
    with torch.no_grad():
        masks = q.eval()(x).argmax(1)
    masks[:, 0, 0] = 0  # a few labels the model gets wrong, so neither metric is 100
    rows = proqha.bench(q, (3, 8, 8), batches=[1], engines=["ort"], test_data=[(x, masks)], iters=2, warmup=1,
                        fp32=False, anchor=False, metric="miou")
    assert len(rows) == 1 and rows[0]["metric"] == "miou"
    assert 50 < rows[0]["torch_metric"] < 100 and abs(rows[0]["engine_metric"] - rows[0]["torch_metric"]) < 1
    assert rows[0]["torch_metric"] != rows[0]["torch_top1"]


class SharedHead(nn.Module):
    """A detector's shape in small: two pyramid levels, one head (conv, GroupNorm, ReLU, scores) run on each,
    the per-level outputs flattened and concatenated per anchor."""

    def __init__(self) -> None:
        super().__init__()
        self.level1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.level2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.tower = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.scores = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        p1 = self.level1(x)
        p2 = self.level2(p1)
        outs = [self.scores(self.tower(p)).flatten(2) for p in (p1, p2)]
        return torch.cat(outs, dim=2)


def test_a_head_shared_across_levels_exports_once_and_runs_every_call_in_int8():
    torch.manual_seed(0)
    model = quantize_model(SharedHead(), QuantConfig(bits=8), (3, 8, 8))
    x = torch.randn(24, 3, 8, 8)
    calibrate_bn(model, x[:8])
    proto, info = export_onnx(model, (3, 8, 8))
    assert info.layers["scores"].calls == 2 and info.all_layers == 6  # 2 levels + 2 x (tower conv, scores)
    weights = [t.name for t in proto.graph.initializer if t.name.startswith("scores.weight_int")]
    assert len(weights) == 1  # written once, read by both calls
    report = validate_export(proto, info, model, DataLoader(TensorDataset(x[8:], torch.zeros(16, dtype=torch.long)),
                                                            batch_size=8))
    assert report.failures == [] and report.kernels.integer_layers == 6
    from proqha.export.layer_parity import per_layer_steps

    steps = per_layer_steps(model, proto, x[8:])
    assert "scores.input#1" in steps and max(steps.values()) <= 1 + 1e-4  # the second call judged on its own


def test_group_norm_exports_as_pytorch_computes_it():
    torch.manual_seed(0)
    model = quantize_model(SharedHead(), QuantConfig(bits=8), (3, 8, 8))
    calibrate_bn(model, torch.randn(8, 3, 8, 8))
    with torch.no_grad():
        norm = model.get_submodule("tower.1")
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    twin = float_twin(model).eval()
    proto, _ = export_onnx(twin, (3, 8, 8), quantized=False)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = twin(x).numpy()
    np.testing.assert_allclose(ReferenceEvaluator(proto).run(None, {"input": x.numpy()})[0], want, atol=1e-5, rtol=1e-5)


SEG_MODULE = '''
import sys

import proqha

sys.path.insert(0, {examples!r})
from segmentation import CLASSES, TinySegmenter, scenes  # noqa: E402


def make_net(num_classes, in_channels):
    return TinySegmenter(num_classes)


def make_data():
    return proqha.DataSplits(train=scenes(256, 1), test=scenes(64, 3), num_classes=len(CLASSES))


def float_masks():
    data = scenes(64, 1)
    return proqha.DataSplits(train=TensorDataset(data.tensors[0], data.tensors[1].float()), test=data, num_classes=4)


def bad_masks():
    data = scenes(64, 1)
    data.tensors[1][5, 0, 0] = 7
    return proqha.DataSplits(train=data, test=scenes(16, 2), num_classes=4)


from torch.utils.data import TensorDataset  # noqa: E402
'''


def test_the_cli_trains_searches_exports_and_benches_a_segmenter_on_masks(tmp_path, monkeypatch):
    """Import-path model and dataset whose labels are (H, W) masks: every stage runs, judged per pixel."""
    import json
    import sys
    import uuid
    from pathlib import Path

    from typer.testing import CliRunner

    from proqha.cli.app import app

    name = f"seg_{uuid.uuid4().hex[:8]}"
    examples = str(Path(__file__).resolve().parents[1] / "examples")
    (tmp_path / f"{name}.py").write_text(SEG_MODULE.format(examples=examples))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = CliRunner()

    def ok(args):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return result

    try:
        ok(["train", "--arch", f"{name}:make_net", "--dataset", f"{name}:make_data", "--epochs", "2",
            "--batch-size", "32"])
        metrics = [json.loads(line) for line in (tmp_path / "runs/train-1/metrics.jsonl").read_text().splitlines()]
        assert 50 < metrics[-1]["test_top1"] <= 100  # pixel accuracy
        ok(["search", "--steps", "1", "--candidates", "2", "--finetune-epochs", "1", "--final-epochs", "0"])
        ok(["export", "--dynamic-size"])
        exported = next((tmp_path / "runs/search-1/export").glob("*.onnx"))
        report = json.loads(exported.with_suffix(".parity.json").read_text())
        ort = next(p for p in report["parity"] if p["runtime"] == "onnxruntime")
        assert ort["samples"] == 64 * 32 * 32 and ort["agreement_ties"] >= 99.5
        other = next(p for p in report["parity"] if p["runtime"] == "onnxruntime at 3x64x96")
        assert other["samples"] == 16 * 64 * 96 and other["agreement_ties"] >= 99.5  # 16 images, resized
        dims = onnx.load(exported).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[2:]] == ["height", "width"]
        ok(["parity", str(exported)])
        ok(["bench", "--iters", "3", "--batch", "1", "--warmup", "1", "--samples", "16"])
        rows = json.loads((tmp_path / "runs/search-1/bench/bench.json").read_text())["rows"]
        step = next(r for r in rows if r["model"].startswith("step 1"))
        assert step["engine_top1"] == pytest.approx(step["torch_top1"], abs=0.5)
        bad = runner.invoke(app, ["train", "--arch", f"{name}:make_net", "--dataset", f"{name}:bad_masks"])
        assert bad.exit_code == 2 and "labels must be class indices in 0..3" in bad.output and "mask" in bad.output
    finally:
        sys.modules.pop(name, None)
        sys.modules.pop("segmentation", None)


class GatedSegmenter(nn.Module):
    """A small LR-ASPP: a stride-2 body, a pooled gate (1x1, broadcast multiply), a GroupNorm, scores
    upsampled back to the input's size read from ``x.shape``: nothing in it fixes the size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.scores = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.body(x)
        return F.interpolate(self.scores(y * self.gate(y)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class AnchorHead(nn.Module):
    """RetinaNet's head reshape: scores (N, A*K, H, W) viewed as (N, A, K, H, W) with H and W read from the
    tensor, anchors moved last and flattened to (N, H*W*A, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.scores = nn.Conv2d(8, 2 * 3, 1)

    def forward(self, x):
        y = self.scores(self.body(x))
        n, _, h, w = y.shape
        return y.view(n, 2, 3, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 3)


def _dynamic_case(net: nn.Module, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = quantize_model(net, QuantConfig(bits=8), (3, size, size))
    x = torch.randn(24, 3, size, size)
    calibrate_bn(model, x[:8])
    return model.eval(), x[8:]


@pytest.mark.parametrize("net, out_dims", [(GatedSegmenter, ["batch", 4, "height", "width"]),
                                           (lambda: SharedHead(), ["batch", 3, "out_2"]),
                                           (AnchorHead, ["batch", "out_1", 3])])
def test_a_dynamic_size_graph_runs_at_any_size_as_its_static_export_does(net, out_dims):
    """``dynamic_size``: height and width are dynamic in the graph, the upsampling's size and the detector's
    flattened anchors are read at run time, and at sizes other than the traced one the graph computes
    exactly what a static export at that size computes; validation measured it at a second size too."""
    model, x = _dynamic_case(net(), 16)
    proto, info = export_onnx(model, (3, 16, 16), dynamic_size=True)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"] and dims(proto.graph.output[0]) == out_dims
    report = validate_export(proto, info, model, [(x, torch.zeros(len(x), dtype=torch.long))], reference=False)
    assert report.ok, report.failures
    assert [p.runtime for p in report.parity] == ["onnxruntime", "onnxruntime at 3x32x48"]
    session = ort_session(proto.SerializeToString())
    for h, w in [(24, 40), (13, 9)]:
        xx = F.interpolate(x[:4], size=(h, w), mode="bilinear")
        static = ort_session(export_onnx(model, (3, h, w))[0].SerializeToString())
        out = session.run(None, {"input": xx.numpy()})[0]
        with torch.no_grad():
            assert out.shape == tuple(model(xx).shape)
        assert np.array_equal(out, static.run(None, {"input": xx.numpy()})[0])


class PooledTo2x2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)).flatten(1))


def test_a_size_the_graph_would_fix_refuses_a_dynamic_size_in_one_line():
    model, _ = _dynamic_case(PooledTo2x2(), 8)
    export_onnx(model, (3, 8, 8))  # a fixed size exports
    with pytest.raises(ProqhaError, match=r"cannot export adaptive pooling to a size other than 1x1 pool with "
                                          r"a dynamic height and width: it is written for the traced input size"):
        export_onnx(model, (3, 8, 8), dynamic_size=True)
    flat, _ = _dynamic_case(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)), 8)
    with pytest.raises(ProqhaError, match=r"a dynamic height and width need a model that runs at other sizes; at "
                                          r"input size \(3, 16, 24\) it fails: mat1 and mat2"):
        export_onnx(flat, (3, 8, 8), dynamic_size=True)  # its linear fixes the flattened map's size
