"""The export as the command line shows it: kernel counts, the int16 bound, parity tables, each refusal as an
error line (exit 1), what was written. ``proqha export``, ``proqha parity`` and the pipeline print through it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from proqha.cli.common import console, err_console, fail
from proqha.errors import ProqhaError

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    from proqha.export.config import ExportConfig
    from proqha.export.stage import ExportResult
    from proqha.export.validate import ValidationReport


def cpu_line() -> str:
    """Which int8 kernel path onnxruntime takes on this CPU, for printing next to parity and latency."""
    from proqha.export.pair_sums import cpu_int8_path

    return f"onnxruntime int8 kernels on this CPU: {cpu_int8_path().description}"


def print_report(report: ValidationReport, title: str) -> None:
    """Kernel counts, the int16 pair-sum bound, the CPU's int8 path and parity."""
    from proqha.export.qdq import EXACT_ON

    if report.kernels is not None:
        k = report.kernels
        table = Table(title=f"{title}: what onnxruntime runs")
        for col in ("int8 conv/linear", "float conv/linear", "int8 adds", "float adds"):
            table.add_column(col, justify="right")
        table.add_row(str(k.integer_layers), str(k.float_layers), str(k.integer_adds), str(k.float_adds))
        console.print(table)
    if report.pair_sums:
        wide = sum(1 for b in report.pair_sums if b.worst is None)
        worst = max((b.worst for b in report.pair_sums if b.worst is not None), default=0)
        over = sum(1 for b in report.pair_sums if not b.fits)
        console.print(f"int8 graph ({report.int8_kernels}, exact on {EXACT_ON[report.int8_kernels]}): "
                      f"{len(report.pair_sums) - wide} layers uint8 x int8 with worst pair sum {worst} "
                      f"({over} over 32767), {wide} layers uint8 x uint8", markup=False)
        if wide:
            console.print(f"note: {wide} layers store uint8 weights (onnxruntime's U8U8 kernels, measured 1.4-2.4x "
                          "slower than U8S8): LSQ layers trained on the full 8-bit grid (--int8-kernels vnni, or "
                          "a run from before the portable default) run U8S8 once retrained with the default; "
                          "DoReFa grids above 6 bit always need them", markup=False)
    if report.openvino_layers is not None:
        console.print(f"OpenVINO runs {report.openvino_layers[0]} conv/linear layers in int8 and "
                      f"{report.openvino_layers[1]} in float (parity reported, not enforced: its kernels are not "
                      "onnxruntime's integer arithmetic)", markup=False)
    console.print(cpu_line(), markup=False)
    table = Table(title=f"{title}: parity with PyTorch")
    for col in ("runtime", "images", "top-1 agreement (ties)", "PyTorch top-1", "runtime top-1",
                "max |diff| (steps)", "mean (steps)", "within 2 steps"):
        table.add_column(col, justify="right")

    def steps(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for p in report.parity:
        table.add_row(p.runtime, str(p.samples), f"{p.agreement:.2f}% ({p.agreement_ties:.2f}%)", f"{p.torch_top1:.2f}%",
                      f"{p.runtime_top1:.2f}%",
                      f"{p.max_abs_diff:.4g} ({steps(p.max_steps, '.2f')})", f"{steps(p.mean_steps, '.4f')}",
                      "-" if p.within_2_steps is None else f"{p.within_2_steps:.2f}%")
    console.print(table)


def refuse(failures: list[str], summary: str) -> None:
    """Print each failure as an error line and exit 1 with ``summary``, if any."""
    for failure in failures:
        err_console.print(f"error: {failure}", markup=False)
    if failures:
        raise fail(summary, 1)


def wrote_line(result: ExportResult) -> str:
    """What was written: the file, its size and ratio to the fp32 graph, weights, opset, layers, paper cost."""
    from proqha.cost import format_ratio
    from proqha.export.file_size import FILE_BYTES, RATIO

    meta, info = result.metadata, result.info
    return (f"wrote {result.path} (file {int(meta[FILE_BYTES]) / 1e3:.1f} KB: {int(meta[FILE_BYTES]):,} bytes, "
            f"{format_ratio(float(meta[RATIO]))} of the fp32 "
            f"graph; weights {meta['proqha.weights']}, opset {info.opset}; {len(info.layers)} layers; "
            f"paper cost {format_ratio(float(meta['proqha.paper_cost']))})")


def export_and_report(cfg: ExportConfig) -> None:
    """Export as ``cfg`` says (``proqha.export.stage.export_run``) and print the report; a refusal is one error
    line per failure and exit 1, bad input one line and exit 2."""
    from proqha.export.stage import ExportRefused, FloatRunError, OutputExists, export_run

    try:
        result = export_run(cfg)
    except OutputExists as exc:
        raise ProqhaError(f"--out {exc.path} exists; pass --force to overwrite") from None
    except FloatRunError as exc:
        raise ProqhaError(f"{exc.checkpoint} is a float (32-bit) run: export it with --format onnx-fp32, or quantize "
                          f"it first (proqha search --from {cfg.run}, or proqha train --init {exc.checkpoint})") from None
    except ExportRefused as exc:
        if exc.report is not None:
            print_report(exc.report, exc.path.name)
        refuse(exc.failures, exc.summary)
        raise
    if result.report is not None:
        print_report(result.report, result.path.name)
    if result.engine is not None:
        err_console.print(f"wrote {result.engine}")
    err_console.print(wrote_line(result))
