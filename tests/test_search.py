"""The progressive search: its score, knob sampling, selection, stopping, resume, and the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from proqha.checkpoint import load_checkpoint, save_checkpoint
from proqha.cli.app import app
from proqha.errors import ProqhaError
from proqha.quant import BitConfig, Quantizer, searchable_layers
from proqha.recipe import load_model
from proqha.search import Knob, SearchConfig, choose_candidate, hessian_score, run_search, sample_candidates
from proqha.search.scores import Snapshot
from proqha.train import TrainConfig, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(digits_run):
    """A digits model trained at 8 bit for 3 epochs (the shared run)."""
    return digits_run


def _search_cfg(trained, **kw) -> SearchConfig:
    base = {"source": str(trained), "candidates": 4, "steps": 3, "finetune_epochs": 1, "final_epochs": 0,
            "batch_size": 128}
    return SearchConfig(**(base | kw)).resolved()


def _frontier(run_dir):
    with open(run_dir / "frontier.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_float_run_enters_the_search_as_a_whole_8_bit_model(tmp_path, trained):
    """Edge layers and residual adds too, as an 8-bit run would have them: else the search's result had
    float layers that no int8 runtime runs, and its export failed."""
    train_run(TrainConfig(epochs=1, batch_size=128, bits=32).resolved(), tmp_path / "float")
    run_search(_search_cfg(tmp_path / "float", steps=1), tmp_path / "s")
    model, state = load_model(tmp_path / "s" / "checkpoints" / "step-001.pt")
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer)]
    assert quantizers and all(q.enabled and q.initialized for q in quantizers)
    assert state.recipe["quant"]["bits"] == 8
    run_search(_search_cfg(trained, steps=1), tmp_path / "s8")
    assert float(_frontier(tmp_path / "s")[0]["cost"]) == float(_frontier(tmp_path / "s8")[0]["cost"])


# --- the score -------------------------------------------------------------------------------------

def test_hessian_score_equals_hand_computation():
    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr, eps, beta2 = 1e-2, 1e-8, 0.999
    # gradient of mean cross-entropy of a linear layer, by hand
    p = torch.softmax(x @ w0.T + b0, dim=1)
    g_out = (p - F.one_hot(y, 2).float()) / len(y)
    grads = [g_out.T @ x, g_out.sum(0)]
    assert torch.cat([g.flatten() for g in grads]).norm() < 5  # below the clipping norm
    expected = 0.0
    for g in grads:
        v = (1 - beta2) * g.square()  # Adam's second moment after one step
        delta = lr * g / (g.abs() + eps)  # Adam's first (bias-corrected) step
        expected += float(((v.sqrt() + eps) * delta.square()).sum())
    score = hessian_score(model, x, y, Snapshot(model).tensors, lr=lr)
    assert score == pytest.approx(expected, rel=1e-5)
    assert not torch.equal(model.weight.detach(), w0)  # the model took the step (callers restore it)


def test_hessian_score_of_a_non_finite_loss_is_inf():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    assert hessian_score(model, torch.randn(2, 3), torch.tensor([0, 1]), Snapshot(model).tensors) == math.inf


# --- knobs and selection ---------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(start=st.lists(st.integers(2, 8), min_size=4, max_size=12), interval=st.sampled_from([1, 2, 4]),
       min_bits=st.integers(2, 6), ratio=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_knobs_never_go_below_the_floor_and_move_by_the_interval(start, interval, min_bits, ratio, seed):
    knobs = [Knob(f"l{i // 2}", "wa"[i % 2]) for i in range(len(start) // 2 * 2)]
    bits = {k.layer: {} for k in knobs}
    for k, b in zip(knobs, start):
        bits[k.layer][k.kind] = b
    gen = torch.Generator().manual_seed(seed)
    cands = sample_candidates(bits, knobs, 5, ratio, interval, min_bits, gen)
    lowerable = [k for k in knobs if bits[k.layer][k.kind] - interval >= min_bits]
    if not lowerable:
        assert cands == []
        return
    for cand in cands:
        changes = [bits[k.layer][k.kind] - cand[k.layer][k.kind] for k in knobs]
        assert set(changes) <= {0, interval}
        assert all(cand[k.layer][k.kind] >= min(min_bits, bits[k.layer][k.kind]) for k in knobs)
        assert changes.count(interval) == min(len(lowerable), max(1, int(ratio * len(knobs))))


@settings(max_examples=60, deadline=None)
@given(start=st.lists(st.integers(2, 8), min_size=4, max_size=12), interval=st.sampled_from([1, 2]),
       ratio=st.floats(0.05, 1.0), slack=st.integers(1, 30), seed=st.integers(0, 1000))
def test_a_fitted_candidate_lands_within_one_knob_of_its_budget(start, interval, ratio, slack, seed):
    """With ``enough``, a candidate stops at the first knob that meets the budget: at or below it, and
    less than one knob's saving below (cost here: the sum of all bits, one knob saves ``interval``; the
    search only steps while its budget is unmet, so the start is above it)."""
    knobs = [Knob(f"l{i // 2}", "wa"[i % 2]) for i in range(len(start) // 2 * 2)]
    bits = {k.layer: {} for k in knobs}
    for k, b in zip(knobs, start):
        bits[k.layer][k.kind] = b
    total = lambda c: sum(v for kb in c.values() for v in kb.values())  # noqa: E731
    budget = total(bits) - slack
    cands = sample_candidates(bits, knobs, 5, ratio, interval, 2, torch.Generator().manual_seed(seed),
                              enough=lambda c: total(c) <= budget)
    for cand in cands:
        if total(cand) <= budget:
            assert total(cand) > budget - interval
        else:  # not enough knobs in one candidate: it lowered its whole share
            changed = sum(bits[k.layer][k.kind] != cand[k.layer][k.kind] for k in knobs)
            lowerable = [k for k in knobs if bits[k.layer][k.kind] - interval >= 2]
            assert changed == min(len(lowerable), max(1, int(ratio * len(knobs))))


def test_lam_zero_picks_the_lowest_score_and_lam_trades_for_savings():
    scores, savings = [3.0, 1.0, 2.0], [0.0, 1.0, 5.0]
    assert choose_candidate(scores, savings, 0.0) == 1
    assert choose_candidate(scores, savings, 10.0) == 2
    assert choose_candidate([math.inf, 2.0, 1.5], [9.0, 1.0, 1.0], 0.0) == 2  # non-finite never chosen


# --- whole searches --------------------------------------------------------------------------------

@pytest.mark.slow
def test_cost_falls_every_step_and_files_are_written(trained, tmp_path):
    result = run_search(_search_cfg(trained), tmp_path / "s")
    assert result == {"stopped": "steps", "steps": 3, "run_dir": str(tmp_path / "s")}
    rows = _frontier(tmp_path / "s")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    costs = [float(r["cost"]) for r in rows]
    assert all(b < a for a, b in zip(costs, costs[1:]))
    for step in range(4):
        assert (tmp_path / "s" / "checkpoints" / f"step-{step:03d}.pt").is_file()
        assert (tmp_path / "s" / f"bits-step{step:03d}.json").is_file()
    ckpt = load_checkpoint(tmp_path / "s" / "checkpoints" / "step-003.pt")
    assert ckpt.bits["layer1.0.conv1"]["w"] == int(rows[-1]["layer1.0.conv1/w"])


@pytest.mark.slow
def test_resume_right_after_the_step_0_checkpoint_logs_step_0_once(trained, tmp_path):
    class Killed(Exception):
        pass

    def kill_at_step_0(row):
        raise Killed

    with pytest.raises(Killed):
        run_search(_search_cfg(trained, steps=2), tmp_path / "s", on_step=kill_at_step_0)
    run_search(_search_cfg(trained, steps=2), tmp_path / "s", resume=True)
    assert [int(r["step"]) for r in _frontier(tmp_path / "s")] == [0, 1, 2]


@pytest.mark.slow
def test_stopped_then_resumed_search_equals_uninterrupted(trained, tmp_path):
    run_search(_search_cfg(trained), tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_step_1(row):
        if row["step"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_search(_search_cfg(trained), tmp_path / "cut", on_step=kill_after_step_1)
    # simulate a kill between the checkpoint and the log line of step 1
    rows = _frontier(tmp_path / "cut")
    with open(tmp_path / "cut" / "frontier.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:1])
    run_search(_search_cfg(trained), tmp_path / "cut", resume=True)
    full, cut = _frontier(tmp_path / "full"), _frontier(tmp_path / "cut")
    assert len(full) == len(cut) == 4
    for a, b in zip(full, cut):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step-003.pt").model
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "step-003.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


@pytest.mark.slow
@pytest.mark.parametrize("target", [{"target_cost": 0.2}, {"target_bitops": 0.04}, {"target_size_mb": 0.06}])
def test_targets_stop_the_search(trained, tmp_path, target):
    result = run_search(_search_cfg(trained, steps=20, finetune_epochs=0, **target), tmp_path / "s")
    assert result["stopped"] == "target"
    rows = _frontier(tmp_path / "s")
    assert len(rows) == result["steps"] + 1 < 21
    last, before = rows[-1], rows[-2]
    key, value = next(iter(target.items()))
    measure = {"target_cost": lambda r: float(r["cost"]), "target_bitops": lambda r: float(r["bitops_ratio"]),
               "target_size_mb": lambda r: float(r["size_bytes"]) / 1e6}[key]
    assert measure(last) <= value < measure(before)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["table", "sets"])
def test_search_lands_on_both_targets(trained, tmp_path, strategy):
    """Paper cost and BitOPs together (uniform W4A4's): the search ends at or below both, and its last
    step lowered no knob more than it needed (undoing one of them breaks a target)."""
    from proqha.cost import cost_report
    from proqha.search.progressive import target_met

    model, state = load_model(trained / "checkpoints" / "last.pt")
    report = cost_report(model, state.input_size)
    uniform = {name: {"w": 4, "a": 4} for name in searchable_layers(model)}
    w4a4 = report.with_bits(BitConfig.from_model(model).to_dict() | uniform)
    cfg = _search_cfg(trained, steps=20, finetune_epochs=0, strategy=strategy, target_cost=w4a4.paper_cost,
                      target_bitops=w4a4.bitops_ratio)
    result = run_search(cfg, tmp_path / "s")
    assert result["stopped"] == "target"
    rows = _frontier(tmp_path / "s")
    last, before = rows[-1], rows[-2]
    assert float(last["cost"]) <= cfg.target_cost * (1 + 1e-9)
    assert float(last["bitops_ratio"]) <= cfg.target_bitops * (1 + 1e-9)
    columns = [c for c in last if "/" in c]
    bits = BitConfig.from_model(model).to_dict()
    for c in columns:
        layer, kind = c.split("/")
        bits[layer][kind] = int(last[c])
    changed = [c for c in columns if last[c] != before[c]]
    assert changed
    undone = []
    for c in changed:
        layer, kind = c.split("/")
        back = {name: dict(kb) for name, kb in bits.items()}
        back[layer][kind] = int(before[c])
        undone.append(target_met(cfg, report.with_bits(back)))
    assert not all(undone)  # some knob of the last step was needed to meet the targets


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["table", "sets"])
def test_a_target_just_below_the_start_costs_one_knob(trained, tmp_path, strategy):
    """A paper-cost target a hair below the start is met by lowering one weight knob, not ratio x knobs."""
    start = float(_frontier_of(run_search(_search_cfg(trained, steps=1, finetune_epochs=0), tmp_path / "probe"))[0]
                  ["cost"])
    cfg = _search_cfg(trained, steps=5, finetune_epochs=0, strategy=strategy, target_cost=start * (1 - 1e-6))
    assert run_search(cfg, tmp_path / "s")["stopped"] == "target"
    first, last = _frontier(tmp_path / "s")
    changed = [c for c in first if "/" in c and first[c] != last[c]]
    assert len(changed) == 1 and changed[0].endswith("/w")


def _frontier_of(result):
    return _frontier(Path(result["run_dir"]))


@pytest.mark.slow
def test_weights_only_search_keeps_activations_fixed(trained, tmp_path):
    cfg = _search_cfg(trained, steps=2, finetune_epochs=0, knobs="weights", fixed_bits=4)
    run_search(cfg, tmp_path / "s")
    rows = _frontier(tmp_path / "s")
    assert all(c.endswith("/w") for c in rows[0] if "/" in c)  # only weight knobs are searched
    bits = BitConfig.load(tmp_path / "s" / "bits.json").to_dict()
    model, _ = load_model(trained / "checkpoints" / "last.pt")
    for name in searchable_layers(model):
        assert bits[name]["a"] == 4
    assert [r["cost"] for r in rows] == sorted((r["cost"] for r in rows), reverse=True)
    report = runner.invoke(app, ["report", str(tmp_path / "s")])  # bits.png with weight knobs only
    assert report.exit_code == 0, report.output
    assert (tmp_path / "s" / "bits.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("metric, activations", [("paper", 8), ("bitops", 7)])
def test_search_stops_at_the_floor_of_what_its_cost_counts(trained, tmp_path, metric, activations):
    """With no target, the paper cost counts weights only (a sub-8-bit activation costs a clamp on a CPU and
    saves nothing it counts); BitOPs count both. Half the counted knobs fall a bit per step."""
    result = run_search(_search_cfg(trained, min_bits=7, ratio=0.5, steps=10, finetune_epochs=0,
                                    cost_metric=metric), tmp_path / "s")
    assert result == {"stopped": "floor", "steps": 2, "run_dir": str(tmp_path / "s")}
    rows = _frontier(tmp_path / "s")
    assert all(int(v) == 7 for k, v in rows[-1].items() if k.endswith("/w"))
    assert all(int(v) == activations for k, v in rows[-1].items() if k.endswith("/a"))
    assert int(rows[-1]["epochs"]) == 0  # final_epochs 0 here: the floor step takes the final epochs (below)


@pytest.mark.slow
def test_the_step_that_reaches_the_floor_takes_the_final_epochs(trained, tmp_path):
    run_search(_search_cfg(trained, min_bits=7, ratio=0.5, steps=10, finetune_epochs=0, final_epochs=1),
               tmp_path / "s")
    assert [int(r["epochs"]) for r in _frontier(tmp_path / "s")] == [0, 0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["acc", "random"])
def test_other_criteria_run(trained, tmp_path, criterion):
    result = run_search(_search_cfg(trained, criterion=criterion, steps=1), tmp_path / "s")
    assert result["steps"] == 1
    row = _frontier(tmp_path / "s")[1]
    assert (row["score"] == "nan") == (criterion == "random")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["table", "sets"])
def test_same_seed_same_search(trained, tmp_path, strategy):
    """The same seed repeats a search; another seed draws other candidate sets (the reference's strategy)."""
    cfg = lambda **kw: _search_cfg(trained, steps=2, finetune_epochs=0, strategy=strategy, **kw)  # noqa: E731
    run_search(cfg(), tmp_path / "a")
    run_search(cfg(), tmp_path / "b")
    assert _frontier(tmp_path / "a") and _frontier(tmp_path / "b")
    knobs = lambda rows: [{k: v for k, v in r.items() if "/" in k} for r in rows]  # noqa: E731
    assert knobs(_frontier(tmp_path / "a")) == knobs(_frontier(tmp_path / "b"))
    if strategy == "table":
        return
    run_search(cfg(seed=1), tmp_path / "c")
    assert knobs(_frontier(tmp_path / "a")) != knobs(_frontier(tmp_path / "c"))


@pytest.mark.parametrize("kw, message", [
    ({"lam": -1.0}, "^lam must be >= 0"),
    ({"ratio": 0.0}, "^ratio must be in (0, 1]"),
    ({"target_file_kb": float("inf")}, "^target_file_kb must be a finite number and > 0, got inf"),
    ({"target_latency_ratio": 1.2, "target_latency_ms": 1.0}, "^target_latency_ratio is a latency budget too"),
    ({"interval": 3}, "^interval must be 1, 2 or 4"),
    ({"knobs": "layers"}, "^knobs must be one of both, weights, activations"),
    ({"fixed_bits": 4}, "^fixed_bits sets the knobs that are not searched"),
    ({"knobs": "weights", "fixed_bits": 9}, "^fixed_bits must be in 2..8"),
    ({"knobs": "activations", "target_cost": 0.1}, "activations do not count in the paper cost"),
    ({"strategy": "greedy"}, "^strategy must be one of auto, table, sets, allocate"),
    ({"strategy": "allocate", "target_cost": 0.1, "criterion": "random"}, "the random control is strategy 'table'"),
    ({"target_bitops": 0.1, "cost_metric": "paper"}, "conflicts with target_bitops"),
    ({"target_bitops": 0.1, "cost_metric": "size"}, "^cost_metric paper conflicts"),  # the old name, read as paper
    ({"cost_metric": "size_mb"}, "^cost_metric must be paper, bitops or file"),
])
def test_bad_config(kw, message):
    with pytest.raises(ProqhaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SearchConfig(source="x", **kw).resolved()


# --- the CLI ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_then_search_with_no_other_arguments(digits_run, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(digits_run, tmp_path / "runs" / "train-1")  # a 3-epoch run, where `proqha train` puts it
    result = runner.invoke(app, ["search", "--lam", "0.1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "search-1"
    assert len(_frontier(run)) == 9  # step 0 and the 8 default steps
    assert len(list((run / "checkpoints").glob("step-*.pt"))) == 9
    assert len(list(run.glob("bits-step*.json"))) == 9
    for png in ("frontier.png", "bits.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ProQHA frontier" in result.stdout and "ran all 8 steps" in result.stderr
    report = runner.invoke(app, ["report", "--step", "3"])
    assert report.exit_code == 0 and "paper cost" in report.stdout
    bad_step = runner.invoke(app, ["report", "--step", "99"])
    assert bad_step.exit_code == 2 and "--step 99" in bad_step.stderr


def _wrong_arch_checkpoint(trained, tmp_path):
    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    state.recipe["arch"] = "resnet20_post"
    save_checkpoint(state, tmp_path / "wrong.pt")
    return tmp_path / "wrong.pt"


@pytest.mark.parametrize("args, message", [
    (["--lam", "-1"], "--lam must be >= 0"),
    (["--ratio", "0"], "--ratio must be in (0, 1]"),
    (["--ratio", "1.5"], "--ratio must be in (0, 1]"),
    (["--interval", "3"], "--interval must be 1, 2 or 4"),
    (["--criterion", "magic"], "--criterion must be one of"),
    (["--strategy", "allocate"], "--strategy allocate spends a budget"),
    (["--knobs", "activations", "--target-cost", "0.1"], "activations do not count in the paper cost"),
    (["--from", "WRONG"], "does not fit resnet20_post"),
    (["--from", "missing-run"], "no such checkpoint or run directory"),
])
@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line(trained, tmp_path, monkeypatch, args, message):
    wrong = _wrong_arch_checkpoint(trained, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [str(wrong) if a == "WRONG" else a for a in args]
    if "--from" not in args:
        args += ["--from", str(trained)]
    result = runner.invoke(app, ["search", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert list(work.iterdir()) == []


def test_cli_search_without_a_train_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["search"])
    assert result.exit_code == 2 and "run `proqha train`" in result.stderr


def test_auto_strategy_allocates_a_budget_and_otherwise_walks_the_table():
    resolved = lambda **kw: SearchConfig(source="x", **kw).resolved().strategy  # noqa: E731
    assert resolved(target_cost=0.1) == "allocate"
    assert resolved(target_bitops=0.01) == "allocate"
    assert resolved() == "table"
    assert resolved(target_size_mb=0.1) == "table"  # the knapsack spends cost and BitOPs budgets only
    assert resolved(target_cost=0.1, criterion="random") == "table"  # the random control


@pytest.mark.slow
def test_final_epochs_train_only_the_last_step(trained, tmp_path):
    run_search(_search_cfg(trained, steps=2, finetune_epochs=0, final_epochs=1), tmp_path / "s")
    rows = _frontier(tmp_path / "s")
    assert [r["train_top1"] == "nan" for r in rows] == [True, True, False]  # step 0, step 1, the last step
