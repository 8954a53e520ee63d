"""Static TensorRT readiness: does a graph follow the explicit-quantization rules TensorRT's ONNX parser
needs? (INT8 Q/DQ only, zero point 0, positive scales, per-channel weights on axis 0, per-tensor
activations, Clip only on float tensors, Q/DQ on both inputs of every conv/gemm and of residual adds.)
Runs without TensorRT; ``proqha export --format trt`` uses it before building an engine."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _integer_type(node: onnx.NodeProto, zero: onnx.TensorProto | None, inits: dict[str, onnx.TensorProto]
                  ) -> int | None:
    """The integer type of a Q/DQ: its zero point's; without one, a DequantizeLinear's constant input's, or
    uint8 for a QuantizeLinear (the ONNX default); None where it is not known statically."""
    if zero is not None:
        return zero.data_type
    if node.op_type == "QuantizeLinear":
        return TensorProto.UINT8
    return inits[node.input[0]].data_type if node.input[0] in inits else None


def check_trt_graph(proto: onnx.ModelProto) -> list[str]:
    """One message per rule broken, each naming the node."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    problems: list[str] = []
    integer_tensors: set[str] = set()
    for node in proto.graph.node:
        if node.op_type not in QDQ:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        qtype = _integer_type(node, zero, inits)
        if qtype is not None and qtype != TensorProto.INT8:
            problems.append(f"{node.name}: quantized type {TensorProto.DataType.Name(qtype)}; "
                            "TensorRT accepts INT8 Q/DQ only")
        elif zero is not None and np.any(numpy_helper.to_array(zero) != 0):
            problems.append(f"{node.name}: non-zero zero point; TensorRT needs symmetric quantization")
        if scale is None:
            problems.append(f"{node.name}: scale is not a constant initializer")
        elif np.any(scale <= 0):
            problems.append(f"{node.name}: scales must be positive")
        weights = node.op_type == "DequantizeLinear" and node.input[0] in inits
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale is not None and scale.size > 1:
            if not weights:
                problems.append(f"{node.name}: per-channel scales on an activation; TensorRT needs per-tensor")
            elif axis != 0:
                problems.append(f"{node.name}: per-channel weight scales on axis {axis}; TensorRT needs axis 0")
        if node.op_type == "QuantizeLinear":
            integer_tensors.add(node.output[0])
    for node in proto.graph.node:
        if node.op_type == "Clip" and node.input[0] in integer_tensors:
            problems.append(f"{node.name}: Clip on an integer tensor; TensorRT clips float tensors only "
                            "(clamp before QuantizeLinear)")
        if node.op_type in ("Conv", "Gemm"):
            for i in (0, 1):
                src = producer.get(node.input[i])
                if src is None or src.op_type != "DequantizeLinear":
                    problems.append(f"{node.name}: input {i} is not dequantized (Q/DQ must surround {node.op_type})")
        if node.op_type == "Add":
            quantized = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input]
            if any(quantized) and not all(quantized):
                problems.append(f"{node.name}: only one input of the residual add is dequantized")
    return problems
