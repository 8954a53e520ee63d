"""A small ONNX graph builder: unique names, initializers, nodes (deterministic in its inputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Collects nodes and initializers; names derive from the callers' base names only."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d scalars
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def multi(self, op: str, inputs: list[str], base: str, outputs: int, **attrs: Any) -> list[str]:
        """A node with several outputs, named ``base.0``, ``base.1``, ..."""
        names = [self.name(f"{base}.{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(base), **attrs))
        return names

    def model(self, input_name: str, input_shape: list[Any], output_name: str, output_shape: list[Any],
              opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "proqha",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)],
            self.initializers)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="proqha")
        model.ir_version = helper.find_min_ir_version_for(opsets)  # 9 for opset 19: loads in older runtimes
        return model


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Add ``metadata`` to a model's metadata_props."""
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


WIDENING_OPS = ("Cast", "Mul", "Add")  # what stands between a packed weight initializer and its DequantizeLinear


def constant_integers(name: str, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto]
                      ) -> np.ndarray | None:
    """The integers a tensor holds when it is an initializer or computed from initializers by the Cast,
    Mul and Add nodes that widen packed weights (what onnxruntime folds at load), else None."""
    if name in inits:
        value = numpy_helper.to_array(inits[name])
        return value if str(value.dtype).startswith(("int", "uint")) else None  # numpy's and ml_dtypes' int4/int2
    node = producers.get(name)
    if node is None or node.op_type not in WIDENING_OPS:
        return None
    args = [constant_integers(i, producers, inits) for i in node.input]
    if any(a is None for a in args):
        return None
    if node.op_type == "Cast":
        to = next(a.i for a in node.attribute if a.name == "to")
        return args[0].astype(np.int64).astype(helper.tensor_dtype_to_np_dtype(to))
    a, b = args[0].astype(np.int64), args[1].astype(np.int64)
    return (a * b if node.op_type == "Mul" else a + b).astype(args[0].dtype)


def dequantize_behind(name: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The DequantizeLinear a tensor comes from, through Reshape/Transpose (which onnxruntime moves Q/DQ
    across), or None; ``producers`` maps tensor names to the nodes that write them."""
    return dequantize_path(name, producers)[0]


def dequantize_path(name: str, producers: dict[str, onnx.NodeProto]
                    ) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """``dequantize_behind`` and the Reshape/Transpose nodes between it and the tensor, nearest first."""
    moves, node = [], producers.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        moves.append(node)
        node = producers.get(node.input[0])
    return (node, moves) if node is not None and node.op_type == "DequantizeLinear" else (None, [])
