"""Re-checking a written file (what ``proqha parity`` does): its parity with the PyTorch model it came from
on the test split, by the rules its metadata says it was written under (``validate.validate_file``), the
report written beside it (``recheck_file``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from proqha.errors import OptionError, ProqhaError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import torch

    from proqha.export.validate import ValidationReport

MAX_BYTES = 2 * 1024**3


@dataclass
class FileCheck:
    """A re-checked file: the checkpoint it was compared with, what was measured, and where it was written."""

    path: Path
    checkpoint: Path
    report: ValidationReport
    report_path: Path


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
                          f"{', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}; pass the run it came from")


def source_model(meta: dict[str, str], model_path: Path, run: Path | None) -> tuple[torch.nn.Module, Any, Path]:
    """The PyTorch model a file is compared with: from ``run`` (a run or checkpoint), else the checkpoint the
    file names; its float twin for an ``onnx-fp32`` file, else the same bits as the file. Returns (model,
    checkpoint state, checkpoint path)."""
    from proqha.quant import float_twin
    from proqha.recipe import load_model
    from proqha.runs import pick_checkpoint

    if run is None:
        source = meta.get("proqha.source")
        if not source:
            raise OptionError("run", f"is needed: {model_path} names no source checkpoint")
        checkpoint = Path(source)
    else:
        checkpoint = pick_checkpoint(run, None, None)[0]
    model, state = load_model(checkpoint)
    if meta.get("proqha.format") == "onnx-fp32":
        model = float_twin(model)  # what that export compared with
    else:
        check_same_bits(meta, model, model_path, checkpoint)
    return model, state, checkpoint


def _other_runtimes(data: bytes, engines: Sequence[str]
                    ) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], tuple[int, int] | None]:
    """The runtimes measured besides onnxruntime (OpenVINO), and OpenVINO's (int8, float) layer counts."""
    if "openvino" not in engines:
        return {}, None
    from proqha.deploy.runtime_openvino import OpenVinoRuntime

    runtime = OpenVinoRuntime(data)
    return {"openvino": runtime.run}, tuple(vars(runtime.layers()).values())


def recheck_file(model_path: Path, run: Path | None = None, samples: int | None = None, reference: bool = True,
                 engines: Sequence[str] = ("ort",)) -> FileCheck:
    """Compare an exported file with its PyTorch model on ``samples`` test images (default: the whole test
    split) in onnxruntime, the ONNX reference evaluator (``reference``) and OpenVINO (in ``engines``), by
    the rules the file was written under; the report replaces ``<stem>.parity.json`` beside the file. Its
    ``failures`` are the rules broken."""
    from proqha.data import checkpoint_test_loader
    from proqha.deploy.runtime import ONNX_ENGINES, check_engines
    from proqha.export.stage import parity_path
    from proqha.export.validate import file_metadata, validate_file
    from proqha.files import atomic_write_json

    if samples is not None and samples < 1:
        raise OptionError("samples", f"must be >= 1, got {samples}")
    for e in engines:
        if e not in ONNX_ENGINES:
            raise OptionError("engines", f"must be one of {', '.join(ONNX_ENGINES)}, got {e!r}")
    check_engines(list(engines))  # the optional runtimes import, before any work
    proto, data = read_onnx(model_path)
    meta = file_metadata(proto)
    model, state, checkpoint = source_model(meta, model_path, run)
    others, openvino_layers = _other_runtimes(data, engines)
    report = validate_file(data, model, checkpoint_test_loader(state, samples), reference, others, openvino_layers)
    report_path = parity_path(model_path)
    atomic_write_json(report_path, report.to_dict() | {"model": str(model_path), "source": str(checkpoint)})
    return FileCheck(model_path, checkpoint, report, report_path)
