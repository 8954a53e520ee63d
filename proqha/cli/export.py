"""`proqha export`: a QDQ ONNX graph (or its float twin, or a TensorRT engine) of a train run or a search
step, validated: parses ``ExportConfig``'s options and hands them to ``cli.export_report.export_and_report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import declared_option, handle_errors
from proqha.cli.export_report import export_and_report
from proqha.export.config import ExportConfig
from proqha.options import declared, default


@handle_errors(flags={"fmt": "--format"})
def export(
    run: Annotated[Optional[Path], typer.Argument(help=declared(ExportConfig, "run").help)] = None,
    step: Annotated[Optional[int], declared_option(ExportConfig, "step")] = default(ExportConfig, "step"),
    best_under_cost: Annotated[Optional[float], declared_option(ExportConfig, "best_under_cost")] = default(ExportConfig, "best_under_cost"),
    fmt: Annotated[str, declared_option(ExportConfig, "fmt", "--format")] = default(ExportConfig, "fmt"),
    profile: Annotated[str, declared_option(ExportConfig, "profile")] = default(ExportConfig, "profile"),
    out: Annotated[Optional[Path], declared_option(ExportConfig, "out")] = default(ExportConfig, "out"),
    check: Annotated[bool, declared_option(ExportConfig, "check")] = default(ExportConfig, "check"),
    samples: Annotated[int, declared_option(ExportConfig, "samples")] = default(ExportConfig, "samples"),
    force: Annotated[bool, declared_option(ExportConfig, "force")] = default(ExportConfig, "force"),
    device: Annotated[str, declared_option(ExportConfig, "device")] = default(ExportConfig, "device"),
    int8_kernels: Annotated[str, declared_option(ExportConfig, "int8_kernels")] = default(ExportConfig, "int8_kernels"),
    weights: Annotated[str, declared_option(ExportConfig, "weights")] = default(ExportConfig, "weights"),
    dynamic_size: Annotated[bool, declared_option(ExportConfig, "dynamic_size")] = default(ExportConfig, "dynamic_size"),
) -> None:
    """Export a quantized model as a QDQ ONNX graph that computes what was trained, and prove it."""
    export_and_report(ExportConfig(run=run, step=step, best_under_cost=best_under_cost, fmt=fmt, profile=profile,
                                   out=out, check=check, samples=samples, force=force, device=device,
                                   int8_kernels=int8_kernels, weights=weights, dynamic_size=dynamic_size))
