"""`proqha report`: uniform-bit baselines beside a search, and whether a search step dominates each."""

from __future__ import annotations

import math

from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.deploy.report import UniformPoint, dominating_steps, read_frontier, search_baselines

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
