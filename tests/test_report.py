"""`proqha report`: uniform-bit baselines beside a search, and whether a search step dominates each."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.deploy.search_plots import UniformPoint, dominating_steps, search_baselines
from proqha.search.frontier import read_frontier

runner = CliRunner()


def _row(step: int, cost: float, bitops: float, top1: float) -> dict:
    return {"step": step, "cost": cost, "bitops": bitops, "test_top1": top1}


def test_a_step_dominates_only_with_no_more_cost_no_more_bitops_no_less_accuracy():
    point = UniformPoint("train-2", 3, 0.09375, 1e6, 97.0)
    rows = [_row(0, 0.25, 4e6, 99.0),        # more cost and BitOPs
            _row(1, 0.09, 1.2e6, 98.0),      # cheaper paper cost, more BitOPs
            _row(2, 0.09, 0.9e6, 96.9),      # cheaper in both, less accurate
            _row(3, 0.09375, 1e6, 97.0),     # equal in everything: dominates (no worse anywhere)
            _row(4, 0.08, 0.8e6, math.nan)]  # not evaluated
    assert dominating_steps(rows, point) == [3]


@pytest.mark.slow
def test_report_states_per_baseline_whether_a_step_dominates_it(search_run, monkeypatch):
    monkeypatch.chdir(search_run.parent.parent)
    result = runner.invoke(app, ["report", str(search_run)])
    assert result.exit_code == 0, result.output
    baselines = search_baselines(search_run)
    assert [b.run for b in baselines] == ["train-1"]  # the 8-bit training run beside the search
    steps = dominating_steps(read_frontier(search_run), baselines[0])
    assert "dominated by" in result.stdout and "train-1" in result.stdout
    expected = ", ".join(f"step {s}" for s in steps) if steps else "no step"
    assert expected in result.stdout


@pytest.mark.slow
def test_report_file_size_exports_every_step_and_plots_accuracy_against_it(search_run, monkeypatch):
    import onnx

    from proqha.deploy.search_plots import measure_file_sizes
    from proqha.export.onnx_export import export_onnx
    from proqha.quant import set_uniform_bits
    from proqha.recipe import load_model
    from proqha.search.frontier import step_checkpoints

    monkeypatch.chdir(search_run.parent.parent)
    result = runner.invoke(app, ["report", str(search_run), "--file-size"])
    assert result.exit_code == 0, result.output
    assert "file KB (ratio)" in result.stdout
    assert (search_run / "frontier_file_size.png").read_bytes()[:4] == b"\x89PNG"
    rows = read_frontier(search_run)
    fp32, baselines = measure_file_sizes(search_run, rows, search_baselines(search_run))
    assert [p.run for p, _ in baselines] == ["train-1"]
    assert all(0 < r["file_bytes"] < fp32 for r in rows)
    # the figure is the exported graph's: the same model at 2 bit gives a file about 4x smaller in weights
    model, state = load_model(dict(step_checkpoints(search_run))[rows[-1]["step"]])
    set_uniform_bits(model, 2)
    proto, _ = export_onnx(model, state.input_size)
    assert any(t.data_type == onnx.TensorProto.INT2 for t in proto.graph.initializer)
    assert proto.ByteSize() < rows[-1]["file_bytes"]


@pytest.mark.slow
def test_report_compares_a_search_with_its_start_and_uniform_runs_of_the_same_recipe_only(search_run, tmp_path):
    """Unrelated train runs beside a search (another recipe: other epochs, optimizer) are not baselines; the
    run it started from is, even when not the newest; a same-recipe run at other bits is."""
    import json
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(search_run, root / "search-1")
    start = json.loads((search_run / "config.json").read_text())["source"]
    shutil.copytree(start, root / "train-1")
    config = json.loads((root / "search-1" / "config.json").read_text())
    (root / "search-1" / "config.json").write_text(json.dumps(config | {"source": str(root / "train-1")}))
    base = json.loads((root / "train-1" / "config.json").read_text())
    for name, change in [("train-2", {"epochs": base["epochs"] + 7}), ("train-3", {"optimizer": "adam"}),
                         ("train-4", {"bits": 4}), ("train-5", {"bits": 6, "seed": 3})]:
        shutil.copytree(root / "train-1", root / name)
        (root / name / "config.json").write_text(json.dumps(base | change))
    baselines = search_baselines(root / "search-1")
    assert [(b.run, b.start) for b in baselines] == [("train-1", True), ("train-4", False), ("train-5", False)]
    result = runner.invoke(app, ["report", str(root / "search-1")])
    assert result.exit_code == 0, result.output
    assert "train-1 (start)" in result.stdout and "train-2" not in result.stdout and "train-3" not in result.stdout


def test_plot_labels_are_plain_and_legends_sit_outside_the_data():
    from proqha.deploy.plotting import legend_outside, plain_number, pyplot, time_label

    assert [time_label(v) for v in (0.22, 1.0, 15.0)] == ["220 µs", "1 ms", "15 ms"]
    assert [plain_number(v) for v in (0.0022, 0.1, 2200.0)] == ["0.0022", "0.1", "2200"]
    fig, ax = pyplot().subplots()
    ax.plot([0, 1], [0, 1], "o", label="steps")
    legend_outside(ax)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 > ax.get_window_extent().x1  # right of the axes: it cannot cover a point
    pyplot().close(fig)
