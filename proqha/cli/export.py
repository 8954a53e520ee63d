"""`proqha export`: a QDQ ONNX graph (or its float twin) of a train run or a search step, validated."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from proqha.cli.common import check_writable, console, err_console, fail, handle_errors
from proqha.errors import ProqhaError
from proqha.runs import pick_checkpoint

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    from proqha.export.validate import ValidationReport

FORMATS = ("onnx", "onnx-fp32", "trt")


def cpu_line() -> str:
    """Which int8 kernel path onnxruntime takes on this CPU, for printing next to parity and latency."""
    from proqha.export.pair_sums import cpu_int8_path

    return f"onnxruntime int8 kernels on this CPU: {cpu_int8_path().description}"


def print_report(report: ValidationReport, title: str) -> None:
    """Kernel counts, the int16 pair-sum bound, the CPU's int8 path and parity."""
    from proqha.export.onnx_export import EXACT_ON

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


def parity_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".parity.json")


def output_path(out: Path | None, run_dir: Path, step: int | None, fmt: str, profile: str, force: bool) -> Path:
    """Where the export goes: ``--out``, or RUN/export/model[-stepN][-fp32][-trt].onnx; an existing file only
    with ``--force``."""
    if out is None:
        suffix = (f"-step{step:03d}" if step is not None else "") + ("-fp32" if fmt == "onnx-fp32" else "") + \
                 ("-trt" if profile == "trt" else "")
        out = run_dir / "export" / f"model{suffix}.onnx"
    if out.exists() and out.is_dir():
        raise ProqhaError(f"--out {out} is a folder")
    if out.exists() and not force:
        raise ProqhaError(f"--out {out} exists; pass --force to overwrite")
    check_writable(out, "--out")
    return out


def refuse(failures: list[str], summary: str) -> None:
    """Print each failure as an error line and exit 1 with ``summary`` (``{n}``: their count), if any."""
    for failure in failures:
        err_console.print(f"error: {failure}", markup=False)
    if failures:
        raise fail(summary.format(n=len(failures)), 1)


@handle_errors
def export(
    run: Annotated[Optional[Path], typer.Argument(help="Search run, train run or checkpoint (default: the latest search, else train, run).")] = None,
    step: Annotated[Optional[int], typer.Option(help="Search step to export (default: the last).")] = None,
    best_under_cost: Annotated[Optional[float], typer.Option(help="Export the most accurate step at or below this paper cost.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx (QDQ, integer), onnx-fp32 (the float graph of the same model), or trt (a TensorRT engine, beside its trt-profile ONNX).")] = "onnx",
    profile: Annotated[str, typer.Option(help="ort (onnxruntime, exact) or trt (TensorRT's int8-only rules).")] = "ort",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default RUN/export/model[-stepN][-profile].onnx).")] = None,
    check: Annotated[bool, typer.Option(help="Validate (checker, weight ranges, int8 kernels, parity) before writing.")] = True,
    samples: Annotated[int, typer.Option(help="Test images for the parity check.")] = 256,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    device: Annotated[str, typer.Option(help="Device of the PyTorch model during export and parity: auto, cpu, cuda, cuda:N.")] = "cpu",
    int8_kernels: Annotated[str, typer.Option(help="portable: exact on every CPU (a model trained portable, the default, runs int8 weights everywhere; a full-grid layer gets uint8 weights, slower U8U8 kernels); vnni: int8 weights everywhere, exact only on CPUs with VNNI/AMX or ARM64 for a full-grid model.")] = "portable",
    weights: Annotated[str, typer.Option(help="packed: 2-bit weights as INT2, 3/4-bit as INT4 (opset 21/25, widened at load into the same int8 kernels); int8: int8 everywhere (opset 19, for runtimes that cannot read packed types). The trt profile stores int8.")] = "packed",
) -> None:
    """Export a quantized model as a QDQ ONNX graph that computes what was trained, and prove it."""
    from proqha.builder import ModelRecipe, load_model
    from proqha.cost import format_ratio
    from proqha.data import checkpoint_test_loader
    from proqha.deploy.trt_check import check_trt_graph
    from proqha.export.file_size import FILE_BYTES, RATIO, add_metadata, source_metadata
    from proqha.export.onnx_export import check_int8_kernels, check_weights, export_onnx
    from proqha.export.validate import validate_export
    from proqha.files import atomic_write_bytes, atomic_write_json
    from proqha.quant import float_twin
    from proqha.train import resolve_device

    if fmt not in FORMATS:
        raise ProqhaError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if samples < 1:
        raise ProqhaError(f"--samples must be >= 1, got {samples}")
    check_int8_kernels(int8_kernels)
    check_weights(weights)
    if fmt == "trt":
        from proqha.deploy.runtime_trt import require_tensorrt

        require_tensorrt()  # before any work: one line naming what is missing
        profile = "trt"
    torch_device = resolve_device(device)
    checkpoint, run_dir, step = pick_checkpoint(run, step, best_under_cost)
    out = output_path(out, run_dir, step, fmt, profile, force)
    model, state = load_model(checkpoint, torch_device)
    if fmt != "onnx-fp32" and ModelRecipe.from_dict(state.recipe).float_run:
        raise ProqhaError(f"{checkpoint} is a float (32-bit) run: export it with --format onnx-fp32, or "
                          f"quantize it first (proqha search --from {run}, or proqha train --init {checkpoint})")
    model.to(torch_device)
    if fmt == "onnx-fp32":
        model = float_twin(model)
    input_size = state.input_size
    proto, info = export_onnx(model, input_size, profile=profile, quantized=fmt != "onnx-fp32",
                              int8_kernels=int8_kernels, weights=weights)
    data = add_metadata(proto, model, info, input_size, source_metadata(state, checkpoint, step), fmt)
    meta = {p.key: p.value for p in proto.metadata_props}
    if profile == "trt":
        refuse(check_trt_graph(proto), f"the graph breaks {{n}} TensorRT rule(s); nothing written to {out}")
    if check:
        report = validate_export(proto, info, model, checkpoint_test_loader(state, samples))
        print_report(report, out.name)
        refuse(report.failures, f"export failed {{n}} check(s); nothing written to {out}")
    engine = None
    if fmt == "trt":  # built before anything is written: a refused graph leaves no files behind
        from proqha.deploy.runtime_trt import TrtRuntime, build_engine

        engine, settings = build_engine(data, input_size)
        settings |= {"onnx": str(out), "layers": TrtRuntime(engine).layer_precisions().to_dict()}
    atomic_write_bytes(out, data)
    if check:
        atomic_write_json(parity_path(out), report.to_dict() | {"model": str(out), "source": str(checkpoint)})
    if engine is not None:
        atomic_write_bytes(out.with_suffix(".engine"), engine)
        atomic_write_json(out.with_suffix(".engine.json"), settings)
        err_console.print(f"wrote {out.with_suffix('.engine')}")
    err_console.print(f"wrote {out} (file {int(meta[FILE_BYTES]) / 1e3:.1f} KB: {int(meta[FILE_BYTES]):,} bytes, "
                      f"{format_ratio(float(meta[RATIO]))} of the fp32 "
                      f"graph; weights {meta['proqha.weights']}, opset {info.opset}; {len(info.layers)} layers; "
                      f"paper cost {format_ratio(float(meta['proqha.paper_cost']))})")
