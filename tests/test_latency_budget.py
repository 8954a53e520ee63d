"""Latency budgets: the per-layer table (formats, deltas, its cache), the prediction, and a search that spends a
latency budget above the int8 graph on float layers (through a faithful fake of the engine: latency is
never asserted from a clock in a test)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from test_race import _data, _qmodel

import proqha
from proqha.errors import OptionError, ProqhaError
from proqha.latency_model import FORMAT_BITS, LatencyModel, layer_format
from proqha.quant import BitConfig, searchable_layers
from proqha.search import SearchConfig

SIZE = (1, 8, 8)


def test_a_layer_format_is_what_changes_its_kernel_or_nodes():
    assert layer_format(32, 8) == layer_format(8, 32) == layer_format(32, 32) == "float"
    assert [layer_format(w, 8) for w in (8, 7, 5, 4, 3, 2)] == ["int8"] * 3 + ["int4"] * 2 + ["int2"]
    assert layer_format(8, 7) == "int8+clamp" and layer_format(3, 2) == "int4+clamp"
    assert {layer_format(*bits) for bits in FORMAT_BITS.values()} == set(FORMAT_BITS)  # representatives


class FakeEngine:
    """An engine whose graph latency is exactly additive: 1 ms plus, per layer moved from int8, its delta."""

    def __init__(self, deltas: dict[str, dict[str, float]], shared: float = 0.0) -> None:
        self.deltas, self.tables, self.graphs, self.shared = deltas, 0, 0, shared  # shared: ms saved per float
        # layer beyond the first (float neighbours share a requantization)

    def table(self, model, input_size) -> LatencyModel:
        self.tables += 1
        start = BitConfig.from_model(model).to_dict()
        names = list(searchable_layers(model))
        return LatencyModel("fake", 1, "cpu", 1.0, {n: layer_format(start[n]["w"], start[n]["a"]) for n in names},
                            {n: self.deltas[n] for n in names})

    def graph_ms(self, model, input_size) -> float:
        self.graphs += 1
        bits = BitConfig.from_model(model).to_dict()
        floats = sum(1 for n, b in bits.items() if n in self.deltas and layer_format(b["w"], b["a"]) == "float")
        return 1.0 - self.shared * max(floats - 1, 0) + sum(self.deltas[n].get(layer_format(b["w"], b["a"]), 0.0) for n, b in bits.items()
                         if n in self.deltas and layer_format(b["w"], b["a"]) != "int8")

    def graph_ms_beside(self, model, reference, input_size) -> tuple[float, float]:
        return self.graph_ms(model, input_size), self.graph_ms(reference, input_size)


def _fmt(bits: dict) -> str:
    return layer_format(bits["w"], bits["a"])


def _deltas(qmodel) -> dict[str, dict[str, float]]:
    names = list(searchable_layers(qmodel))
    return {n: {"float": 0.2 * (i + 1), "int8+clamp": 0.01, "int4": 0.0, "int4+clamp": 0.01, "int2": 0.0,
                "int2+clamp": 0.01} for i, n in enumerate(names)}


def _search(qmodel, engine, target_ms, monkeypatch, **options):
    from proqha.deploy import latency_table

    monkeypatch.setattr(latency_table, "search_latency", lambda cfg, run_dir, on_progress=None: engine)
    train, calib, test = _data()
    return proqha.search_bits(qmodel, train, calib, test, steps=3, target_latency_ms=target_ms, finetune_epochs=1,
                              final_epochs=1, **options)


def test_a_latency_budget_above_the_int8_graph_is_spent_on_float_layers(monkeypatch):
    train, _, _ = _data()
    qmodel = _qmodel(train)
    deltas = _deltas(qmodel)
    names = list(deltas)
    assert len(names) == 2
    engine = FakeEngine(deltas)
    result = _search(qmodel, engine, 1.0 + 0.25, monkeypatch)  # room for the first layer in float, not both
    assert engine.tables == 1 and len(result.steps) == 2  # a step from a start within budget
    assert engine.graphs == 5  # the fastest graph (the budget's check), each step's graph, and the table's choice
    # measured twice (in the band: 1.2 of 1.25)
    last = result.steps[-1]
    assert last["bits"][names[0]] == {"w": 32, "a": 32} and _fmt(last["bits"][names[1]]) != "float"
    assert last["latency_ms_pred"] == pytest.approx(1.2) == last["latency_ms"] and last["latency_err"] == 0
    assert last["selected"] == "allocate >= uniform W8A8"
    first = result.steps[0]
    assert first["latency_ms"] == first["latency_ms_pred"] == 1.0

    both = _search(_qmodel(train), FakeEngine(deltas), 1.0 + 0.6 + 0.05, monkeypatch)  # room for both
    assert all(both.steps[-1]["bits"][n] == {"w": 32, "a": 32} for n in names)
    none = _search(_qmodel(train), FakeEngine(deltas), 1.0 + 0.1, monkeypatch)  # room for neither
    assert all(_fmt(none.steps[-1]["bits"][n]) != "float" for n in names)
    assert none.steps[-1]["latency_ms"] <= 1.1


class ThreeTimesEngine(FakeEngine):
    """The additive engine on a machine three times slower than when its table was measured."""

    def graph_ms(self, model, input_size) -> float:
        return 3 * super().graph_ms(model, input_size)


def test_a_step_whose_graph_measures_over_the_latency_budget_says_so(monkeypatch):
    train, _, _ = _data()
    result = _search(_qmodel(train), ThreeTimesEngine(_deltas(_qmodel(train))), 1.25, monkeypatch)
    last = result.steps[-1]
    assert all(_fmt(b) != "float" for b in last["bits"].values())  # no measured graph fits: the start's bits
    assert last["latency_ms"] == pytest.approx(3.0)
    assert any("over the latency budget 1.25 ms" in w for w in last.get("warnings", ()))
    assert any("the table predicted 1 ms" in w for w in result.steps[0].get("warnings", ()))  # the start too


def test_a_latency_ratio_is_met_on_a_machine_slower_than_when_its_table_was_measured(monkeypatch):
    """The same budget as the test above, as a ratio to the uniform 8-bit graph: every graph is timed beside that
    graph, so a machine three times slower moves both alike and the float layer the budget pays for stays."""
    from proqha.deploy import latency_table

    train, calib, test = _data()
    qmodel = _qmodel(train)
    names = list(searchable_layers(qmodel))
    engine = ThreeTimesEngine(_deltas(qmodel))
    monkeypatch.setattr(latency_table, "search_latency", lambda cfg, run_dir, on_progress=None: engine)
    result = proqha.search_bits(qmodel, train, calib, test, steps=3, target_latency_ratio=1.25, finetune_epochs=1,
                                final_epochs=1)
    last = result.steps[-1]
    assert last["bits"][names[0]] == {"w": 32, "a": 32} and _fmt(last["bits"][names[1]]) != "float"
    assert last["latency_ms"] == pytest.approx(3.6) and last["latency_ratio"] == pytest.approx(1.2)
    assert last["latency_ms_pred"] == pytest.approx(1.2) and last["latency_err"] == pytest.approx(0)
    assert not any(step.get("warnings") for step in result.steps)


class SlowerEngine(FakeEngine):
    """The additive engine on a machine 1.5 times slower than its table, whose start graph it times too."""

    def table(self, model, input_size) -> LatencyModel:
        return dataclasses.replace(super().table(model, input_size), base_ms=self.graph_ms(model, input_size))

    def graph_ms(self, model, input_size) -> float:
        return 1.5 * super().graph_ms(model, input_size)


def test_a_latency_ratio_from_lower_bits_is_to_the_uniform_8_bit_graph_timed_beside_them():
    """A search that starts below 8 bits (a resumed one) prices the ratio against the uniform 8-bit graph, not
    its own start: that graph's latency on the table's clock is timed beside the start graph."""
    from proqha.search.data import LoaderData
    from proqha.search.progressive import ProgressiveSearch
    from proqha.search.targets import latency_budget_ms

    train, calib, test = _data()
    qmodel = _qmodel(train)
    names = list(searchable_layers(qmodel))
    deltas = _deltas(qmodel)
    deltas[names[0]]["int4"] = -0.2  # the start: the first layer at 4 bits, 0.8 of the uniform 8-bit graph
    BitConfig(BitConfig.from_model(qmodel).to_dict() | {names[0]: {"w": 4, "a": 8}}).apply(qmodel)
    cfg = SearchConfig(source="t", target_latency_ratio=1.5).resolved()
    search = ProgressiveSearch(cfg, qmodel, LoaderData(train, calib, test), SIZE, torch.device("cpu"),
                               measure_latency=SlowerEngine(deltas))
    table = search.base_cost.latency_model
    assert table.base_ms == pytest.approx(1.2) and table.reference == pytest.approx(1.5)  # 1.2 / 0.8
    assert latency_budget_ms(cfg, search.base_cost) == pytest.approx(2.25)
    assert BitConfig.from_model(search.reference).to_dict()[names[0]] == {"w": 8, "a": 8}
    assert search.time_graph(search.model) == pytest.approx((1.2, 0.8))
    search.cfg = SearchConfig(source="t", target_latency_ratio=0.75).resolved()  # 1.125 ms, within 10% of 1.2
    search.check_latency_budget()
    search.cfg = SearchConfig(source="t", target_latency_ratio=0.7).resolved()  # 1.05 ms
    with pytest.raises(OptionError, match=r"target_latency_ratio 0.7 is more than 10% under the fastest graph "
                                          r"measured on ort: 1.2 ms, 0.800x the uniform 8-bit graph's 1.5 ms"):
        search.check_latency_budget()
    deltas[names[1]]["int2"] = -0.5  # the table finds the second layer faster at 2 bits: that graph is timed
    search.cfg = SearchConfig(source="t", target_latency_ratio=0.5).resolved()  # 0.75 ms, over that graph's 0.45
    search.check_latency_budget()
    with pytest.raises(OptionError, match="not both"):
        SearchConfig(source="t", target_latency_ratio=1.5, target_latency_ms=1.0).resolved()
    with pytest.raises(OptionError, match="target_latency_ratio"):
        SearchConfig(source="t", target_latency_ratio=0).resolved()


def test_the_tables_choice_is_fitted_by_measuring_the_graph(monkeypatch):
    train, _, _ = _data()
    qmodel = _qmodel(train)
    names = list(searchable_layers(qmodel))
    deltas = {n: {"float": 0.3, "int8+clamp": 0.01, "int4": 0.0, "int4+clamp": 0.01, "int2": 0.0,
                  "int2+clamp": 0.01} for n in names}
    engine = FakeEngine(deltas, shared=0.15)  # both in float: 1.45 ms, where the deltas add up to 1.6
    last = _search(qmodel, engine, 1.5, monkeypatch).steps[-1]
    assert all(_fmt(last["bits"][n]) == "float" for n in names)  # the table alone fits one (1.3 < 0.9 x 1.5)
    assert last["latency_ms"] == pytest.approx(1.45) and last["latency_ms_pred"] == pytest.approx(1.6)
    assert last["latency_err"] == pytest.approx(1.6 / 1.45 - 1)


def test_a_latency_search_without_a_measurer_or_with_an_unknown_engine_is_refused():
    from proqha.search.data import LoaderData
    from proqha.search.progressive import ProgressiveSearch

    train, calib, test = _data()
    cfg = SearchConfig(source="t", target_latency_ms=1.0).resolved()
    assert cfg.strategy == "allocate" and cfg.cost_metric == "latency" and cfg.needs_latency
    with pytest.raises(ProqhaError, match="no latency measurer"):
        ProgressiveSearch(cfg, _qmodel(train), LoaderData(train, calib, test), SIZE, torch.device("cpu"))
    with pytest.raises(OptionError, match="latency_engine"):
        SearchConfig(source="t", target_latency_ms=1.0, latency_engine="tpu").resolved()


def test_the_engine_table_has_every_format_of_every_layer_and_is_cached_by_its_key(tmp_path, monkeypatch):
    from proqha.deploy.latency_table import EngineLatency

    train, _, _ = _data()
    qmodel = _qmodel(train)
    cache = tmp_path / "latency_table.json"
    engine = EngineLatency("ort", 1, cache, threads=1, warmup=1, iters=3, seconds=0.0)
    table = engine.table(qmodel, SIZE)
    names = list(searchable_layers(qmodel))
    assert list(table.start) == names and set(table.start.values()) == {"int8"}
    assert all(set(table.deltas[n]) == set(FORMAT_BITS) - {"int8"} for n in names)
    assert table.base_ms > 0 and all(math.isfinite(v) for d in table.deltas.values() for v in d.values())
    assert BitConfig.from_model(qmodel).to_dict() == BitConfig.from_model(_qmodel(train)).to_dict()  # untouched
    kept = json.loads(cache.read_text())
    assert kept["key"]["batch"] == 1 and kept["key"]["engine"] == "ort" and kept["deltas"] == table.to_dict()["deltas"]

    def no_timing(*args):
        raise AssertionError("a cached table was timed again")

    monkeypatch.setattr(EngineLatency, "time_graph", no_timing)
    assert engine.table(qmodel, SIZE) == table  # read back
    other = EngineLatency("ort", 2, cache, threads=1, warmup=1, iters=3, seconds=0.0)
    with pytest.raises(AssertionError, match="timed again"):  # another batch: measured again
        other.table(qmodel, SIZE)
    moved = _qmodel(train)
    with torch.no_grad():
        next(moved.parameters()).add_(1.0)
    with pytest.raises(AssertionError, match="timed again"):  # other weights: measured again
        engine.table(moved, SIZE)


def test_an_openvino_latency_table_times_graphs_with_int8_weight_storage():
    """OpenVINO reads no INT2 weights: its graphs keep 2-bit layers in int8 storage (every format timed)."""
    import onnx

    from proqha.deploy.latency_table import EngineLatency

    train, _, _ = _data()
    qmodel = _qmodel(train)
    names = list(searchable_layers(qmodel))
    BitConfig(BitConfig.from_model(qmodel).to_dict() | {names[0]: {"w": 2, "a": 8}}).apply(qmodel)

    def storage(engine: str) -> set[int]:
        proto = onnx.load_from_string(EngineLatency(engine).graph_of(qmodel, SIZE))
        return {t.data_type for t in proto.graph.initializer}

    assert onnx.TensorProto.INT2 in storage("ort")
    assert onnx.TensorProto.INT2 not in storage("openvino") and onnx.TensorProto.INT4 not in storage("openvino")


def test_the_prediction_adds_each_moved_layers_delta():
    table = LatencyModel("ort", 1, "cpu", 2.0, {"a": "int8", "b": "int8"},
                         {"a": {"float": 0.5, "int4": 0.1}, "b": {"float": 0.7, "int4": -0.05}})
    from proqha.cost import CostReport, LayerCost

    report = CostReport(SIZE, [LayerCost("a", "conv", 1, 1, 32, 32, True), LayerCost("b", "conv", 1, 1, 4, 8, True),
                               LayerCost("edge", "conv", 1, 1, 8, 8, False)], 0, latency_model=table)
    assert report.latency_ms == pytest.approx(2.0 + 0.5 - 0.05) == report.metric("latency")
    assert LatencyModel.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    assert math.isnan(CostReport(SIZE, report.layers, 0).latency_ms)


def test_a_float_layer_exports_exactly_and_the_layer_feeding_it_runs_in_float(tmp_path):
    from proqha.export.onnx_export import export_onnx
    from proqha.export.validate import feeding_float_layers

    train, calib, _ = _data()
    qmodel = _qmodel(train)
    names = list(searchable_layers(qmodel))
    bits = BitConfig.from_model(qmodel).to_dict()
    BitConfig(bits | {names[0]: {"w": 32, "a": 32}}).apply(qmodel)
    proto, info = export_onnx(qmodel, SIZE)
    assert feeding_float_layers(proto, info) == {"0"}  # the edge conv before it: no quantizer on its output
    report = proqha.export_onnx(qmodel, tmp_path / "f.onnx", SIZE, calib)
    assert not report.failures and report.kernels.integer_layers == 2
    assert all(p.max_steps == 0 for p in report.parity)


class _Block(torch.nn.Module):
    """A residual block whose add output is quantized: the next layer reads a DequantizeLinear."""

    def __init__(self, c: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class _GridFed(torch.nn.Module):
    """Stem, block, a 1x1 conv, block, flatten, linear: ``head`` and ``block2.conv1`` read a residual add's
    dequantized output, ``fc`` reads it through a flatten."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1, self.head, self.block2, self.fc = _Block(8), nn.Conv2d(8, 8, 1), _Block(8), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(torch.relu(self.head(self.block1(self.stem(x)))))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("layer,w", [("head", 32), ("block2.conv1", 32), ("fc", 32), ("head", 4)])
def test_a_float_layer_that_reads_a_dequantized_tensor_runs_in_float_on_onnxruntime(layer, w, tmp_path):
    """onnxruntime quantizes the float weights of a Conv/Gemm fed by a per-tensor DequantizeLinear itself
    (WeightBiasQuantization): a float layer after a residual add ran as an int8 kernel with weights nobody
    trained, and the export was refused. Its input is dequantized per channel: it runs in float, exactly.
    A layer with 4-bit weights and float activations (a search with a latency and a cost budget) is a float
    conv on its dequantized weights (it failed with "quantizer is off (32 bit)")."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    batches = [(x, torch.zeros(64, dtype=torch.long))]
    qmodel = proqha.quantize(_GridFed(), x[:8], calib_data=batches, bits=8)
    BitConfig(BitConfig.from_model(qmodel).to_dict() | {layer: {"w": w, "a": 32}}).apply(qmodel)
    report = proqha.export_onnx(qmodel, tmp_path / "f.onnx", (3, 8, 8), batches)
    assert not report.failures  # kernels and the parity rules
    assert [n for n in report.kernels.float_layer_names if n.split("_nchwc")[0] == layer]
    assert report.kernels.integer_layers == 6  # every other conv and linear in int8


def _quick_latency(cfg, run_dir, on_progress=None):
    """``search_latency`` on the real engine, timed briefly (no latency is asserted)."""
    from proqha.deploy.latency_table import EngineLatency

    return EngineLatency(cfg.latency_engine, cfg.latency_batch, run_dir / "latency_table.json", threads=1,
                         warmup=1, iters=2, seconds=0.0, on_progress=on_progress)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [("--target-latency-ms", "1000"), ("--target-latency-ratio", "100")])
def test_proqha_search_with_a_latency_budget_times_the_table_once_and_records_every_step(digits_run, tmp_path,
                                                                                        monkeypatch, budget):
    from typer.testing import CliRunner

    from proqha.cli.app import app
    from proqha.deploy import latency_table
    from proqha.search.frontier import read_frontier

    monkeypatch.setattr(latency_table, "search_latency", _quick_latency)
    run = tmp_path / "search"
    result = CliRunner().invoke(app, ["search", "--from", str(digits_run), "--run-dir", str(run),
                                      *budget, "--steps", "2", "--finetune-epochs", "0", "--final-epochs", "0"])
    assert result.exit_code == 0, result.output
    rows = read_frontier(run)
    assert len(rows) == 2 and all(r["latency_ms"] > 0 and r["latency_ms_pred"] > 0 and r["latency_ratio"] > 0
                                  for r in rows)
    assert all(v == 32 for k, v in rows[-1].items() if k.endswith("/w"))  # a budget for every layer in float
    table = json.loads((run / "latency_table.json").read_text())
    assert set(table["start"]) == {k[:-2] for k in rows[0] if k.endswith("/w")}
    assert (run / "frontier_latency.png").is_file() and "latency" in result.output


@pytest.mark.slow
def test_a_bad_latency_budget_is_one_line_exit_2_and_leaves_no_run_folder(digits_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from proqha.cli.app import app
    from proqha.deploy import latency_table

    monkeypatch.setattr(latency_table, "search_latency", _quick_latency)
    bad = CliRunner().invoke(app, ["search", "--from", str(digits_run), "--run-dir", str(tmp_path / "bad"),
                                   "--target-latency-ms", "1", "--latency-engine", "tpu"])
    assert bad.exit_code == 2 and "latency" in bad.output and not (tmp_path / "bad").exists()
    low = CliRunner().invoke(app, ["search", "--from", str(digits_run), "--run-dir", str(tmp_path / "low"),
                                   "--target-latency-ratio", "0.01", "--steps", "1"])  # no bits reach it
    assert low.exit_code == 2 and "--target-latency-ratio 0.01 is more than 10% under the fastest graph" in low.output, low.output
    assert len(low.output.strip().splitlines()) == 1 and not (tmp_path / "low").exists()
    both = CliRunner().invoke(app, ["search", "--from", str(digits_run), "--run-dir", str(tmp_path / "both"),
                                    "--target-latency-ms", "1", "--target-latency-ratio", "1.2"])
    assert both.exit_code == 2 and "--target-latency-ratio" in both.output and "not both" in both.output
    assert len(both.output.strip().splitlines()) == 1 and not (tmp_path / "both").exists()


def test_a_latency_budget_measures_only_the_levels_that_save_latency(monkeypatch):
    """Under a latency budget alone a narrower activation only adds a clamp and 5-7 weight bits stay int8, so the
    loss table measures float and the weight widths whose format the engine's table finds faster."""
    from proqha.search import sensitivity

    measured: list[tuple[str, str, int]] = []
    real = sensitivity.measure_knobs

    def recording(model, current, jobs, *args, **kwargs):
        measured.extend((knob.layer, knob.kind, level) for knob, level in jobs)
        return real(model, current, jobs, *args, **kwargs)

    monkeypatch.setattr(sensitivity, "measure_knobs", recording)
    train, _, _ = _data()
    qmodel = _qmodel(train)
    deltas = _deltas(qmodel)
    first, _ = list(deltas)
    deltas[first]["int4"] = -0.05  # packed 4-bit weights run faster in the first layer only
    assert len(_search(qmodel, FakeEngine(deltas), 1.0 + 0.25, monkeypatch).steps) == 2  # one table
    assert {(layer, kind, level) for layer, kind, level in measured if level != 32} == {(first, "w", 4), (first, "w", 3)}
    assert {(layer, kind) for layer, kind, level in measured if level == 32} == {(n, k) for n in deltas for k in "wa"}


def _fit_case(floats: list[float] | None = None, gains: list[float] | None = None):
    """Four searchable layers on an additive fake engine (1 ms int8 graph): by default the first costs 2.0 ms
    in float and removes loss 10 (5.0 per ms), each other one 0.45 ms and loss 1 (2.2 per ms)."""
    from types import MethodType, SimpleNamespace

    from proqha.search.knobs import Knob
    from proqha.search.progressive import ProgressiveSearch

    train, _, _ = _data()
    torch.manual_seed(0)
    hidden = [m for _ in range(4) for m in (torch.nn.Linear(16, 16), torch.nn.ReLU())]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), *hidden,
                              torch.nn.Linear(16, 4))  # the first and the last layer stay at 8 bits
    qmodel = proqha.quantize(net, next(iter(train))[0], bits=8)
    names = list(searchable_layers(qmodel))
    assert len(names) == 4
    floats, gains = floats or [2.0, 0.45, 0.45, 0.45], gains or [10.0, 1.0, 1.0, 1.0]
    engine = FakeEngine({n: {"float": f} for n, f in zip(names, floats)})
    gains = dict(zip(names, gains))
    damage = {Knob(n, kind): {8: gains[n] if kind == "w" else 0.0, 32: 0.0} for n in names for kind in "wa"}
    search = SimpleNamespace(base_cost=SimpleNamespace(latency_model=engine.table(qmodel, SIZE)), latency=engine,
                             model=qmodel, input_size=SIZE, reference=None)
    search.time_graph = MethodType(ProgressiveSearch.time_graph, search)  # the search's own timing
    return search, engine, names, BitConfig.from_model(qmodel).to_dict(), damage


def _measured(search, engine, bits) -> float:
    moved = copy.deepcopy(search.model)
    BitConfig(bits).apply(moved)
    return engine.graph_ms(moved, SIZE)


def test_the_fit_adds_the_float_layers_that_fit_the_headroom_when_the_best_one_overshoots():
    """Budget 2.5 ms from the int8 graph: the layer that removes the most loss per ms would take the graph to
    3.0 ms, so the fit floats the three small layers instead (2.35 ms, within 10% under the budget), where
    taking the best layer and dropping it again ends at the start graph, 0.4 of the budget."""
    from proqha.search.latency_fit import fit_measured

    search, engine, names, start, damage = _fit_case()
    fitted = fit_measured(search, start, start, damage, 2.5)
    assert [_fmt(fitted[n]) for n in names] == ["int8", "float", "float", "float"]
    assert engine.graphs == 5  # 1.0, 1.45, 1.9, 2.35 twice (in the band's lower half, and no layer fits 0.15 ms)
    assert _measured(search, engine, fitted) == pytest.approx(2.35)


def test_a_graph_in_the_lower_half_of_the_band_takes_one_more_layer_that_fits():
    """Budget 2.0 ms: the best layer per ms (0.85 ms) lands at 1.85 ms, in the band's lower half, and a 0.1 ms
    layer still fits: the fit takes it (1.95 ms), so a final timing a few percent fast stays within 10%. Where
    that layer measures 0.3 ms (the table was off), the graph goes over and the fit keeps 1.85 ms."""
    from proqha.search.latency_fit import fit_measured

    search, engine, names, start, damage = _fit_case([0.85, 0.1, 2.0, 2.0], [10.0, 0.5, 1.0, 1.0])
    fitted = fit_measured(search, start, start, damage, 2.0)
    assert [_fmt(fitted[n]) for n in names] == ["float", "float", "int8", "int8"]
    assert _measured(search, engine, fitted) == pytest.approx(1.95)
    search.latency = FakeEngine({n: {"float": f} for n, f in zip(names, [0.85, 0.3, 2.0, 2.0])})
    kept = fit_measured(search, start, start, damage, 2.0)
    assert [_fmt(kept[n]) for n in names] == ["float", "int8", "int8", "int8"]


def test_a_layer_that_measures_over_the_budget_is_refused_and_the_next_one_tried():
    """Budget 1.5 ms from the int8 graph (1.0 ms): the table finds the big-gain layer 0.4 ms in float, but the
    graph measures 0.8 ms more with it (1.8 ms, over). The fit refuses that layer and floats the next one that
    fits (0.45 ms: 1.45 ms, in the band's upper half), where going back to the start ends at 0.67 of the
    budget."""
    from proqha.search.latency_fit import fit_measured

    search, engine, names, start, damage = _fit_case([0.4, 0.45, 2.0, 2.0], [10.0, 1.0, 1.0, 1.0])
    search.latency = FakeEngine({n: {"float": f} for n, f in zip(names, [0.8, 0.45, 2.0, 2.0])})
    fitted = fit_measured(search, start, start, damage, 1.5)
    assert [_fmt(fitted[n]) for n in names] == ["int8", "float", "int8", "int8"]
    assert search.latency.graphs == 4  # 1.0, 1.8, then 1.45 twice (in the band's upper half)


class NoisyEngine(FakeEngine):
    """The additive engine whose first reading of a graph with ``floats`` float layers is ``extra`` ms slow."""

    def __init__(self, deltas: dict[str, dict[str, float]], floats: int, extra: float) -> None:
        super().__init__(deltas)
        self.floats, self.extra, self.slowed = floats, extra, False

    def graph_ms(self, model, input_size) -> float:
        ms = super().graph_ms(model, input_size)
        floats = sum(1 for b in BitConfig.from_model(model).to_dict().values() if _fmt(b) == "float")
        if floats == self.floats and not self.slowed:
            self.slowed = True
            return ms + self.extra
        return ms


def test_one_slow_reading_within_the_band_does_not_end_the_fit():
    """Budget 2.5 ms: the graph with two small layers in float (1.9 ms) reads 2.3 ms once, within the band; its
    second reading brings the mean (2.1 ms) under the band, so the fit floats the third small layer (2.35 ms)
    instead of ending at 0.76 of the budget."""
    from proqha.search.latency_fit import fit_measured

    search, engine, names, start, damage = _fit_case()
    noisy = NoisyEngine(engine.deltas, floats=2, extra=0.4)
    search.latency = noisy
    fitted = fit_measured(search, start, start, damage, 2.5)
    assert noisy.slowed
    assert [_fmt(fitted[n]) for n in names] == ["int8", "float", "float", "float"]
    assert _measured(search, engine, fitted) == pytest.approx(2.35)


class SlowFloatEngine(FakeEngine):
    """The additive engine with every graph that has a float layer ``extra`` ms slower than its table says."""

    def __init__(self, deltas: dict[str, dict[str, float]], extra: float) -> None:
        super().__init__(deltas)
        self.extra = extra

    def graph_ms(self, model, input_size) -> float:
        floats = any(_fmt(b) == "float" for b in BitConfig.from_model(model).to_dict().values())
        return super().graph_ms(model, input_size) + (self.extra if floats else 0.0)


def test_a_fit_that_measures_no_graph_under_the_budget_ends_at_its_start(monkeypatch):
    """Every graph with a float layer measures 5 ms over what the table predicts; from every layer in float,
    two measured moves never get under the 2.5 ms budget, so the fit ends at the start (1.0 ms, which the
    budget admits), not at the last graph it measured (6.45 ms)."""
    from proqha.search import latency_fit

    search, engine, names, start, damage = _fit_case()
    search.latency = SlowFloatEngine(engine.deltas, extra=5.0)
    monkeypatch.setattr(latency_fit, "ROUNDS", 2)
    every = {n: {"w": 32, "a": 32} if n in names else dict(kb) for n, kb in start.items()}
    fitted = latency_fit.fit_measured(search, every, start, damage, 2.5)
    assert fitted == start


def test_the_fit_drops_a_float_layer_that_covers_the_excess_in_one_measured_move():
    """Budget 2.5 ms from every layer in float (4.35 ms): only the big layer's 2.0 ms cover the 1.85 ms excess,
    so one move drops it (2.35 ms), where dropping the least loss per ms first takes the three small layers one
    by one and ends at the start graph."""
    from proqha.search.latency_fit import fit_measured

    search, engine, names, start, damage = _fit_case()
    every = {n: {"w": 32, "a": 32} if n in names else dict(kb) for n, kb in start.items()}
    before = engine.graphs
    fitted = fit_measured(search, every, start, damage, 2.5)
    assert engine.graphs - before == 3  # the table's choice, then the one move, timed twice (in the band)
    assert [_fmt(fitted[n]) for n in names] == ["int8", "float", "float", "float"]


def test_a_latency_budget_no_measured_graph_reaches_is_refused_and_leaves_no_run_folder(tmp_path, monkeypatch):
    """Half the int8 graph, where no format is faster than int8: one OptionError before step 0, and the run
    folder the latency table was cached in is gone (nothing half-written)."""
    from proqha.deploy import latency_table

    class CachingEngine(FakeEngine):  # keeps its table in the run folder, as the real measurer does
        def table(self, model, input_size) -> LatencyModel:
            table = super().table(model, input_size)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "latency_table.json").write_text(json.dumps(table.to_dict()))
            return table

    train, calib, test = _data()
    qmodel = _qmodel(train)
    folder = tmp_path / "run"
    monkeypatch.setattr(latency_table, "search_latency",
                        lambda cfg, run_dir, on_progress=None: CachingEngine(_deltas(qmodel)))
    with pytest.raises(OptionError, match=r"target_latency_ratio 0.5 is more than 10% under the fastest graph "
                                          r"measured on ort: 1 ms, 1.000x the uniform 8-bit graph's 1 ms"):
        proqha.search_bits(qmodel, train, calib, test, target_latency_ratio=0.5, run_dir=folder)
    assert not folder.exists()
