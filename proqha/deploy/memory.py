"""onnxruntime's own memory for a session: the peak resident set size of a child process while it creates
the session, less its resident set just before (Python, numpy and onnxruntime already loaded)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys
import numpy, onnxruntime as ort

def status(key):  # Linux: VmRSS (now) and VmHWM (peak) in KiB
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

try:  # Linux: reset the peak to the current size, so the peak below is the session's alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status("VmRSS"), lambda: status("VmHWM")
except OSError:  # elsewhere: the process's peak so far (ru_maxrss: bytes on macOS, KiB on Linux)
    scale = 1 if sys.platform == "darwin" else 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    before = peak()
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if int(sys.argv[2]):
    so.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
print(json.dumps({"before": before, "after": peak()}))
"""


def ort_session_memory(model_bytes: bytes, threads: int | None = None, timeout: float = 600) -> int | None:
    """Bytes of resident memory onnxruntime's CPU session over ``model_bytes`` adds at its peak during
    creation (graph optimization included), measured in a fresh child process; None where the
    platform has no ``resource`` module (Windows) or the child fails."""
    if importlib.util.find_spec("resource") is None:  # POSIX only
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model_bytes)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(threads or 0)], capture_output=True,
                              text=True, timeout=timeout)
    if done.returncode != 0:
        return None
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, peak["after"] - peak["before"])
