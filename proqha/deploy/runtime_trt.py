"""TensorRT: build an engine from a trt-profile QDQ ONNX (explicit quantization), save, load, and time it
with CUDA events; report which layers run in INT8 (engine inspector).

Written against the TensorRT 10 Python API. TensorRT and an NVIDIA GPU are optional: every entry point
checks them first and fails with one line naming what is missing (``pip install 'proqha[trt]'``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from proqha.errors import ProqhaError

INPUT, OUTPUT = "input", "logits"


def require_tensorrt() -> Any:
    """The tensorrt module, or a ProqhaError naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ProqhaError("TensorRT is not installed: pip install 'proqha[trt]' (it needs an NVIDIA GPU and CUDA)") from None
    if not torch.cuda.is_available():
        raise ProqhaError("TensorRT needs an NVIDIA GPU, and CUDA is not available on this machine")
    return trt


def build_engine(onnx_bytes: bytes, input_shape: tuple[int, ...], max_batch: int = 32, fp16: bool = True,
                 workspace_mb: int = 2048) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine and the builder settings used (for the JSON sidecar)."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise ProqhaError(f"TensorRT's ONNX parser refused the graph: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers decide where INT8 runs (explicit quantization)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # for the layers the graph leaves unquantized
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    opt = min(8, max_batch)
    profile.set_shape(INPUT, (1, *input_shape), (opt, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ProqhaError("TensorRT could not build an engine from the graph (see its log above)")
    settings = {"tensorrt": trt.__version__, "int8": True, "fp16": fp16, "workspace_mb": workspace_mb,
                "batch": {"min": 1, "opt": opt, "max": max_batch}, "input_shape": list(input_shape),
                "device": torch.cuda.get_device_name(0)}
    return bytes(serialized), settings


class TrtRuntime:
    """A deserialized engine with one execution context on the current CUDA device."""

    name = "trt"

    def __init__(self, engine_bytes: bytes) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ProqhaError("TensorRT could not load the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _bind(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(INPUT, tuple(xt.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT, xt.data_ptr())
        self.context.set_tensor_address(OUTPUT, out.data_ptr())
        return xt, out

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.timed_run(x)[0]

    def timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Output and the GPU time of one execution, measured with CUDA events on the engine's stream."""
        _, out = self._bind(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ProqhaError("TensorRT execution failed")
        end.record(self.stream)
        end.synchronize()
        return out.cpu().numpy(), start.elapsed_time(end) / 1e3

    def layer_precisions(self) -> dict[str, int]:
        """How many engine layers take INT8 inputs, and how many do not (engine inspector, JSON)."""
        inspector = self.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))
        counts = {"int8": 0, "other": 0}
        for layer in info.get("Layers", []):
            if not isinstance(layer, dict):
                continue
            formats = " ".join(str(i.get("Format/Datatype", "")) for i in layer.get("Inputs", []))
            counts["int8" if "Int8" in formats else "other"] += 1
        return counts

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "tensorrt": self.trt.__version__, "device": torch.cuda.get_device_name(0),
                "layers": self.layer_precisions()}
