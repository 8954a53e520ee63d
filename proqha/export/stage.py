"""The export stage, called by the Python API and the ``proqha export`` command alike: a model to a
validated file (``export_model``), and a train run or search step to one (``export_run``).

A graph its profile's rules refuse is not written (``ExportRefused``); a TensorRT engine is built before
anything is written; the file, its ``<stem>.parity.json`` and the engine are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import nn

from proqha.errors import ExportError, OptionError, ProqhaError
from proqha.export import qdq
from proqha.export.config import FORMATS, ExportConfig
from proqha.options import default

if TYPE_CHECKING:
    from proqha.export.export_info import ExportInfo
    from proqha.export.validate import ValidationReport

FORMAT_PROFILES = {"trt": "trt"}  # a format that fixes the profile: a TensorRT engine reads the trt graph only
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class ExportRefused(ExportError):
    """The graph broke its rules (``failures``), so nothing was written to ``path``; ``summary`` says so in
    one line, ``report`` what validation measured (None when TensorRT's graph rules refused it first)."""

    def __init__(self, summary: str, failures: list[str], report: ValidationReport | None, path: Path) -> None:
        super().__init__(f"{summary}: " + "; ".join(failures), report)
        self.summary, self.failures, self.path = summary, failures, path


class OutputExists(OptionError):
    """The output file exists and ``force`` is off."""

    def __init__(self, path: Path) -> None:
        super().__init__("out", f"{path} exists; pass force=True to overwrite")
        self.path = path


class FloatRunError(ProqhaError):
    """A float (32-bit) run asked for as an integer graph: only its ``onnx-fp32`` graph exists."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"{checkpoint} is a float (32-bit) run: export it with fmt='onnx-fp32', or quantize "
                         "it first (search it, or train from it)")
        self.checkpoint = checkpoint


@dataclass
class ExportResult:
    """What an export wrote: the ONNX file, its parity report (None without validation) and TensorRT engine
    (None unless ``fmt="trt"``), with what the writer recorded (``info``) and the file's metadata."""

    path: Path
    info: ExportInfo
    metadata: dict[str, str]
    report: ValidationReport | None = None
    parity_path: Path | None = None
    engine: Path | None = None
    checkpoint: Path | None = None
    step: int | None = None


def parity_path(model_path: Path) -> Path:
    """Where the parity report of an exported file goes: ``<stem>.parity.json`` beside it."""
    return model_path.with_name(model_path.stem + ".parity.json")


def check_export_options(fmt: str, profile: str, int8_kernels: str, weights: str) -> str:
    """Refuse bad options before any work (OptionError), the TensorRT guard included for ``fmt="trt"``;
    returns the profile the export uses (the format's own, else ``profile``)."""
    from proqha.export.onnx_export import check_int8_kernels, check_profile, check_weights

    if fmt not in FORMATS:
        raise OptionError("fmt", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_int8_kernels(int8_kernels)
    check_weights(weights)
    if fmt == "trt":
        from proqha.deploy.runtime import check_engines

        check_engines(["trt"])  # one line naming what is missing
    return check_profile(FORMAT_PROFILES.get(fmt, profile))


def _refuse(failures: list[str], summary: str, report: ValidationReport | None, path: Path) -> None:
    if failures:
        raise ExportRefused(summary.format(n=len(failures), path=path), failures, report, path)


def export_model(model: nn.Module, path: str | Path, input_size: tuple[int, ...], batches: Batches | None = None, *,
                 fmt: str = default(ExportConfig, "fmt"), profile: str = default(ExportConfig, "profile"),
                 int8_kernels: str = default(ExportConfig, "int8_kernels"),
                 weights: str = default(ExportConfig, "weights"), check: bool = default(ExportConfig, "check"),
                 reference: bool = True, metadata: dict[str, str] | None = None,
                 checkpoint: Path | None = None, class_names: Sequence[str] | None = None,
                 dynamic_size: bool = default(ExportConfig, "dynamic_size")) -> ExportResult:
    """Export ``model`` (a quantized twin; for ``fmt="onnx-fp32"`` its float twin is written) to ``path``.

    ``input_size``: (C, H, W). Builds the graph (``export_onnx``) and its metadata (``metadata``: where it
    came from), refuses a graph that breaks TensorRT's rules where its profile has them, validates it with
    ``check`` on ``batches`` (``(x, y)`` pairs; required then), and refuses failures (``ExportRefused``).
    For ``fmt="trt"`` the engine is built next, before anything is written; then the file, its parity
    report (naming ``checkpoint`` as the source) and the engine are written atomically. ``class_names``:
    the names of the outputs, written to the metadata as ``class_names`` (a JSON list), after ``metadata``.
    ``dynamic_size``: height and width dynamic as well (``export_onnx``), parity checked at both sizes.
    """
    from proqha.export import validate
    from proqha.export.file_size import add_metadata, class_names_metadata
    from proqha.export.onnx_export import export_onnx
    from proqha.files import atomic_write_bytes, atomic_write_json

    profile = check_export_options(fmt, profile, int8_kernels, weights)
    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)):
        raise OptionError("class_names", f"must be a list of strings, got {class_names!r}"[:200])
    path = Path(path)
    if path.is_dir():
        raise OptionError("path", f"{path} is a folder")
    if check and batches is None:
        raise OptionError("batches", "are needed to validate the export (or check=False)")
    quantized = fmt != "onnx-fp32"
    if not quantized:
        from proqha.quant import float_twin

        model = float_twin(model)
    proto, info = export_onnx(model, input_size, profile=profile, quantized=quantized, int8_kernels=int8_kernels,
                              weights=weights, dynamic_size=dynamic_size)
    data = add_metadata(proto, model, info, input_size, (metadata or {}) | class_names_metadata(class_names), fmt)
    if info.rules.trt_graph:
        from proqha.deploy.trt_check import check_trt_graph

        _refuse(check_trt_graph(proto), "the graph breaks {n} TensorRT rule(s); nothing written to {path}", None, path)
    report = None
    if check:
        report = validate.validate_export(proto, info, model, batches, reference=reference)
        _refuse(report.failures, "export failed {n} check(s); nothing written to {path}", report, path)
    engine = _build_engine(data, input_size, path) if fmt == "trt" else None
    atomic_write_bytes(path, data)
    result = ExportResult(path, info, validate.file_metadata(proto), report, checkpoint=checkpoint)
    if report is not None:
        result.parity_path = parity_path(path)
        source = {} if checkpoint is None else {"source": str(checkpoint)}
        atomic_write_json(result.parity_path, report.to_dict() | {"model": str(path)} | source)
    if engine is not None:
        result.engine = path.with_suffix(".engine")
        atomic_write_bytes(result.engine, engine[0])
        atomic_write_json(path.with_suffix(".engine.json"), engine[1])
    return result


def _build_engine(data: bytes, input_size: tuple[int, ...], path: Path) -> tuple[bytes, dict]:
    """The TensorRT engine of a trt-profile graph and its settings (with the layers' precisions)."""
    from proqha.deploy.runtime_trt import TrtRuntime, build_engine

    engine, settings = build_engine(data, input_size)
    return engine, settings | {"onnx": str(path), "layers": TrtRuntime(engine).layer_precisions().to_dict()}


def run_output_path(out: Path | None, run_dir: Path, step: int | None, fmt: str, profile: str, force: bool
                    ) -> Path:
    """Where a run's export goes: ``out``, or RUN/export/model[-stepN][-fp32][-trt].onnx (the profile's
    suffix); an existing file only with ``force``, and a path that can be written (checked before any work)."""
    from proqha.files import check_writable
    from proqha.runs import RunDir

    if out is None:
        suffix = (f"-step{step:03d}" if step is not None else "") + ("-fp32" if fmt == "onnx-fp32" else "")
        out = RunDir(run_dir).export / f"model{suffix}{qdq.PROFILES[profile].suffix}.onnx"
    if out.exists() and out.is_dir():
        raise OptionError("out", f"{out} is a folder")
    if out.exists() and not force:
        raise OutputExists(out)
    check_writable(out, "out")
    return out


def export_run(config: ExportConfig) -> ExportResult:
    """Export the model of a run to a validated file, as ``config`` says; what ``proqha export`` does.

    ``config.run``: a search run (its last step, ``step``, or its most accurate step at or below the paper
    cost ``best_under_cost``), a train run (its last checkpoint) or a checkpoint file; default the latest
    search run, else the newest train or quantize run. ``fmt``: ``onnx`` (QDQ, integer), ``onnx-fp32`` (the float graph
    of the same model) or ``trt`` (the trt-profile graph and its TensorRT engine). ``out``: default
    RUN/export/model[-stepN][-fp32][-trt].onnx, an existing file replaced only with ``force``. Validation
    (``check``) measures parity on ``samples`` test images of the run's dataset with the model on
    ``device``. Options are checked and the checkpoint picked before any work; a float run is refused
    (``FloatRunError``) unless ``fmt="onnx-fp32"``; then ``export_model``. The file's metadata says where
    it came from, and names its outputs (``class_names``) when the checkpoint's data has them.
    """
    from proqha.data import checkpoint_test_loader
    from proqha.devices import resolve_device
    from proqha.export.file_size import source_metadata
    from proqha.recipe import ModelRecipe, load_model
    from proqha.runs import pick_checkpoint

    c = config.resolved()
    torch_device = resolve_device(c.device)
    checkpoint, run_dir, step = pick_checkpoint(c.run, c.step, c.best_under_cost)
    out = run_output_path(c.out, run_dir, step, c.fmt, c.profile, c.force)
    model, state = load_model(checkpoint, torch_device)
    if c.fmt != "onnx-fp32" and ModelRecipe.from_dict(state.recipe).float_run:
        raise FloatRunError(checkpoint)
    model.to(torch_device)
    batches = checkpoint_test_loader(state, c.samples) if c.check else None
    result = export_model(model, out, state.input_size, batches, fmt=c.fmt, profile=c.profile,
                          int8_kernels=c.int8_kernels, weights=c.weights, check=c.check,
                          metadata=source_metadata(state, checkpoint, step), checkpoint=checkpoint,
                          dynamic_size=c.dynamic_size)
    result.step = step
    return result
