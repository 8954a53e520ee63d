"""`proqha parity MODEL.onnx`: re-run the parity check of an exported model on the full test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from proqha.cli.common import err_console, fail, handle_errors
from proqha.cli.export import parity_path, print_report
from proqha.deploy.runtime import ONNX_ENGINES, check_engines
from proqha.errors import ProqhaError
from proqha.runs import pick_checkpoint

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    import onnx
    import torch

MAX_BYTES = 2 * 1024**3


def read_onnx(path: Path) -> tuple[onnx.ModelProto, bytes]:
    """Load an ONNX file a user hands us, refusing anything that is not a valid model (ProqhaError)."""
    import onnx

    from proqha.export.validate import check_graph

    if not path.is_file():
        raise ProqhaError(f"ONNX model not found: {path}")
    size = path.stat().st_size
    if size == 0 or size > MAX_BYTES:
        raise ProqhaError(f"{path} is {size} bytes: not a usable ONNX model")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for corrupt bytes
        raise ProqhaError(f"{path} is not a valid ONNX file ({type(exc).__name__})") from None
    problems = check_graph(proto) if proto.graph.node else ["the graph is empty"]
    if problems:
        raise ProqhaError(f"{path} is not a valid ONNX model: {problems[0]}")
    return proto, data


def check_same_bits(meta: dict[str, str], model: torch.nn.Module, model_path: Path, checkpoint: Path) -> None:
    """Refuse (ProqhaError) a checkpoint whose layer bits differ from those the quantized file records:
    the comparison would measure two different models."""
    from proqha.quant import BitConfig
    from proqha.quant.bitconfig import KNOBS

    if not meta.get("proqha.bits"):
        return
    recorded = {name: {k: knobs[k] for k in KNOBS} for name, knobs in json.loads(meta["proqha.bits"]).items()}
    ours = BitConfig.from_model(model).to_dict()
    if recorded != ours:
        differing = sorted(n for n in recorded.keys() | ours.keys() if recorded.get(n) != ours.get(n))
        raise ProqhaError(f"{checkpoint} is not the model {model_path} was exported from: bits differ at "
                          f"{', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}; pass the --run it came from")


@handle_errors
def parity_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="An ONNX file written by proqha export.")],
    run: Annotated[Optional[Path], typer.Option(help="Run or checkpoint of the PyTorch model (default: the one the file names).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Test images (default: the full test split).")] = None,
    reference: Annotated[bool, typer.Option(help="Also run the ONNX reference evaluator (slow on large models).")] = True,
    engine: Annotated[Optional[list[str]], typer.Option(help="Runtimes: ort (always; its rules are enforced) and openvino (measured and reported); repeatable.")] = None,
) -> None:
    """Compare an exported model with its PyTorch model on the test split (onnxruntime and reference; OpenVINO
    with --engine openvino)."""
    from proqha.builder import load_model
    from proqha.data import checkpoint_test_loader
    from proqha.export.pair_sums import check_pair_sums, pair_sum_bounds
    from proqha.export.validate import ValidationReport, check_parity, ort_kernels, parity
    from proqha.files import atomic_write_json
    from proqha.quant import float_twin

    if samples is not None and samples < 1:
        raise ProqhaError(f"--samples must be >= 1, got {samples}")
    engines = engine or ["ort"]
    for e in engines:
        if e not in ONNX_ENGINES:
            raise ProqhaError(f"--engine must be one of {', '.join(ONNX_ENGINES)}, got {e!r}")
    check_engines(engines)
    proto, data = read_onnx(model_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    if run is None:
        source = meta.get("proqha.source")
        if not source:
            raise ProqhaError(f"{model_path} names no source checkpoint; pass --run")
        checkpoint = Path(source)
    else:
        checkpoint = pick_checkpoint(run, None, None)[0]
    model, state = load_model(checkpoint)
    if meta.get("proqha.format") == "onnx-fp32":
        model = float_twin(model)  # what that export compared with
    else:
        check_same_bits(meta, model, model_path, checkpoint)
    step = float(meta["proqha.output_scale"]) if meta.get("proqha.output_scale") else None
    others, openvino_layers = {}, None
    if "openvino" in engines:
        from proqha.deploy.runtime_openvino import OpenVinoRuntime

        runtime = OpenVinoRuntime(data)
        others["openvino"] = runtime.run
        openvino_layers = tuple(vars(runtime.layers()).values())
    results = parity(model, data, checkpoint_test_loader(state, samples), step, reference, others)
    exact = meta.get("proqha.format") == "onnx" and meta.get("proqha.profile") == "ort"
    int8_kernels = meta.get("proqha.int8_kernels", "portable")  # files before the option claimed every CPU
    failures = []
    if exact and int8_kernels == "portable":
        failures += check_pair_sums(proto)  # a bound on the file's integers: the same verdict on every CPU
    if exact:
        failures += check_parity(results, step is not None)
    report = ValidationReport(failures, ort_kernels(data), results, 0, pair_sum_bounds(proto), int8_kernels=int8_kernels,
                              openvino_layers=openvino_layers)
    print_report(report, model_path.name)
    report_path = parity_path(model_path)
    atomic_write_json(report_path, report.to_dict() | {"model": str(model_path), "source": str(checkpoint)})
    err_console.print(f"wrote {report_path} ({results[0].samples} images; replaces any earlier report)")
    for failure in failures:
        err_console.print(f"error: {failure}", markup=False)
    if failures:
        raise fail(f"parity failed {len(failures)} check(s)", 1)
