"""The final race: its entrants (uniform bits at the budget), its bookkeeping, and fine-tuning in chunks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import proqha
from proqha.quant import BitConfig, searchable_layers
from proqha.search import SearchConfig
from proqha.search import race as race_module
from proqha.search import uniform as uniform_module
from proqha.search.data import LoaderData
from proqha.search.finetune import FineTune
from proqha.search.progressive import ProgressiveSearch
from proqha.train import evaluate_loader


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(384, 1, 8, 8, generator=gen)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    return (DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(x[256:320], y[256:320]), batch_size=64),
            DataLoader(TensorDataset(x[320:], y[320:]), batch_size=64))


def _qmodel(train) -> nn.Module:
    torch.manual_seed(0)
    return proqha.quantize(_net(), next(iter(train))[0], bits=8)


def _uniform_budget(qmodel, cfg_bits: int) -> tuple[float, float]:
    search = ProgressiveSearch(SearchConfig(source="t").resolved(), copy.deepcopy(qmodel),
                               LoaderData([]), (1, 8, 8), torch.device("cpu"))
    bits = search.bits()
    for knob in search.knobs:
        bits[knob.layer][knob.kind] = cfg_bits
    report = search.cost_of(bits)
    return report.paper_cost, report.bitops_ratio


def test_uniform_entrants_are_the_maximal_uniform_bits_within_the_budget():
    train, calib, test = _data()
    qmodel = _qmodel(train)
    cost, bitops = _uniform_budget(qmodel, 3)
    cfg = SearchConfig(source="t", target_cost=cost, target_bitops=bitops).resolved()
    search = ProgressiveSearch(cfg, qmodel, LoaderData(train, calib, test), (1, 8, 8), torch.device("cpu"))
    found = uniform_module.uniform_bits(search, search.bits())
    assert [label for label, _ in found] == ["uniform W3A3", "uniform W2A4"]  # W4A2 costs 4 weight bits
    for _, bits in found:
        assert all(bits[k.layer][k.kind] in (2, 3, 4) for k in search.knobs)
    weights_only = SearchConfig(source="t", target_cost=cost, knobs="weights").resolved()
    search = ProgressiveSearch(weights_only, qmodel, LoaderData(train, calib, test), (1, 8, 8), torch.device("cpu"))
    assert [label for label, _ in uniform_module.uniform_bits(search, search.bits())] == ["uniform W3"]


def test_fine_tuning_in_chunks_with_evaluations_between_equals_one_run():
    train, calib, test = _data()
    one, two = _qmodel(train), _qmodel(train)
    cfg = SearchConfig(source="t").resolved()
    data = LoaderData(train, calib, test)
    FineTune(one, cfg, data, torch.device("cpu"), 1, 3).run_to(3)
    chunks = FineTune(two, cfg, data, torch.device("cpu"), 1, 3)
    chunks.run_to(1)
    evaluate_loader(two, calib, torch.device("cpu"))
    chunks.run_to(2)
    evaluate_loader(two, calib, torch.device("cpu"))
    chunks.run_to(5)  # capped at the runner's 3 epochs
    assert chunks.done == 3
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


def test_a_loader_with_its_own_generator_gives_every_entrant_the_same_batches():
    """A user's shuffling DataLoader with its own generator: two runners of one step train on the same batches
    (the generator is reseeded per epoch, as the global RNG is), so two equal models end equal."""
    train, calib, test = _data()
    own = DataLoader(train.dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(5))
    one, two = _qmodel(train), _qmodel(train)
    cfg = SearchConfig(source="t").resolved()
    data = LoaderData(own, calib, test)
    for model in (one, two):
        FineTune(model, cfg, data, torch.device("cpu"), 1, 2).run_to(2)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


def _search(select_final: bool, monkeypatch=None, favour=None, **options):
    train, calib, test = _data()
    qmodel = _qmodel(train)
    cost, bitops = _uniform_budget(qmodel, 3)
    if favour is not None:  # the calibration loss favours the favoured bits (0.5 against 1.0) and top-1 the
        # others; with a metric, the metric favours them (90 against 50) and loss and top-1 the others
        def fake_evaluate(model, loader, device, loss_fn=None, health=None, metric=None):
            hit = BitConfig.from_model(model).to_dict() == favour(model)
            if metric is not None:
                return {"test_top1": 50.0 if hit else 90.0, "test_loss": 1.0 if hit else 0.5, "test_top5": 100.0,
                        "test_metric": 90.0 if hit else 50.0}
            return {"test_top1": 50.0 if hit else 90.0, "test_loss": 0.5 if hit else 1.0, "test_top5": 100.0}

        monkeypatch.setattr(race_module, "evaluate_loader", fake_evaluate)
    return proqha.search_bits(qmodel, train, calib, test, steps=3, target_cost=cost, target_bitops=bitops, ratio=1.0,
                              finetune_epochs=1, final_epochs=1, select_epochs=1, select_candidates=4,
                              select_final=select_final, **options)


def _w2a4(model: nn.Module) -> dict:
    """``model``'s bits with every searchable layer at W2A4 (edge layers as they are)."""
    bits = BitConfig.from_model(model).to_dict()
    return bits | {name: {"w": 2, "a": 4} for name in searchable_layers(model)}


def test_the_race_keeps_the_winner_on_the_calibration_split(monkeypatch):
    plain = _search(False, uniform_floor=False)
    assert len(plain.steps) == 2 and plain.steps[1]["selected"] == "allocate" and plain.steps[1]["epochs"] == 2
    assert "race" not in plain.steps[1] and plain.steps[1]["bits"] != _w2a4(plain.model)

    raced = _search(True, monkeypatch, favour=_w2a4, uniform_floor=False)
    row = raced.steps[1]  # ranked by calibration loss, though top-1 favours the others; margin in loss
    assert row["selected"] == "uniform W2A4" and row["selected_margin"] == pytest.approx(0.5)
    assert row["bits"] == _w2a4(raced.model) == BitConfig.from_model(raced.model).to_dict()
    rounds = row["race"]
    assert [r[0]["label"] for r in rounds] == ["uniform W2A4"] * len(rounds)
    assert [e["label"] for e in sorted(rounds[0], key=lambda e: e["label"])] == \
        ["allocate", "allocate #2", "uniform W2A4", "uniform W3A3"]  # select_candidates 4; W4A2 is over budget
    assert [len(r) for r in rounds[1:]] == [len(r) // 2 for r in rounds[:-1]]  # the better half goes on
    done = [r[0]["epochs"] for r in rounds]
    trained = sum(len(r) * (e - b) for r, e, b in zip(rounds, done, [0] + done[:-1])) + 2 - done[-1]
    assert row["epochs"] == trained > 2  # each entrant's epochs, the winner's to the step's end (2)
    assert "race" not in raced.steps[0] and raced.steps[0]["epochs"] == 0


def _dominates(bits: dict, floor: dict) -> bool:
    return all(bits[n][k] >= floor[n][k] for n in floor for k in ("w", "a"))


def test_the_final_bits_dominate_a_uniform_configuration_and_race_the_other_floors(monkeypatch):
    plain = _search(False)  # uniform_floor on by default
    bits = plain.steps[1]["bits"]
    w3a3 = _w2a4(plain.model) | {n: {"w": 3, "a": 3} for n in searchable_layers(plain.model)}
    label = plain.steps[1]["selected"]
    assert label in ("allocate >= uniform W2A4", "allocate >= uniform W3A3")
    assert _dominates(bits, _w2a4(plain.model) if label.endswith("W2A4") else w3a3)
    assert bits != _w2a4(plain.model)  # the slack W2A4 leaves is spent

    def favour(model):  # the floored allocation above W3A3 wins on the calibration split
        found = BitConfig.from_model(model).to_dict()
        return found if _dominates(found, w3a3) else None

    raced = _search(True, monkeypatch, favour=favour)
    row = raced.steps[1]
    assert row["selected"] == "allocate >= uniform W3A3" and _dominates(row["bits"], w3a3)
    labels = sorted(e["label"] for e in row["race"][0])
    assert labels == ["allocate >= uniform W2A4", "allocate >= uniform W3A3"]  # the uniform bits they dominate
    # do not race


def test_a_floored_allocation_keeps_every_knob_at_or_above_its_floor():
    from proqha.cost import CostReport, LayerCost
    from proqha.search.allocate import allocate, floored
    from proqha.search.knobs import Knob

    knobs = [Knob("a", "w"), Knob("b", "w")]
    damage = {knobs[0]: {2: 5.0, 3: 1.0, 4: 0.0}, knobs[1]: {2: 0.1, 3: 0.05, 4: 0.0}}
    current = {"a": {"w": 4, "a": 8}, "b": {"w": 4, "a": 8}}
    assert floored(damage, {"a": {"w": 3, "a": 8}, "b": {"w": 2, "a": 8}}) == {
        knobs[0]: {3: 1.0, 4: 0.0}, knobs[1]: damage[knobs[1]]}
    assert floored(damage, {"a": {"w": 6, "a": 8}, "b": {"w": 2, "a": 8}})[knobs[0]] == {4: 0.0}  # the top level

    def feasible(bits):  # at most 6 weight bits in all
        return bits["a"]["w"] + bits["b"]["w"] <= 6

    report = CostReport((1, 1, 1), [LayerCost(n, "conv", 100, 10, 4, 8, True) for n in "ab"], 0)
    assert allocate(current, damage, report, feasible) == {"a": {"w": 4, "a": 8}, "b": {"w": 2, "a": 8}}
    floor = {"a": {"w": 3, "a": 8}, "b": {"w": 3, "a": 8}}
    assert allocate(current, damage, report, feasible, floor=floor) == floor  # b may not go below 3
    assert allocate(current, damage, report, feasible, floor={"a": {"w": 2, "a": 8}, "b": {"w": 2, "a": 8}}) == {
        "a": {"w": 4, "a": 8}, "b": {"w": 2, "a": 8}}  # a floor at the bottom: the free allocation


def test_with_a_metric_the_race_ranks_by_it(monkeypatch):
    """search_bits(metric=): the entrant the metric favours wins though top-1 favours the others; its
    margin is the metric's."""
    raced = _search(True, monkeypatch, favour=_w2a4, uniform_floor=False, metric="miou")
    row = raced.steps[1]
    assert row["selected"] == "uniform W2A4" and row["selected_margin"] == pytest.approx(40.0)
    assert all("calib_metric" in e for e in row["race"][0])


def test_the_race_line_shows_what_the_race_ranked_by():
    from proqha.cli.search_report import race_line

    def entrant(label, loss, top1, **extra):
        return {"label": label, "epochs": 1, "calib_top1": top1, "calib_loss": loss} | extra

    row = {"step": 2, "selected": "uniform W2A4", "selected_margin": 0.125,
           "race": [[entrant("uniform W2A4", 0.5, 70.0), entrant("uniform W3A3", 0.625, 80.0)]]}
    assert race_line(row).endswith("uniform W2A4 loss 0.5000 (70.00%), uniform W3A3 loss 0.6250 (80.00%) -> "
                                   "uniform W2A4 (loss 0.1250 below the runner-up's)")
    row["race"] = [[entrant("a", 0.5, 70.0, calib_metric=61.0), entrant("b", 0.4, 80.0, calib_metric=60.0)]]
    row["selected"], row["selected_margin"] = "a", 1.0
    assert race_line(row).endswith("a 61.00, b 60.00 -> a (metric 1.00 points above the runner-up's)")
