"""Parity layer by layer: every quantized tensor of an exported graph as onnxruntime computes it, against what
PyTorch computes for it from onnxruntime's own values of the tensors before it (``per_layer_steps``). On a
random deep network, end-to-end parity measures how far one-step ties cascade (chaos), not the exporter; this
bounds each layer's arithmetic."""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import helper, numpy_helper

from proqha.export.ort_session import ort_session
from proqha.quant import QuantAdd, Quantizer, QuantLayer


def per_layer_steps(model: torch.nn.Module, proto, x: torch.Tensor) -> dict[str, float]:
    """Parity where it means something on any network: every quantized tensor of ``proto``'s graph as
    onnxruntime computes it, against what PyTorch computes for the same tensor from onnxruntime's own
    values of the tensors before it (each layer fed the runtime's input). Returns the largest difference
    per quantizer, in its output steps: a bound on one layer's arithmetic, with no cascade of ties
    through a deep (random) net. The integer tensors are read as extra graph outputs, which keeps
    onnxruntime's integer kernels (their uint8 outputs are the tensors themselves)."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    grids = {}  # quantizer base name (#k: its module's k+1-th call) -> (integer tensor, scale, zero point)
    for n in proto.graph.node:
        src = producers.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        named = re.fullmatch(r"(.*)\.dq(?:_(\d+))?", n.name)  # GraphBuilder names a module's later calls .dq_1, ...
        if src is not None and src.op_type in ("QuantizeLinear", "Clip") and n.input[1] in inits and named:
            base = named.group(1) + (f"#{named.group(2)}" if named.group(2) else "")
            zp = inits[n.input[2]].astype(np.int64) if len(n.input) > 2 else 0
            grids[base] = (n.input[0], float(inits[n.input[1]]), zp)
    extended = onnx.ModelProto()
    extended.CopyFrom(proto)
    for tensor, _, _ in grids.values():
        extended.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.UINT8, None))
    names = [o.name for o in extended.graph.output]
    outs = dict(zip(names, ort_session(extended.SerializeToString()).run(None, {"input": x.numpy()})))
    runtime = {base: torch.from_numpy((outs[t].astype(np.int64) - zp) * np.float32(s)).float()
               for base, (t, s, zp) in grids.items()}
    steps: dict[str, float] = {}
    calls: dict[str, int] = {}

    def take(base: str, ours: torch.Tensor) -> torch.Tensor:
        k = calls[base] = calls.get(base, -1) + 1  # a module shared across inputs (a detector's head): per call
        key = base if k == 0 else f"{base}#{k}"
        if key not in runtime or runtime[key].shape != ours.shape:
            return ours
        steps[key] = float((ours - runtime[key]).abs().max()) / grids[key][1]
        return runtime[key]

    class FedByRuntime(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            mod = self.fetch_attr(target)
            if isinstance(mod, QuantLayer):
                return mod(take(f"{target}.input", mod.input_quantizer(args[0])))
            if isinstance(mod, QuantAdd):  # both inputs on the runtime's grids, so that only the add is judged
                a = take(f"{target}.input_a", mod.input_quantizer_a(args[0]))
                b = take(f"{target}.input_b", mod.input_quantizer_b(args[1]))
                return take(f"{target}.output", mod(a, b))
            result = super().call_module(target, args, kwargs)
            return take(target, result) if isinstance(mod, Quantizer) else result

    model.eval()
    with torch.no_grad():
        FedByRuntime(model).run(x)
    return steps
