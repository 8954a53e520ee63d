"""int16 pair sums in onnxruntime's int8 kernels: this CPU's path, a static bound, and an emulation.

On x86 without VNNI (AVX2, AVX-512BW) onnxruntime multiplies uint8 activations by int8 weights with
vpmaddubsw: two neighbouring products are added in int16 and saturate at 32767. With VNNI, AMX or on
ARM64 products are summed in int32. A graph is exact on every CPU when no pair of products can leave
int16 (``pair_sum_bounds``), or when a layer's weights are uint8 (onnxruntime's U8U8 kernels widen both
operands to int16 and sum pairs in int32). The emulation reproduces the saturating kernel in numpy, so
a machine with VNNI can still show what a machine without it computes.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from proqha.export.graph_builder import constant_integers, dequantize_behind
from proqha.quant.grid import INT16_MAX

LAYER_OPS = ("Conv", "Gemm", "MatMul")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInt8Path:
    """How this CPU's int8 conv/gemm kernels add products: ``int32`` (exact for any int8 weights),
    ``int16`` (pairs saturate: exact only within the pair bound), or ``unknown``."""

    sums: str
    description: str


@functools.cache
def _proc_cpuinfo() -> str:
    """This machine's ``/proc/cpuinfo`` (read once; empty where there is none)."""
    path = Path("/proc/cpuinfo")
    return path.read_text(errors="replace") if path.is_file() else ""


def cpu_int8_path(cpuinfo: str | None = None, machine: str | None = None) -> CpuInt8Path:
    """The int8 kernel path onnxruntime takes on this CPU, read from its flags (``/proc/cpuinfo``)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return CpuInt8Path("int32", "ARM64: int8 products summed in int32")
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return CpuInt8Path("unknown", f"{machine}: CPU flags unknown")
    found = [f for f in VNNI_FLAGS if f in flags]
    if found:
        return CpuInt8Path("int32", f"x86 with {found[0].upper()}: int8 products summed in int32")
    kind = "AVX2" if "avx2" in flags else "SSE"
    return CpuInt8Path("int16", f"x86 {kind} without VNNI: uint8 x int8 products added in int16 pairs that "
                                "saturate at 32767 (exact only within the int16 pair bound)")


@dataclass(frozen=True)
class PairSumBound:
    """One conv/linear of a graph: the kernel pairing its operand types select and the largest
    ``|a0*w0 + a1*w1|`` any input on its declared activation range can produce (None: U8U8, no int16)."""

    layer: str
    kernel: str
    act_range: tuple[int, int]
    worst: int | None

    @property
    def fits(self) -> bool:
        return self.worst is None or self.worst <= INT16_MAX


def _activation_range(dq: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                      inits: dict[str, onnx.TensorProto]) -> tuple[int, int]:
    """The stored integer range of a DequantizeLinear's input: its type (from the zero point), narrowed
    by an integer Clip in front of it."""
    zero = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    lo, hi = (-128, 127) if zero is not None and zero.data_type == onnx.TensorProto.INT8 else (0, 255)
    node = producers.get(dq.input[0])
    if node is not None and node.op_type == "Clip":
        bounds = [numpy_helper.to_array(inits[i]).item() if i in inits else None for i in list(node.input[1:3])]
        bounds += [None] * (2 - len(bounds))
        lo = lo if bounds[0] is None else max(lo, int(bounds[0]))
        hi = hi if bounds[1] is None else min(hi, int(bounds[1]))
    return lo, hi


def worst_pair_sum(weights: np.ndarray, act_lo: int, act_hi: int) -> int:
    """The largest ``|a0*w0 + a1*w1|`` over any two weights of one output channel (rows of ``weights``)
    and any activations in ``[act_lo, act_hi]``: the worst an int16 pair adder can be asked to hold."""
    w = weights.reshape(weights.shape[0], -1).astype(np.int64)
    if w.shape[1] < 2:
        w = np.concatenate([w, np.zeros_like(w)], axis=1)
    a = max(abs(act_lo), abs(act_hi))
    if act_lo >= 0:  # non-negative activations: only same-sign weights add up
        pos = -np.sort(-np.clip(w, 0, None), axis=1)[:, :2].sum(1)
        neg = -np.sort(-np.clip(-w, 0, None), axis=1)[:, :2].sum(1)
        return int(a * max(pos.max(), neg.max()))
    return int(a * (-np.sort(-np.abs(w), axis=1)[:, :2].sum(1)).max())


def pair_sum_bounds(proto: onnx.ModelProto) -> list[PairSumBound]:
    """Per quantized conv/linear of a QDQ graph: its int8 kernel pairing and worst-case pair sum."""
    producers = {out: n for n in proto.graph.node for out in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    bounds = []
    for node in proto.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        x_dq, w_dq = (dequantize_behind(name, producers) for name in node.input[:2])
        if x_dq is None or w_dq is None:
            continue
        act = _activation_range(x_dq, producers, inits)
        a_type = "s8" if act[0] < 0 else "u8"
        weights = constant_integers(w_dq.input[0], producers, inits)
        if weights is None:  # a product of two activations (attention): both ranges are all we know
            other = _activation_range(w_dq, producers, inits)
            if other[0] >= 0:
                bounds.append(PairSumBound(node.name, f"{a_type}u8", act, None))
            else:
                worst = 2 * max(abs(v) for v in act) * max(abs(v) for v in other)
                bounds.append(PairSumBound(node.name, f"{a_type}s8", act, worst))
            continue
        if weights.dtype == np.uint8:
            bounds.append(PairSumBound(node.name, f"{a_type}u8", act, None))
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            weights = weights.T
        elif node.op_type == "MatMul":
            weights = weights.reshape(-1, weights.shape[-1]).T
        bounds.append(PairSumBound(node.name, f"{a_type}s8", act, worst_pair_sum(weights, *act)))
    return bounds


def check_pair_sums(proto: onnx.ModelProto) -> list[str]:
    """One failure per conv/linear whose int8 pair sums could saturate on x86 without VNNI."""
    return [f"{b.layer}: int16 pair overflow possible on x86 CPUs without VNNI: worst |a0*w0 + a1*w1| = {b.worst} "
            f"> {INT16_MAX} (activations in [{b.act_range[0]}, {b.act_range[1]}], int8 weights)"
            for b in pair_sum_bounds(proto) if not b.fits]


def emulate_int16_pairs(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``acts @ weights.T`` as a uint8 x int8 kernel without VNNI computes it: products of neighbouring
    K elements added in int16 with saturation (vpmaddubsw), then summed in int32. ``acts`` is (M, K)
    integers, ``weights`` (N, K); K is padded to even with zeros as the kernels pack it."""
    a = acts.astype(np.int64)
    w = weights.astype(np.int64)
    if a.shape[1] % 2:
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    pairs = a[:, None, 0::2] * w[None, :, 0::2] + a[:, None, 1::2] * w[None, :, 1::2]  # (M, N, K/2)
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(-1)


def adversarial_activations(weights: np.ndarray, act_lo: int, act_hi: int) -> np.ndarray:
    """For each output channel, the activations in ``[act_lo, act_hi]`` that push its pair sums hardest
    up and down (rows ``n`` and ``N + n``): the inputs on which saturation shows first."""
    w = weights.reshape(weights.shape[0], -1)
    return np.concatenate([np.where(w > 0, act_hi, act_lo), np.where(w < 0, act_hi, act_lo)], axis=0)
