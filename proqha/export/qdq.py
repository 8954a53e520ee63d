"""The deployment profiles (``PROFILES``): one class per target that owns its rules: how each quantizer
grid is written as Q/DQ nodes, its weight storage, its metadata and file suffix, and which checks its
graphs must pass (``Rules``), so that neither the writer nor validation branches on the profile.

``ort`` (onnxruntime, x86): activations as uint8 with zero point 0 (unsigned grids) or 128 (signed
    grids, the same symmetric levels shifted); grids narrower than the type are clamped on the integer
    tensor (QuantizeLinear -> Clip -> DequantizeLinear), which keeps QLinearConv/QLinearAdd fusion.
``trt`` (TensorRT explicit quantization): int8 only, zero point 0; every grid is clamped in float
    before QuantizeLinear (TensorRT fuses that Clip into the int8 kernel). Unsigned 8-bit grids
    (0..255) do not fit int8: they become 0..127 over the same range (step ``alpha/127``), which
    rounds twice as coarsely; the parity report measures that effect.
Weights are int8 per output channel (axis 0), zero point 0, in both profiles; for ``ort`` a layer whose
uint8 x int8 pair sums could pass int16 (``proqha.quant.grid.pair_sum_fits_int16``: 8-bit weights on
8-bit or signed activations) stores them as uint8 with zero point 128 instead, which onnxruntime runs
with its U8U8 kernels (int16 operands, int32 pair sums: exact on every CPU). With ``weights="packed"``
(``ort`` only) a 2-bit grid is stored as INT2 and a 3- or 4-bit grid as INT4 (a DoReFa grid's odd
integers q as (q - 1) / 2, one type smaller), widened by Cast(INT8) and integer Mul/Add nodes that
onnxruntime folds into an int8 initializer at session creation: the kernels and outputs are those of the
int8 storage, the file is 2-4x smaller (``weight``). TensorRT reads INT4 weights only for weight-only
quantization (its docs: "Weight-only quantization is supported for INT4"), not into int8 convs, so the
``trt`` profile stores int8. Biases are int32 with
scale ``input scale * weight scale`` for ``ort``, and the same values as float for ``trt`` (its Q/DQ
types are INT8/FP8/INT4 only; it quantizes biases itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from proqha.export.graph_builder import GraphBuilder
from proqha.quant.grid import UINT8_SIGNED_OFFSET, Grid, pair_sum_fits_int16
from proqha.quant.storage import PACKED_BITS, storage_range

WIDE_WEIGHT_ZERO_POINT = 128  # uint8 weights: the symmetric levels shifted into 1..255
WEIGHT_STORAGES = ("packed", "int8")
BASE_OPSET = 19  # per-axis Q/DQ, integer Clip, and the ONNX reference evaluator's Q/DQ
EXACT_ON = {"portable": "every CPU (x86 with or without VNNI, ARM64)",
            "vnni": "CPUs whose int8 kernels sum in int32: x86 with AVX512-VNNI, AVX-VNNI or AMX; ARM64"}


@dataclass(frozen=True)
class PackedType:
    """A standard ONNX integer type narrower than int8 (its numpy type, from ml_dtypes, sets the ONNX type of
    the initializer), its range, and the opset whose Cast first reads it."""

    name: str
    numpy_type: type
    lo: int
    hi: int
    opset: int


PACKED_NUMPY = {2: (ml_dtypes.int2, 25), 4: (ml_dtypes.int4, 21)}  # numpy type, first opset (ONNX 1.20, 1.16)
PACKED_TYPES = tuple(PackedType(f"int{w}", PACKED_NUMPY[w][0], *storage_range(w), PACKED_NUMPY[w][1])
                     for w in PACKED_BITS)  # the widths of ``proqha.quant.storage``, which the cost model reads


def storage_opset(storage: str) -> int:
    """The lowest opset that reads a weight storage type (int2, int4, int8, uint8)."""
    return next((t.opset for t in PACKED_TYPES if t.name == storage), BASE_OPSET)


def stored_range(qmin: int, qmax: int, odd_levels: bool) -> tuple[int, int]:
    """The integers a packed weight grid is stored as: the grid's own, or (q - 1) / 2 for DoReFa's odd q."""
    return ((qmin - 1) // 2, (qmax - 1) // 2) if odd_levels else (qmin, qmax)


def packed_type(qmin: int, qmax: int, odd_levels: bool = False) -> PackedType | None:
    """The smallest packed type that holds a weight grid, or None (it needs int8): for every weight quantizer's
    grid the width ``proqha.quant.storage.stored_bits`` gives its bits (tests/test_file_budget.py checks it)."""
    lo, hi = stored_range(qmin, qmax, odd_levels)
    return next((t for t in PACKED_TYPES if t.lo <= lo and hi <= t.hi), None)


@dataclass(frozen=True)
class EmittedGrid:
    """The per-tensor activation grid as written: step, integer range in grid units (zero point 0), sign."""

    scale: float
    qmin: int
    qmax: int
    signed: bool = False

    def holds(self, other: "EmittedGrid") -> bool:
        """Whether a tensor on ``other`` is unchanged by quantizing it to this grid: the same step and sign,
        and this integer range holds ``other``'s."""
        return (self.scale == other.scale and self.signed == other.signed
                and self.qmin <= other.qmin and other.qmax <= self.qmax)


@dataclass(frozen=True)
class Rules:
    """The checks a graph must pass beyond the ONNX checker and its weight ranges, as its profile says:
    ``exact``: its layers run in onnxruntime's int8 kernels and agree with PyTorch (else both are measured
    and reported only); ``pair_sums``: no uint8 x int8 pair sum can leave int16 (a bound on the file's
    integers, the same verdict on every CPU); ``trt_graph``: TensorRT's parser rules, before writing."""

    exact: bool = False
    pair_sums: bool = False
    trt_graph: bool = False


class OrtProfile:
    """onnxruntime (x86/ARM CPUs): uint8 activations, integer clamps, int32 biases, uint8 weights where int8
    pair sums could pass int16 (``int8_kernels="portable"``); its quantized graphs are exact, and checked."""

    name = "ort"
    suffix = ""  # of the default output file name

    def __init__(self, int8_kernels: str = "portable", weights: str = "packed") -> None:
        self.int8_kernels = int8_kernels
        self.packs = weights == "packed"  # whether sub-8-bit weight grids are stored in INT2/INT4
        self.weights = weights if self.packs else "int8"  # the storage its files record

    def rules(self, quantized: bool) -> Rules:
        """What its graphs must pass: a quantized one is exact, and a portable one keeps pair sums in int16."""
        return Rules(exact=quantized, pair_sums=quantized and self.int8_kernels == "portable")

    def metadata(self, quantized: bool) -> dict[str, str]:
        """What its files say of their exactness: the int8 kernel form and the CPUs it is exact on."""
        return {"proqha.int8_kernels": self.int8_kernels, "proqha.exact_on": EXACT_ON[self.int8_kernels]} \
            if quantized else {}

    def recorded_int8_kernels(self, proto: onnx.ModelProto, quantized: bool) -> str:
        """The kernel form a written graph claims: a ``vnni`` graph whose pair sums all fit int16 anyway
        (grids trained portable: int8 weights everywhere already fit) is portable."""
        from proqha.export.pair_sums import check_pair_sums

        if self.int8_kernels == "vnni" and quantized and not check_pair_sums(proto):
            return "portable"
        return self.int8_kernels

    def emitted_grid(self, grid: Grid) -> EmittedGrid:
        return EmittedGrid(float(grid.scale.reshape(-1)[0]), grid.qmin, grid.qmax, grid.signed)

    def activation(self, b: GraphBuilder, x: str, grid: Grid, base: str, requantize: bool = False
                   ) -> tuple[str, EmittedGrid]:
        """Emit the Q/DQ of an activation grid; returns (dequantized tensor name, the grid as written).

        ``requantize``: ``x`` is itself a dequantized tensor (a quantizer right after another one). Its
        integer Clip is then written even for the full range: onnxruntime's DoubleQDQPairsRemover rewrites
        Q1 -> DQ1 -> Q2 -> DQ2 into a single quantization, which is not what two roundings compute
        (measured: 99.7% of values changed on a uint8 requantization); a Clip between Q2 and DQ2 keeps the
        pairs apart."""
        g = self.emitted_grid(grid)
        scale = b.const(f"{base}.scale", np.array(g.scale, np.float32))
        zp = UINT8_SIGNED_OFFSET if grid.signed else 0
        zero = b.const(f"{base}.zero_point", np.array(zp, np.uint8))
        q = b.node("QuantizeLinear", [x, scale, zero], f"{base}.q")
        if requantize or g.qmin + zp > 0 or g.qmax + zp < 255:
            lo = b.const(f"{base}.int_min", np.array(g.qmin + zp, np.uint8))
            hi = b.const(f"{base}.int_max", np.array(g.qmax + zp, np.uint8))
            q = b.node("Clip", [q, lo, hi], f"{base}.int_clip")
        return b.node("DequantizeLinear", [q, scale, zero], f"{base}.dq"), g

    def wide_weights(self, act_max: int, weight_max: int) -> bool:
        """Whether a layer's weights go out as uint8 (U8U8 kernels) to keep its pair sums exact."""
        return self.int8_kernels == "portable" and not pair_sum_fits_int16(act_max, weight_max)

    def bias(self, b: GraphBuilder, ints: np.ndarray, scale: np.ndarray, values: np.ndarray, base: str) -> str:
        """int32 bias at scale ``input scale * weight scale`` (what onnxruntime needs to fuse), dequantized."""
        v = b.const(f"{base}.bias_int32", ints.astype(np.int32))
        s = b.const(f"{base}.bias_scale", scale.astype(np.float32))
        return b.node("DequantizeLinear", [v, s], f"{base}.bias", axis=0)  # zero point: 0 when left out


class TrtProfile(OrtProfile):
    """TensorRT explicit quantization: int8 only, zero point 0, float clamps, float biases."""

    name = "trt"
    suffix = "-trt"

    def __init__(self, int8_kernels: str = "portable", weights: str = "packed") -> None:
        super().__init__(int8_kernels, weights)
        self.packs = False  # TensorRT takes INT4 weights only for weight-only quantization
        self.weights = "int8"

    def rules(self, quantized: bool) -> Rules:
        """TensorRT's parser rules; its kernels and parity are measured and reported, not enforced."""
        return Rules(trt_graph=True)

    def metadata(self, quantized: bool) -> dict[str, str]:
        return {}  # it claims no exactness on CPUs

    def recorded_int8_kernels(self, proto: onnx.ModelProto, quantized: bool) -> str:
        return self.int8_kernels

    def emitted_grid(self, grid: Grid) -> EmittedGrid:
        """The grid written: unsigned 8-bit grids (0..255) become 0..127 over the same range."""
        scale = float(grid.scale.reshape(-1)[0])
        if grid.qmax > 127:
            return EmittedGrid(scale * grid.qmax / 127, 0, 127, grid.signed)
        return EmittedGrid(scale, grid.qmin, grid.qmax, grid.signed)

    def activation(self, b: GraphBuilder, x: str, grid: Grid, base: str, requantize: bool = False
                   ) -> tuple[str, EmittedGrid]:
        g = self.emitted_grid(grid)
        scale = b.const(f"{base}.scale", np.array(g.scale, np.float32))
        lo = b.const(f"{base}.clip_min", np.array(g.qmin * g.scale, np.float32))
        hi = b.const(f"{base}.clip_max", np.array(g.qmax * g.scale, np.float32))
        clipped = b.node("Clip", [x, lo, hi], f"{base}.clip")
        zero = b.const(f"{base}.zero_point", np.array(0, np.int8))
        q = b.node("QuantizeLinear", [clipped, scale, zero], f"{base}.q")
        return b.node("DequantizeLinear", [q, scale, zero], f"{base}.dq"), g

    def wide_weights(self, act_max: int, weight_max: int) -> bool:
        return False  # int8 only; TensorRT sums in int32

    def bias(self, b: GraphBuilder, ints: np.ndarray, scale: np.ndarray, values: np.ndarray, base: str) -> str:
        return b.const(f"{base}.bias", values.astype(np.float32))  # TensorRT quantizes biases itself


PROFILES = {"ort": OrtProfile, "trt": TrtProfile}


def profile_for(name: str, int8_kernels: str = "portable", weights: str = "packed") -> OrtProfile:
    """The writer of a deployment profile by name."""
    return PROFILES[name](int8_kernels, weights)


def file_rules(meta: Mapping[str, str]) -> tuple[Rules, str]:
    """The rules a file was written under, from its metadata, and its int8 kernel form: its profile's, for
    its format (the float graph of ``onnx-fp32`` claims no exactness); none for a file of no known profile.
    A quantized file without a recorded form counts as portable (files before the option claimed every CPU)."""
    int8_kernels = meta.get("proqha.int8_kernels", "portable")
    name = meta.get("proqha.profile", "")
    if name not in PROFILES:
        return Rules(), int8_kernels
    return profile_for(name, int8_kernels).rules(meta.get("proqha.format") in ("onnx", "trt")), int8_kernels


@dataclass(frozen=True)
class WrittenWeight:
    """A layer's weights as written: the dequantized tensor, the integer initializer and its storage type
    (int2, int4, int8 or uint8)."""

    dequantized: str
    initializer: str
    storage: str


def weight(b: GraphBuilder, trained: np.ndarray, factor: int, scale: np.ndarray, base: str,
           grid: tuple[int, int, bool], wide: bool = False, pack: bool = False) -> WrittenWeight:
    """Weights with a per-output-channel DequantizeLinear (axis 0) whose integers are ``factor * trained``
    at ``scale`` (``trained`` on ``grid`` = (qmin, qmax, odd_levels)).

    Stored as int8 with zero point 0; with ``wide`` as uint8 holding the integers + 128 at zero point
    128 (the same values, U8U8 kernels); with ``pack`` in the smallest ``PACKED_TYPES`` entry that holds
    the grid, widened in front of the DequantizeLinear: Cast(INT8), then for DoReFa's odd grids Mul 2 and
    Add 1, then Mul ``factor``. Every intermediate value lies between the stored and the final integers,
    so int8 arithmetic cannot wrap, and onnxruntime folds the chain at session creation."""
    ints = trained.astype(np.int64) * factor
    kind = packed_type(*grid) if pack and not wide else None
    s = b.const(f"{base}.weight_scale", scale.astype(np.float32))
    if wide:
        w = stored = b.const(f"{base}.weight_uint8", (ints + WIDE_WEIGHT_ZERO_POINT).astype(np.uint8))
        z = b.const(f"{base}.weight_zero_point", np.full(len(scale), WIDE_WEIGHT_ZERO_POINT, np.uint8))
    elif kind is None:
        w = stored = b.const(f"{base}.weight_int8", ints.astype(np.int8))
    else:
        values = (trained.astype(np.int64) - 1) // 2 if grid[2] else trained.astype(np.int64)
        stored = b.const(f"{base}.weight_{kind.name}", values.astype(kind.numpy_type))
        w = b.node("Cast", [stored], f"{base}.weight_widened", to=TensorProto.INT8)
        if grid[2]:
            w = b.node("Mul", [w, b.const(f"{base}.weight_two", np.array(2, np.int8))], f"{base}.weight_doubled")
            w = b.node("Add", [w, b.const(f"{base}.weight_one", np.array(1, np.int8))], f"{base}.weight_odd")
        if factor > 1:
            w = b.node("Mul", [w, b.const(f"{base}.weight_factor", np.array(factor, np.int8))],
                       f"{base}.weight_int8")
    if not wide:  # an explicit zero point: without one onnxruntime does not fuse Gemm into QGemm
        z = b.const(f"{base}.weight_zero_point", np.zeros(len(scale), np.int8))
    dq = b.node("DequantizeLinear", [w, s, z], f"{base}.weight", axis=0)
    storage = kind.name if kind else "uint8" if wide else "int8"
    return WrittenWeight(dq, stored, storage)
