"""8-bit QAT on networks and data of the kind users bring (``benchmarks/user_nets.py``): it must learn
what the float network learns (``benchmarks/qat_accuracy.py`` runs the longer, wider comparison)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import proqha
from proqha.quant import quant_layers
from proqha.quant.quantizers import Quantizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from user_nets import NETS, splits  # noqa: E402


def _train(net_name: str, data: str, bits: int, epochs: int, n_train: int, optimizer: str = "sgd"):
    train_set, test_set, classes = splits(data, n_train, 300)
    torch.manual_seed(0)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    q = proqha.quantize(NETS[net_name](classes, train_set.tensors[0].shape[-1]), train_set.tensors[0][:64],
                        bits=bits)
    lr = 0.1 if optimizer == "sgd" else 1e-3
    rows = proqha.fit(q, loader, DataLoader(test_set, batch_size=300), epochs=epochs, optimizer=optimizer, lr=lr,
                      weight_decay=5e-4)
    return q, rows[-1]["test_top1"], test_set


@pytest.mark.slow
def test_a_users_depthwise_net_learns_at_8_bit_what_it_learns_in_float():
    """The logits quantizer used to keep the range of the untrained network (alpha 0.7 against logits
    growing to 5): most logits clipped, without gradient, a class never predicted (15% against 97%)."""
    _, top_float, _ = _train("depthwise", "prototypes", 32, 5, 1500)
    q, top_q, test_set = _train("depthwise", "prototypes", 8, 5, 1500)
    assert top_float > 80.0
    assert top_q >= top_float - 3.0, (top_q, top_float)
    logits_q = q.get_submodule("fc.output_quantizer")
    assert logits_q.tracks_range and not logits_q.alpha.requires_grad
    q.eval()
    with torch.no_grad():
        logits = q(test_set.tensors[0])
    at_clip = (logits.abs() >= float(logits_q.alpha) * (1 - 1e-6)).float().mean()
    assert at_clip < 0.01  # the range follows the logits: hardly any sits at the limit
    assert len(logits.argmax(1).unique()) == 10  # every class is predicted


@pytest.mark.slow
def test_stock_mobilenet_v3_with_in_place_activations_trains_with_adam_and_keeps_its_weight_ranges():
    """torchvision's in-place Hardswish after a quantizer overwrote the tensor the quantizer's backward
    needs; Adam's scale-free steps dragged the small depthwise weight ranges to zero and below."""
    q, top_q, test_set = _train("mobilenet_v3_small", "shapes", 8, 1, 640, optimizer="adam")
    q.train()
    with torch.no_grad():
        q(test_set.tensors[0][:8])  # a training forward sets the ranges too, not only turning to eval
    for name, layer in quant_layers(q).items():
        w, alpha = layer.weight.detach(), layer.weight_quantizer.alpha.detach()
        assert torch.equal(alpha, w.abs().flatten(1).amax(1).clamp_min(1e-4)), name  # 8 bit: max |w|, nothing clipped
    assert all(not m.inplace for m in q.modules() if isinstance(getattr(m, "inplace", None), bool))


def test_a_tracked_range_grows_at_once_and_shrinks_slowly():
    from proqha.quant.quantizers import RANGE_DECAY, SignedActQuantizer

    q = SignedActQuantizer(8).track_range().train()
    q(torch.tensor([1.0, -0.5]))
    assert float(q.alpha) == 1.0
    q(torch.tensor([-4.0, 2.0]))  # a larger batch max: taken at once, nothing in the batch clips
    assert float(q.alpha) == 4.0
    q(torch.tensor([2.0]))
    assert float(q.alpha) == pytest.approx(4.0 - RANGE_DECAY * 2.0)
    q.eval()
    q(torch.tensor([100.0]))  # frozen in eval mode
    assert float(q.alpha) == pytest.approx(4.0 - RANGE_DECAY * 2.0)
    assert isinstance(q, Quantizer) and not q.alpha.requires_grad


def test_logits_at_the_clip_limit_and_classes_lost_to_quantization_are_warned_about():
    """A logits range far too small (what a learned range stuck at the untrained network's scale gave):
    every logit clips, ties, and argmax picks class 0 everywhere while the float network predicts all."""
    train_set, test_set, classes = splits("prototypes", 640, 200)
    torch.manual_seed(0)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    q = proqha.quantize(NETS["depthwise"](classes, 32), train_set.tensors[0][:64])
    test = DataLoader(test_set, batch_size=200)
    rows = proqha.fit(q, loader, test, epochs=2)
    assert "warnings" not in rows[-1]
    logits_q = q.get_submodule("fc.output_quantizer")
    with torch.no_grad():
        logits_q.alpha.fill_(1e-3)
    with pytest.warns(UserWarning) as caught:
        row = proqha.evaluate(q, test)
    text = " ".join(str(w.message) for w in caught)
    assert "% of the logits sit at the output quantizer's limit" in text
    assert "never predicted on the test split, while the float network (quantizers off) predicts them" in text
    assert len(row["warnings"]) == 2


def test_reported_top1_is_the_deployed_argmax_even_when_logits_tie():
    """Saturated logits tie; onnxruntime's ArgMax (and numpy's) takes the lowest index, as must the top-1 of
    metrics, frontier and report (topk's order among ties is arbitrary: it once reported 82.8% for 65.3%)."""
    import numpy as np

    from proqha.evaluation import _topk_correct

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (500, 10), generator=g).float()  # many ties at the top
    target = torch.randint(0, 10, (500,), generator=g)
    top1, top5 = _topk_correct(logits, target, (1, 5))
    assert top1 == int((np.argmax(logits.numpy(), 1) == target.numpy()).sum())
    rank = [(row > row[t]).sum() + (row[:t] == row[t]).sum() for row, t in zip(logits, target)]
    assert top5 == sum(int(r < 5) for r in rank) and top5 >= top1
