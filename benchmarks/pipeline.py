"""Wall time per stage of `proqha pipeline` on its defaults (digits, offline).

    python benchmarks/pipeline.py [extra pipeline options]

Runs the real console command in a temporary folder and stamps each stage marker ([1/4] ... [4/4])
as it appears on stderr.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "proqha", "pipeline", *sys.argv[1:]], cwd=tmp,
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        marks = [("start", t0)]
        for line in proc.stderr:
            if line.startswith("[") and "/4]" in line[:6]:
                marks.append((line.split("]")[1].split()[0], time.perf_counter()))
        code = proc.wait()
        marks.append(("end", time.perf_counter()))
    if code != 0:
        raise SystemExit(f"proqha pipeline exited with {code}")
    total = marks[-1][1] - t0
    print(f"proqha pipeline {' '.join(sys.argv[1:]) or '(defaults)'}: {total:.1f} s in all")
    print(f"  start-up (imports)  {marks[1][1] - t0:6.1f} s")
    for (name, start), (_, end) in zip(marks[1:-1], marks[2:]):
        print(f"  {name:<18}  {end - start:6.1f} s  ({100 * (end - start) / total:4.1f}%)")


if __name__ == "__main__":
    main()
