"""`proqha export`: a QDQ ONNX graph (or its float twin, or a TensorRT engine) of a train run or a search
step, validated: parses ``ExportConfig``'s options and hands them to ``cli.export_report.export_and_report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from proqha.cli.common import declared_option, handle_errors
from proqha.cli.export_report import export_and_report
from proqha.export.config import ExportConfig
from proqha.options import declared, default


def _option(name: str, *flags: str) -> Any:
    """The Typer option of ExportConfig field ``name``, its help as declared there."""
    return declared_option(ExportConfig, name, *flags)


@handle_errors(flags={"fmt": "--format"})
def export(
    run: Annotated[Optional[Path], typer.Argument(help=declared(ExportConfig, "run").help)] = None,
    step: Annotated[Optional[int], _option("step")] = default(ExportConfig, "step"),
    best_under_cost: Annotated[Optional[float], _option("best_under_cost")] = default(ExportConfig, "best_under_cost"),
    fmt: Annotated[str, _option("fmt", "--format")] = default(ExportConfig, "fmt"),
    profile: Annotated[str, _option("profile")] = default(ExportConfig, "profile"),
    out: Annotated[Optional[Path], _option("out")] = default(ExportConfig, "out"),
    check: Annotated[bool, _option("check")] = default(ExportConfig, "check"),
    samples: Annotated[int, _option("samples")] = default(ExportConfig, "samples"),
    force: Annotated[bool, _option("force")] = default(ExportConfig, "force"),
    device: Annotated[str, _option("device")] = default(ExportConfig, "device"),
    int8_kernels: Annotated[str, _option("int8_kernels")] = default(ExportConfig, "int8_kernels"),
    weights: Annotated[str, _option("weights")] = default(ExportConfig, "weights"),
) -> None:
    """Export a quantized model as a QDQ ONNX graph that computes what was trained, and prove it."""
    export_and_report(ExportConfig(run=run, step=step, best_under_cost=best_under_cost, fmt=fmt, profile=profile,
                                   out=out, check=check, samples=samples, force=force, device=device,
                                   int8_kernels=int8_kernels, weights=weights))
