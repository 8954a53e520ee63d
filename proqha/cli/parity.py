"""`proqha parity MODEL.onnx`: re-check an exported model against its PyTorch model on the full test split,
by the rules it was written under (``proqha.export.recheck.recheck_file``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import err_console, handle_errors
from proqha.cli.export_report import print_report, refuse


@handle_errors(flags={"engines": "--engine"})
def parity_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="An ONNX file written by proqha export.")],
    run: Annotated[Optional[Path], typer.Option(help="Run or checkpoint of the PyTorch model (default: the one the file names).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Test images (default: the full test split).")] = None,
    reference: Annotated[bool, typer.Option(help="Also run the ONNX reference evaluator (slow on large models).")] = True,
    engine: Annotated[Optional[list[str]], typer.Option(help="Runtimes: ort (always; its rules are enforced) and openvino (measured and reported); repeatable.")] = None,
) -> None:
    """Compare an exported model with its PyTorch model on the test split (onnxruntime and reference; OpenVINO
    with --engine openvino)."""
    from proqha.export.recheck import recheck_file

    checked = recheck_file(model_path, run, samples, reference, engine or ["ort"])
    report = checked.report
    print_report(report, model_path.name)
    err_console.print(f"wrote {checked.report_path} ({report.parity[0].samples} images; replaces any earlier report)")
    refuse(report.failures, f"parity failed {len(report.failures)} check(s)")
