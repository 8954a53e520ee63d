"""TensorRT: build an engine from a QDQ ONNX graph, load it, run and time it with CUDA events, and report
which conv/gemm layers run INT8 tactics (engine inspector).

One code path for TensorRT 10.x and 11.x: the network is strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and no precision flag is set. Types come from the
graph: the Q/DQ of a trt-profile graph decide where INT8 runs (explicit quantization), and a float graph
builds an FP32 engine. TensorRT 11 removed the weak-typing flags (``BuilderFlag.INT8``/``FP16``), so
nothing here touches them. TensorRT and an NVIDIA GPU are optional: every entry point checks them first
and fails with one line naming what is missing (``pip install -e '.[trt]'``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch

from proqha.errors import ProqhaError

INPUT, OUTPUT = "input", "logits"
SUPPORTED_MAJORS = (10, 11)
CONV_GEMM = ("conv", "gemm", "matrixmultiply", "fullyconnected")  # inspector layer/parameter types, lower case


def require_tensorrt() -> Any:
    """The tensorrt module, or a ProqhaError naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ProqhaError("TensorRT is not installed: pip install -e '.[trt]' (it needs an NVIDIA GPU and CUDA)") from None
    major = str(getattr(trt, "__version__", "0")).split(".")[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        raise ProqhaError(f"TensorRT {getattr(trt, '__version__', '?')} is not supported: proqha builds with "
                          f"TensorRT {' or '.join(f'{m}.x' for m in SUPPORTED_MAJORS)} (pip install -e '.[trt]')")
    if not torch.cuda.is_available():
        raise ProqhaError("TensorRT needs an NVIDIA GPU, and CUDA is not available on this machine")
    return trt


def parse_onnx(trt: Any, onnx_bytes: bytes) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network, parser) holding the parsed graph (the network refers to the
    parser's weights: keep the parser alive while building); every parser error in one line."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)).strip().replace("\n", " ") for i in range(parser.num_errors)]
        raise ProqhaError(f"TensorRT's ONNX parser refused the graph ({len(errors)} error(s)): "
                          + " | ".join(errors or ["no error reported"]))
    return builder, network, parser


def build_engine(onnx_bytes: bytes, input_shape: tuple[int, ...], max_batch: int = 32, workspace_mb: int = 2048
                 ) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine for batches 1..``max_batch`` and the build settings (for the JSON sidecar)."""
    trt = require_tensorrt()
    if max_batch < 1:
        raise ProqhaError(f"the engine's max batch must be >= 1, got {max_batch}")
    builder, network, _parser = parse_onnx(trt, onnx_bytes)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector's per-layer formats
    profile = builder.create_optimization_profile()
    opt = min(8, max_batch)
    profile.set_shape(INPUT, (1, *input_shape), (opt, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ProqhaError("TensorRT could not build an engine from the graph (see its log above)")
    settings = {"tensorrt": trt.__version__, "strongly_typed": True, "quantized": b"QuantizeLinear" in onnx_bytes,
                "workspace_mb": workspace_mb, "batch": {"min": 1, "opt": opt, "max": max_batch},
                "input_shape": list(input_shape), "device": torch.cuda.get_device_name(0)}
    return bytes(serialized), settings


@dataclass(frozen=True)
class LayerPrecisions:
    """What the engine inspector reports: conv/gemm layers (those running INT8 tactics among them) and all
    layers (those taking INT8 inputs among them)."""

    int8_conv_gemm: int
    conv_gemm: int
    int8_layers: int
    layers: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _tensor_is_int8(tensor: dict[str, Any]) -> bool:
    """An inspector I/O entry's type: ``DataType`` (11.x) or the type inside ``Format/Datatype`` (10.x)."""
    text = tensor.get("DataType") or tensor.get("Format/Datatype") or ""
    return "int8" in str(text).lower()


def count_precisions(info: dict[str, Any]) -> LayerPrecisions:
    """Read ``get_engine_information(JSON)`` of TensorRT 10.x or 11.x: a layer runs INT8 when its first input
    is INT8; it is a conv/gemm when its ``LayerType`` or ``ParameterType`` names one."""
    int8_cg = cg = int8 = total = 0
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):  # without DETAILED verbosity layers are bare names
            continue
        total += 1
        inputs = [t for t in layer.get("Inputs", []) if isinstance(t, dict)]
        is_int8 = bool(inputs) and _tensor_is_int8(inputs[0])
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()
        is_cg = any(k in kind for k in CONV_GEMM)
        int8 += is_int8
        cg += is_cg
        int8_cg += is_int8 and is_cg
    return LayerPrecisions(int8_cg, cg, int8, total)


class TrtRuntime:
    """A deserialized engine with one execution context on the current CUDA device and its own stream."""

    name = "trt"

    def __init__(self, engine_bytes: bytes) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ProqhaError("TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        _, _, top = self.engine.get_tensor_profile_shape(INPUT, 0)
        self.max_batch = int(top[0])
        self._stream: torch.cuda.Stream | None = None

    @property
    def stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def set_batch(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Set the input shape on the context; returns the output shape. One line when the engine's
        profile does not take it."""
        if not self.context.set_input_shape(INPUT, tuple(shape)):
            raise ProqhaError(f"TensorRT refused input shape {tuple(shape)}: the engine takes batches 1..{self.max_batch} "
                              "of its build shape")
        out = tuple(self.context.get_tensor_shape(OUTPUT))
        if any(d < 0 for d in out):
            raise ProqhaError(f"TensorRT left the output shape unresolved ({out}) for input {tuple(shape)}")
        return out

    def chunks(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """``x`` in slices the profile takes (a batch above the engine's max runs in parts)."""
        for i in range(0, len(x), self.max_batch):
            yield x[i: i + self.max_batch]

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.timed_run(part)[0] for part in self.chunks(x)])

    def timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Output and the GPU time of one execution (one batch the profile takes), measured with CUDA events
        on the engine's stream; the input copy and the output read are ordered on that stream too."""
        out_shape = self.set_batch(x.shape)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to("cuda", non_blocking=False)
            out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(INPUT, xt.data_ptr())
            self.context.set_tensor_address(OUTPUT, out.data_ptr())
            start.record(self.stream)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ProqhaError("TensorRT execution failed")
            end.record(self.stream)
            result = out.cpu()  # on the engine's stream, after the execution
        end.synchronize()
        return result.numpy(), start.elapsed_time(end) / 1e3

    def layer_precisions(self, batch: int = 1) -> LayerPrecisions:
        """Conv/gemm layers running INT8, from the engine inspector with this context attached at ``batch``
        (without a context with input shapes the inspector leaves the formats out)."""
        shape = (batch, *tuple(self.engine.get_tensor_shape(INPUT))[1:])
        self.set_batch(shape)
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        return count_precisions(json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)))

    def io_dtypes(self) -> dict[str, str]:
        """The engine's input and output tensor types."""
        return {name: str(self.engine.get_tensor_dtype(name)) for name in (INPUT, OUTPUT)}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "tensorrt": self.trt.__version__, "device": torch.cuda.get_device_name(0),
                "max_batch": self.max_batch, "layers": self.layer_precisions().to_dict()}
