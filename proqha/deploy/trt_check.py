"""Static TensorRT readiness: does a graph follow the explicit-quantization rules TensorRT's ONNX parser
needs? (INT8 Q/DQ only, zero point 0, positive scales, per-channel weights on axis 0, per-tensor
activations, Clip only on float tensors, Q/DQ on both inputs of every conv/gemm and on both inputs of a
residual add, or on its identity input only when the other comes straight from a conv, as NVIDIA
recommends; a QuantizeLinear's zero point given, as INT8; a DequantizeLinear's input INT8; scale and
zero-point lengths that match the weight's axis.)
Runs without TensorRT; the trt profile's rules (``qdq.Rules.trt_graph``): the export stage checks them before
writing or building an engine, and ``validate_file`` when it re-checks a file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """The ONNX element type of every tensor that is known without inference: initializers, QuantizeLinear
    outputs (their zero point's type; uint8 without one, as ONNX defines) and Cast outputs."""
    types = {t.name: t.data_type for t in proto.graph.initializer}
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            types[node.output[0]] = zero.data_type if zero is not None else TensorProto.UINT8
        elif node.op_type == "Cast":
            types[node.output[0]] = next(a.i for a in node.attribute if a.name == "to")
    return types


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t)


def _qdq_problems(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], types: dict[str, int]) -> list[str]:
    """The rules one QuantizeLinear/DequantizeLinear breaks: types, zero points, scales and their lengths."""
    problems = []
    scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
    zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "QuantizeLinear" and zero is None:
        problems.append(f"{node.name}: QuantizeLinear without a zero point outputs UINT8 in ONNX, while TensorRT "
                        "quantizes to INT8: give it an INT8 zero point")
    elif zero is not None and zero.data_type != TensorProto.INT8:
        problems.append(f"{node.name}: quantized type {_type_name(zero.data_type)}; TensorRT accepts INT8 Q/DQ only")
    elif zero is not None and np.any(numpy_helper.to_array(zero) != 0):
        problems.append(f"{node.name}: non-zero zero point; TensorRT needs symmetric quantization")
    if node.op_type == "DequantizeLinear" and node.input[0] in types:
        given = types[node.input[0]]
        if given != (zero.data_type if zero is not None else TensorProto.INT8) or given != TensorProto.INT8:
            problems.append(f"{node.name}: DequantizeLinear input of type {_type_name(given)}; TensorRT needs INT8 "
                            "(matching the zero point)")
    if scale is None:
        return problems + [f"{node.name}: scale is not a constant initializer"]
    if np.any(scale <= 0):
        problems.append(f"{node.name}: scales must be positive")
    if zero is not None and tuple(zero.dims) != scale.shape:
        problems.append(f"{node.name}: zero point shape {tuple(zero.dims)} differs from the scale's {scale.shape}")
    if scale.size > 1:
        if not (node.op_type == "DequantizeLinear" and node.input[0] in inits):
            return problems + [f"{node.name}: per-channel scales on an activation; TensorRT needs per-tensor"]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if axis != 0:
            problems.append(f"{node.name}: per-channel weight scales on axis {axis}; TensorRT needs axis 0")
        dims = list(inits[node.input[0]].dims)
        if scale.ndim != 1 or not -len(dims) <= axis < len(dims) or scale.size != dims[axis]:
            problems.append(f"{node.name}: {scale.size} scales for a weight of shape {tuple(dims)} on axis "
                            f"{axis}; TensorRT needs one per channel of that axis")
    return problems


def _structure_problems(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto], integer_tensors: set[str]
                        ) -> list[str]:
    """The rules a Clip, conv/gemm or residual add breaks in where its Q/DQ sit."""
    if node.op_type == "Clip" and node.input[0] in integer_tensors:
        return [f"{node.name}: Clip on an integer tensor; TensorRT clips float tensors only (clamp before "
                "QuantizeLinear)"]
    if node.op_type in ("Conv", "Gemm"):
        return [f"{node.name}: input {i} is not dequantized (Q/DQ must surround {node.op_type})" for i in (0, 1)
                if producer.get(node.input[i]) is None or producer[node.input[i]].op_type != "DequantizeLinear"]
    if node.op_type == "Add":
        sources = [producer.get(i) for i in node.input]
        quantized = [src is not None and src.op_type == "DequantizeLinear" for src in sources]
        # NVIDIA's residual pattern: Q/DQ on the identity input only, the other straight from a conv, which
        # TensorRT fuses the add into
        fusible = all(q or (src is not None and src.op_type == "Conv") for q, src in zip(quantized, sources))
        if any(quantized) and not all(quantized) and not fusible:
            return [f"{node.name}: one input of the residual add is dequantized and the other does not come from "
                    "a conv (TensorRT fuses an add into the conv before it only)"]
    return []


def check_trt_graph(proto: onnx.ModelProto) -> list[str]:
    """One message per rule broken, each naming the node."""
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    types = _tensor_types(proto)
    problems: list[str] = []
    for node in proto.graph.node:
        if node.op_type in QDQ:
            problems += _qdq_problems(node, inits, types)
    integer_tensors = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    for node in proto.graph.node:
        problems += _structure_problems(node, producer, integer_tensors)
    return problems
