"""Every check this project needs a GPU for, in one run: results as OUT/gpu_check.json and OUT/gpu_check.txt.

    python benchmarks/gpu_check.py OUT [--budget-s 420]

Checks, each ok / fail / skipped (with the reason), in this order:
  cuda_qat_epoch     `proqha train --device cuda --epochs 2` on digits: epoch time, test top-1
  qat_overhead_cuda  ResNet-20 batch 128: 8-bit QAT step / float step on CUDA (benchmarks/qat_overhead.py):
                     fp32 eager and compiled, and bf16 autocast eager
  search_step_cuda   `proqha search --steps 1 --device cuda` from that run: step time
  bench_torch_cuda   `proqha bench --engine torch --device cuda` of the search: latency rows
  tensorrt           (when `import tensorrt` works) the trt-profile graph of the search step: static
                     checker, parser, engine built, I/O dtypes, input shapes batch 1 / opt / max taken and
                     max + 1 refused, agreement with onnxruntime on the same graph over the digits test
                     split (top-1, max output steps), INT8 conv/gemm layers of all conv/gemm, and engine
                     latency against the FP32 engine of the float graph (batch 1 and 32, CUDA events)
  nccl_two_process   (with two GPUs) `torchrun --nproc_per_node=2 proqha train --device cuda`, 1 epoch
On a machine without CUDA every check is reported as skipped, in seconds. A check that would start after
``--budget-s`` is skipped too, so the script ends inside the device time it is given.
Exit status: 1 if any check failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from proqha.files import read_jsonl

PROQHA = [sys.executable, "-m", "proqha"]


class Skip(Exception):
    """A check that cannot run here; its message is the reason."""


def sh(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run a command; its stdout, or an exception with the end of its stderr."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return done.stdout


def need_cuda() -> None:
    if not torch.cuda.is_available():
        raise Skip("no CUDA device (torch.cuda.is_available() is False)")


def cuda_qat_epoch(out: Path) -> dict[str, Any]:
    need_cuda()
    sh(PROQHA + ["train", "--device", "cuda", "--epochs", "2", "--run-dir", "runs/train-1"], out)
    rows = read_jsonl(out / "runs" / "train-1" / "metrics.jsonl")
    return {"epoch_s": [round(r["time_s"], 3) for r in rows], "test_top1": rows[-1]["test_top1"]}


def qat_overhead_cuda(out: Path) -> dict[str, Any]:
    need_cuda()
    from qat_overhead import measure, summarize

    result = {}
    for label, amp, compile in (("fp32", False, True), ("amp_bf16", True, False)):
        med, ratio = summarize(measure("resnet20", 128, 20, 5, "lsq", compile, device="cuda", amp=amp))
        result[label] = {k: round(v * 1e3, 3) for k, v in med.items()} | {
            f"{k}_over_float": round(ratio[k], 3) for k in med if k != "float"}
    return result


def search_step_cuda(out: Path) -> dict[str, Any]:
    need_cuda()
    if not (out / "runs" / "train-1" / "checkpoints" / "last.pt").is_file():
        raise Skip("no train run (cuda_qat_epoch did not finish)")
    sh(PROQHA + ["search", "--from", "runs/train-1", "--steps", "1", "--final-epochs", "0", "--device", "cuda",
                 "--run-dir", "runs/search-1"], out)
    rows = (out / "runs" / "search-1" / "frontier.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    row = dict(zip(header, last))
    return {"step_s": float(row["wall_s"]), "cost": float(row["cost"]), "test_top1": float(row["test_top1"])}


def bench_torch_cuda(out: Path) -> dict[str, Any]:
    need_cuda()
    if not (out / "runs" / "search-1" / "frontier.csv").is_file():
        raise Skip("no search run (search_step_cuda did not finish)")
    sh(PROQHA + ["bench", "runs/search-1", "--engine", "torch", "--device", "cuda", "--batch", "1,32", "--iters",
                 "20", "--out-dir", "bench-torch"], out)
    rows = json.loads((out / "bench-torch" / "bench.json").read_text())["rows"]
    return {"rows": [{k: r[k] for k in ("model", "batch", "median_ms", "speedup_vs_fp32", "engine_top1")} for r in rows]}


def tensorrt(out: Path) -> dict[str, Any]:
    need_cuda()
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise Skip(f"tensorrt is not importable ({exc}); pip install -e '.[trt]'") from None
    from proqha.data import checkpoint_test_loader
    from proqha.deploy.runtime_trt import TrtRuntime, build_engine
    from proqha.deploy.trt_check import check_trt_graph
    from proqha.errors import ProqhaError
    from proqha.export.onnx_export import export_onnx
    from proqha.export.ort_session import ort_session
    from proqha.quant import float_twin
    from proqha.recipe import load_model
    from proqha.search.frontier import step_checkpoints

    steps = step_checkpoints(out / "runs" / "search-1")
    source = steps[-1][1] if steps else out / "runs" / "train-1" / "checkpoints" / "last.pt"
    if not source.is_file():
        raise Skip("no checkpoint to export (the training check did not finish)")
    model, state = load_model(source)
    size = state.input_size
    proto, info = export_onnx(model, size, profile="trt")
    result: dict[str, Any] = {"tensorrt": trt.__version__, "checker": check_trt_graph(proto)}
    data = proto.SerializeToString()
    try:
        engine, settings = build_engine(data, size, max_batch=64)
    except ProqhaError as exc:
        return result | {"engine_built": False, "error": str(exc)}
    runtime = TrtRuntime(engine)
    result |= {"engine_built": True, "settings": settings, "io_dtypes": runtime.io_dtypes()}
    shapes = {}
    for label, batch in (("1", 1), ("opt", settings["batch"]["opt"]), ("max", 64), ("max+1", 65)):
        try:
            runtime.set_batch((batch, *size))
            shapes[label] = "taken"
        except ProqhaError:
            shapes[label] = "refused"
    result["input_shapes"] = shapes
    session = ort_session(data)
    agree = seen = 0
    max_steps = 0.0
    for x, _ in checkpoint_test_loader(state, None, 32):
        xs = x.numpy().astype(np.float32)
        a, b = runtime.run(xs), session.run(None, {"input": xs})[0]
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        seen += len(xs)
        if info.output_scale:
            max_steps = max(max_steps, float(np.abs(a - b).max() / info.output_scale))
    result["vs_onnxruntime"] = {"images": seen, "top1_agreement": round(100 * agree / seen, 2),
                                "max_output_steps": round(max_steps, 2)}
    result["layers"] = runtime.layer_precisions().to_dict()
    fp32_proto, _ = export_onnx(float_twin(model), size, quantized=False)
    fp32 = TrtRuntime(build_engine(fp32_proto.SerializeToString(), size, max_batch=64)[0])
    latency = {}
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
        ms = {}
        for name, rt in (("int8", runtime), ("fp32", fp32)):
            for _ in range(10):
                rt.timed_run(x)
            ms[name] = 1e3 * statistics.median(rt.timed_run(x)[1] for _ in range(50))
        latency[str(batch)] = {"int8_ms": round(ms["int8"], 4), "fp32_ms": round(ms["fp32"], 4),
                               "int8_over_fp32": round(ms["int8"] / ms["fp32"], 3)}
    result["latency"] = latency
    return result


def nccl_two_process(out: Path) -> dict[str, Any]:
    need_cuda()
    if torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU(s); NCCL needs two")
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "proqha", "train",
        "--device", "cuda", "--epochs", "1", "--run-dir", "runs/train-nccl"], out)
    rows = read_jsonl(out / "runs" / "train-nccl" / "metrics.jsonl")
    return {"wall_s": round(time.perf_counter() - t0, 1), "test_top1": rows[-1]["test_top1"]}


CHECKS: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
    ("cuda_qat_epoch", cuda_qat_epoch), ("qat_overhead_cuda", qat_overhead_cuda), ("search_step_cuda", search_step_cuda),
    ("bench_torch_cuda", bench_torch_cuda), ("tensorrt", tensorrt), ("nccl_two_process", nccl_two_process)]


def summary(result: dict[str, Any]) -> str:
    """One short line of a check's figures for the text table."""
    figures = {k: v for k, v in result.items() if k not in ("name", "status", "reason", "seconds")}
    text = json.dumps(figures, separators=(",", ":"))
    return text if len(text) <= 160 else text[:157] + "..."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.txt and the runs")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip checks that would start after this")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    results = []
    for name, check in CHECKS:
        t0 = time.perf_counter()
        try:
            if t0 - start > args.budget_s:
                raise Skip(f"past the time budget ({args.budget_s:.0f} s)")
            result = {"name": name, "status": "ok"} | check(out)
        except Skip as skip:
            result = {"name": name, "status": "skipped", "reason": str(skip)}
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, the others still run
            result = {"name": name, "status": "fail", "reason": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-1500:]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(result)
        print(f"{name:<18} {result['status']:<8} {result['seconds']:6.1f} s", flush=True)
    report = {"environment": env, "checks": results, "seconds": round(time.perf_counter() - start, 1)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"proqha gpu_check: {env['device'] or 'no CUDA device'} (torch {env['torch']}, CUDA {env['cuda']}, "
             f"{env['gpus']} GPU(s)), {report['seconds']} s"]
    for r in results:
        detail = r.get("reason") if r["status"] != "ok" else summary(r)
        lines.append(f"{r['name']:<18} {r['status']:<8} {r['seconds']:6.1f} s  {detail}")
    (out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(r["status"] == "fail" for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
