"""`proqha sensitivity`: the loss and top-1 each knob costs at lower bits, the same table the allocate strategy
measures, its csv and heat map, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.runs import RunDir
from proqha.search.sensitivity import read_sensitivity_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def measured(digits_run):
    """`proqha sensitivity` of the digits run with its defaults (into the run folder), run once."""
    result = runner.invoke(app, ["sensitivity", str(digits_run), "--top", "5"])
    assert result.exit_code == 0, result.output
    return result, read_sensitivity_csv(RunDir(digits_run).sensitivity_csv)


def _model(run):
    from proqha.quant import BitConfig
    from proqha.recipe import load_model
    from proqha.search.knobs import model_knobs

    model, _ = load_model(RunDir(run).last)
    return model, model_knobs(model), BitConfig.from_model(model).to_dict()


@pytest.mark.slow
def test_the_cli_prints_the_worst_knobs_and_writes_one_csv_row_per_knob_and_level_and_a_png(measured, digits_run):
    import matplotlib.image

    result, rows = measured
    _, knobs, current = _model(digits_run)
    expected = [(k.layer, k.kind, b) for k in knobs for b in (8, 6, 4, 2) if b <= current[k.layer][k.kind]]
    assert [(r.layer, r.knob, r.bits) for r in rows] == expected and len(rows) == 4 * len(knobs)
    assert {r.layer for r in rows} == {k.layer for k in knobs} and "conv1" not in {r.layer for r in rows}  # no edges
    base = [r for r in rows if r.bits == current[r.layer][r.knob]]
    assert len({(r.loss, r.top1) for r in base}) == 1 and all(r.loss_damage == r.top1_drop == 0 for r in base)
    lowered = sorted((r for r in rows if r not in base), key=lambda r: (-r.top1_drop, -r.loss_damage))
    table = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(table) == 5 and "sensitivity:" in result.stdout
    for line, row in zip(table, lowered):  # worst first
        assert line.split("│")[1].strip() == row.layer and f"{row.top1_drop:+.2f}" in line
    png = RunDir(digits_run).sensitivity_png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 100 and width > 200
    assert f"wrote {RunDir(digits_run).sensitivity_csv}" in result.stderr


@pytest.mark.slow
def test_two_bits_hurt_more_than_eight_for_most_knobs(measured):
    _, rows = measured
    at = {(r.layer, r.knob, r.bits): r.loss_damage for r in rows}
    knobs = {(r.layer, r.knob) for r in rows}
    worse = sum(at[(*k, 2)] > at[(*k, 8)] for k in knobs)
    assert worse >= 0.75 * len(knobs), f"{worse} of {len(knobs)}"
    total = {b: sum(at[(*k, b)] for k in knobs) for b in (8, 6, 4, 2)}
    assert total[2] > max(total[8], total[6], total[4])  # 2 bits hurt most in all


@pytest.mark.slow
def test_the_allocate_strategys_table_is_the_commands_loss_column(digits_run, tmp_path):
    from proqha.search import SearchConfig
    from proqha.search.progressive import ProgressiveSearch
    from proqha.search.strategies import sensitivity_table

    # both targets, so every lower level of every knob lowers one (paper cost alone: no activation level)
    cfg = SearchConfig(source=str(digits_run), strategy="allocate", target_cost=0.1, target_bitops=0.5).resolved()
    search = ProgressiveSearch.from_checkpoint(cfg, None, RunDir(digits_run).last, torch.device("cpu"))
    table = sensitivity_table(search, 1, search.bits(), None)
    search.cfg = replace(cfg, target_bitops=None)
    assert {k.kind for k, levels in sensitivity_table(search, 1, search.bits(), None).items() if len(levels) > 1} == {"w"}
    # the strategy measures on the whole calibration split in batches of max(batch_size, 256)
    result = runner.invoke(app, ["sensitivity", str(digits_run), "--split", "calib", "--batch-size", "256",
                                 "--bits", "8,7,6,5,4,3,2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {(r.layer, r.knob, r.bits): r for r in read_sensitivity_csv(tmp_path / "sensitivity.csv")}
    assert {(k.layer, k.kind, b) for k, levels in table.items() for b in levels} == set(rows)
    for knob, levels in table.items():
        for bits, damage in levels.items():
            assert damage == max(rows[(knob.layer, knob.kind, bits)].loss_damage, 0.0), (knob, bits)


@pytest.mark.slow
def test_measuring_restores_the_model(digits_run):
    from proqha.quant import BitConfig
    from proqha.search.sensitivity import measure_knobs

    model, knobs, current = _model(digits_run)
    tensors = lambda: [*model.named_parameters(), *model.named_buffers()]  # noqa: E731
    before = {n: t.detach().clone() for n, t in tensors()}
    batches = [(torch.randn(8, 1, 8, 8), torch.arange(8))]
    base, found = measure_knobs(model, current, [(knobs[0], 2), (knobs[1], 3)], batches, torch.device("cpu"))
    assert len(found) == 2 and found[0] != base
    assert BitConfig.from_model(model).to_dict() == current
    assert all(torch.equal(before[n], t) for n, t in tensors())


BAD = [
    (["--bits", "9"], "--bits must be comma-separated bits in 2..8, got (9,)"),
    (["--bits", "8,1"], "--bits must be comma-separated bits in 2..8"),
    (["--bits", "8,x"], "--bits must be comma-separated bits in 2..8, got '8,x'"),
    (["--split", "train"], "--split must be one of calib, test, got 'train'"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["no-such-run"], "RUN not found: no-such-run"),
    ([], "no search, train or quantize run under runs/"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sensitivity", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_rank_by_loss_orders_the_table_by_the_loss_increase(digits_run, tmp_path):
    result = runner.invoke(app, ["sensitivity", str(digits_run), "--bits", "2", "--samples", "64", "--top", "6",
                                 "--rank-by", "loss_damage", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [r for r in read_sensitivity_csv(tmp_path / "sensitivity.csv") if r.bits == 2]
    worst = sorted(rows, key=lambda r: (-r.loss_damage, -r.top1_drop))[:6]
    table = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in table] == [r.layer for r in worst]
