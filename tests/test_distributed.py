"""torchrun with 2 CPU processes (gloo): DDP training, candidate-parallel search, rank 0 writes, failures end
the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from proqha.files import read_jsonl

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess, pytest.mark.slow]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "proqha"]
SINGLE = [sys.executable, "-m", "proqha"]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def _run(cmd, cwd, env=ENV, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _run_beside(single: list[str], ddp: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """The single-process and the torchrun command, run at the same time (one thread per process), their
    output in files (a full pipe would stop one while the other is waited for)."""
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        files = [(Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err") for i in range(2)]
        procs = []
        for cmd, (out, err) in zip((single, ddp), files):
            with open(out, "w") as o, open(err, "w") as e:
                procs.append(subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=o, stderr=e))
        for proc, (out, err) in zip(procs, files):
            proc.wait(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text()))
    return tuple(done)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    args = ["train", "--epochs", "3", "--batch-size", "128"]
    single, ddp = _run_beside(SINGLE + args + ["--run-dir", "single"], TORCHRUN + args + ["--run-dir", "ddp"], root)
    assert single.returncode == 0, single.stderr
    assert ddp.returncode == 0, ddp.stderr
    return root, ddp


@pytest.mark.slow
def test_ddp_training_follows_the_single_process_loss_curve(trained):
    root, _ = trained
    a, b = read_jsonl(root / "single" / "metrics.jsonl"), read_jsonl(root / "ddp" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == [1, 2, 3]  # one line per epoch: rank 1 wrote none
    for x, y in zip(a, b):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=0.15)
        # one epoch in, per-rank BatchNorm statistics over half batches still move top-1 by several points
        # (89.1% vs 83.8% seen on an AVX2 machine); the curves meet by the last epoch
        assert abs(y["test_top1"] - x["test_top1"]) < 8.0
    assert abs(b[-1]["test_top1"] - a[-1]["test_top1"]) < 4.0


@pytest.mark.slow
def test_only_rank_0_writes(trained):
    root, ddp = trained
    single = sorted(p.relative_to(root / "single").as_posix() for p in (root / "single").rglob("*"))
    dist = sorted(p.relative_to(root / "ddp").as_posix() for p in (root / "ddp").rglob("*"))
    assert single == dist
    assert sorted(p.name for p in root.iterdir()) == ["ddp", "single"]  # no second run folder from rank 1
    assert ddp.stdout.count("proqha train") == 1  # one summary table


@pytest.mark.slow
def test_candidate_parallel_search_chooses_the_single_process_bits(trained):
    root, _ = trained
    args = ["search", "--from", "single", "--steps", "1", "--candidates", "6", "--finetune-epochs", "1", "--final-epochs", "0",
            "--batch-size", "128"]
    single, ddp = _run_beside(SINGLE + args + ["--run-dir", "s1"], TORCHRUN + args + ["--run-dir", "s2"], root)
    assert single.returncode == 0 and ddp.returncode == 0, ddp.stderr
    assert json.loads((root / "s1" / "bits-step001.json").read_text()) == \
        json.loads((root / "s2" / "bits-step001.json").read_text())
    assert len((root / "s2" / "frontier.csv").read_text().splitlines()) == 3  # header, steps 0 and 1


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_a_clear_message(tmp_path):
    entry = str(Path(__file__).with_name("fault_entry.py"))  # rank 1 fails right after joining
    result = _run(TORCHRUN[:-2] + [entry, "train", "--epochs", "2", "--run-dir", "r"], tmp_path,
                  env=ENV | {"PROQHA_TEST_FAULT_RANK": "1", "PROQHA_DIST_TIMEOUT_S": "60"}, timeout=180)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert not (tmp_path / "r").exists()
