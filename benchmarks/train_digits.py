"""Wall time and test accuracy of the default `proqha train` (digits_resnet on digits, 8 bit).

    python benchmarks/train_digits.py

Runs the real console command in a temporary folder, then reads its metrics.jsonl. Also trains the
same model in float (--bits 32) in the same run, so the QAT time is shown as a ratio too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], cwd: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "proqha", "train", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    run_dir = sorted((cwd / "runs").iterdir(), key=lambda p: int(p.name.split("-")[1]))[-1]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return wall, rows[-1] | {"train_s": sum(r["time_s"] for r in rows)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        q_wall, q = run([], cwd)
        f_wall, f = run(["--bits", "32"], cwd)
    print(f"proqha train (8 bit):   wall {q_wall:6.1f} s  (epochs {q['epoch']}, training loop {q['train_s']:.1f} s)"
          f"  test top-1 {q['test_top1']:.2f}%  top-5 {q['test_top5']:.2f}%")
    print(f"proqha train --bits 32: wall {f_wall:6.1f} s  (training loop {f['train_s']:.1f} s)"
          f"  test top-1 {f['test_top1']:.2f}%")
    print(f"training-loop time ratio 8 bit / float: {q['train_s'] / f['train_s']:.2f}x")


if __name__ == "__main__":
    main()
