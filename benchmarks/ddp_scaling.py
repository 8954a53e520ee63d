"""1 vs 2 processes with gloo on this machine: search-step scoring time and training-epoch time, one run.

    python benchmarks/ddp_scaling.py [--candidates 16] [--epochs 3]

Runs the real console command, alone and under torchrun --nproc_per_node=2 (OMP_NUM_THREADS=1 for
both, as torchrun sets it), and reads the times the runs log: epoch time_s from metrics.jsonl, and the
wall time of search steps with no fine-tuning (scoring plus evaluation) from frontier.csv. On a 2-core
CPU the speed-up is bounded by the cores; the point is the scoring split, not speed.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from proqha.files import read_jsonl

ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    launchers = {1: [sys.executable, "-m", "proqha"],
                 2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "proqha"]}
    epoch_s, step_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n, launcher in launchers.items():
            run(launcher + ["train", "--epochs", str(args.epochs), "--batch-size", "128", "--run-dir", f"t{n}"], root)
            epoch_s[n] = statistics.median(r["time_s"] for r in read_jsonl(root / f"t{n}" / "metrics.jsonl"))
            run(launcher + ["search", "--from", "t1", "--steps", str(args.steps), "--candidates", str(args.candidates),
                            "--finetune-epochs", "0", "--batch-size", "128", "--run-dir", f"s{n}"], root)
            with open(root / f"s{n}" / "frontier.csv", newline="") as f:
                step_s[n] = statistics.median(float(r["wall_s"]) for r in csv.DictReader(f) if r["step"] != "0")
    print(f"digits_resnet, gloo on CPU, OMP_NUM_THREADS=1, {args.candidates} candidates per step")
    print(f"training epoch: 1 process {epoch_s[1]:.3f} s, 2 processes {epoch_s[2]:.3f} s "
          f"-> ratio {epoch_s[2] / epoch_s[1]:.2f}")
    print(f"search step (scoring + evaluation): 1 process {step_s[1]:.3f} s, 2 processes {step_s[2]:.3f} s "
          f"-> ratio {step_s[2] / step_s[1]:.2f} (ideal 0.5 for the scoring part)")


if __name__ == "__main__":
    main()
