"""benchmarks/gpu_check.py on a machine without a GPU: every check skipped with its reason, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.subprocess]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script runs its real checks (minutes)")
def test_gpu_check_reports_every_check_skipped_without_cuda(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == ["cuda_qat_epoch", "qat_overhead_cuda", "search_step_cuda", "bench_torch_cuda", "tensorrt",
                     "nccl_two_process"]
    assert all(c["status"] == "skipped" and "no CUDA device" in c["reason"] for c in report["checks"])
    assert report["seconds"] < 30
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert text.startswith("proqha gpu_check: no CUDA device") and text.count("skipped") == 6
