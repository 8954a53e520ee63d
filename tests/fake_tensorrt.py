"""A fake ``tensorrt`` module with the surfaces of TensorRT 10.x and 11.x that proqha uses, for tests on
machines without a GPU. It follows the documented behaviour, not an implementation:

- 11.x has no weak typing: ``BuilderFlag`` lacks ``INT8``/``FP16`` (touching them raises AttributeError,
  as the real module does), and ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` has another value than
  in 10.x (code must use the enum).
- The ONNX parser reports every unsupported node as its own error (``UNSUPPORTED`` op types).
- An execution context accepts input shapes inside its optimization profile only (``set_input_shape``
  returns False otherwise) and resolves the output shape from the input's batch.
- The engine inspector lists layer I/O formats only with an execution context whose input shape is set;
  10.x writes ``"Format/Datatype"`` per tensor and ``"Bindings"``, 11.x splits ``"Format"`` and
  ``"DataType"`` and writes ``"I/O Tensors"``. A conv/gemm runs INT8 when the network is strongly typed
  and its input comes from a DequantizeLinear (10.x weakly typed networks run FP32 here).
"""

from __future__ import annotations

import enum
import json
import types

import onnx

UNSUPPORTED: set[str] = set()  # op types the fake parser refuses (tests set it)


def make(version: str) -> types.ModuleType:
    """A ``tensorrt`` module of major version 10 or 11."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # what the code under test did: ("set_flag", flag), ("create_network", flags), ...

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1} if major == 10 else {"STRONGLY_TYPED": 0})
    flags = {"DEBUG": 0, "GPU_FALLBACK": 1, "REFIT": 2}
    if major == 10:
        flags |= {"FP16": 3, "INT8": 4, "BF16": 5}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2})

    class Network:
        def __init__(self, flags: int) -> None:
            self.strongly_typed = major == 11 or bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.graph: onnx.GraphProto | None = None

    class ParserError:
        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return self.text

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse(self, data: bytes) -> bool:
            try:
                model = onnx.load_from_string(data)
            except Exception as exc:  # noqa: BLE001 - protobuf's own errors
                self.errors = [ParserError(f"ModelImporter: cannot read the model: {exc}")]
                return False
            self.errors = [ParserError(f"In node {i} with name: {n.name} and operator: {n.op_type}: "
                                       "No importer registered for op")
                           for i, n in enumerate(model.graph.node) if n.op_type in UNSUPPORTED]
            self.network.graph = model.graph
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo, opt, hi) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Config:
        def __init__(self) -> None:
            self.flags: list = []
            self.profiles: list[Profile] = []
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

        def set_flag(self, flag) -> None:
            trt.calls.append(("set_flag", flag.name))
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.workspace = size

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            if network.graph is None or not config.profiles:
                return None
            layers = []
            producers = {o: n for n in network.graph.node for o in n.output}
            for n in network.graph.node:
                if n.op_type in ("Conv", "Gemm", "MatMul"):
                    src = producers.get(n.input[0])
                    layers.append({"name": n.name, "kind": {"Conv": "CaskConvolution"}.get(n.op_type, "CaskGemm"),
                                   "int8": network.strongly_typed and src is not None
                                   and src.op_type == "DequantizeLinear"})
            layers.append({"name": "output reformat", "kind": "Reformat", "int8": False})
            classes = network.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
            plan = {"version": trt.__version__, "profile": config.profiles[0].shapes, "layers": layers,
                    "classes": classes, "verbosity": int(config.profiling_verbosity)}
            return json.dumps(plan).encode()

    class Context:
        def __init__(self, engine: "Engine") -> None:
            self.engine, self.shape = engine, None

        def set_input_shape(self, name: str, shape) -> bool:
            lo, _, hi = self.engine.plan["profile"][name]
            shape = list(shape)
            if len(shape) != len(lo) or shape[1:] != lo[1:] or not lo[0] <= shape[0] <= hi[0]:
                return False
            self.shape = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            batch = self.shape[0] if self.shape else -1
            return (batch, self.engine.plan["classes"]) if name == "logits" else tuple([batch] + (self.shape or [])[1:])

    class Inspector:
        def __init__(self, engine: "Engine") -> None:
            self.engine = engine
            self.execution_context: Context | None = None

        def get_engine_information(self, fmt) -> str:
            plan = self.engine.plan
            if plan["verbosity"] != int(trt.ProfilingVerbosity.DETAILED):
                return json.dumps({"Layers": [layer["name"] for layer in plan["layers"]]})
            known = self.execution_context is not None and self.execution_context.shape is not None
            out = []
            for layer in plan["layers"]:
                tensor = {"Name": f"{layer['name']}.in", "Location": "Device"}
                if known:
                    kind = "Int8" if layer["int8"] else "Float"
                    if major == 10:
                        tensor["Format/Datatype"] = ("Channel major INT8 format where channel % 32 == 0"
                                                     if layer["int8"] else "Row major linear FP32")
                    else:
                        tensor |= {"Format": "Channel major (kCHW32)" if layer["int8"] else "Row major linear (kLINEAR)",
                                   "DataType": kind}
                out.append({"Name": layer["name"], "LayerType": layer["kind"], "Inputs": [tensor], "Outputs": []})
            io = ({"Bindings": ["input", "logits"]} if major == 10 else
                  {"I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"},
                                   {"Name": "logits", "IOMode": "Output", "DataType": "Float"}]})
            return json.dumps({"Layers": out} | io)

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.plan = plan

        def get_tensor_profile_shape(self, name: str, index: int) -> list:
            return [tuple(s) for s in self.plan["profile"][name]]

        def get_tensor_shape(self, name: str) -> tuple:
            lo = self.plan["profile"]["input"][0]
            return (-1, self.plan["classes"]) if name == "logits" else tuple([-1] + lo[1:])

        def get_tensor_dtype(self, name: str):
            return trt.DataType.FLOAT

        def create_execution_context(self) -> Context:
            return Context(self)

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            plan = json.loads(bytes(data))
            return Engine(plan) if plan["version"].split(".")[0] == str(major) else None

    for cls in (Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt
