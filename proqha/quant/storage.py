"""How an exported file stores a layer, by bits: the one rule the exporter (``proqha.export.qdq``) and the cost
model (``proqha.cost``: a file's predicted size) both read.

Weights with packed storage (``proqha export --weights packed``, the default): 2 bit as INT2, 3-4 bit as INT4
(a DoReFa grid's odd integers q as (q - 1) / 2: one type smaller than its range), 5-8 bit as int8 (or uint8),
a float layer as float32. ONNX packs INT2/INT4 tensors in whole bytes, so a tensor of n weights at s stored
bits takes ceil(n * s / 8) bytes. Activations: a grid narrower than 8 bit is clamped in the graph (an integer
Clip between its QuantizeLinear and DequantizeLinear), which the file holds as a node and two constants.
"""

from __future__ import annotations

import math

from proqha.quant.grid import FULL_PRECISION

PACKED_BITS = (2, 4)  # the integer widths narrower than int8 that packed weights are stored in, narrowest first
INT8_BITS = 8


def stored_bits(bits: int, packed: bool = True) -> int:
    """Bits per weight in the exported file for a weight grid of ``bits``: the narrowest of ``PACKED_BITS``
    (with ``packed``) or int8 that holds it; 32 (float) for a layer not quantized."""
    if bits >= FULL_PRECISION:
        return FULL_PRECISION
    if packed:
        return next((width for width in PACKED_BITS if bits <= width), INT8_BITS)
    return INT8_BITS


def storage_range(width: int) -> tuple[int, int]:
    """The integers a signed storage type of ``width`` bits holds (two's complement)."""
    return -(2 ** (width - 1)), 2 ** (width - 1) - 1


def stored_bytes(count: int, bits: int, packed: bool = True) -> int:
    """Bytes of ``count`` weights at ``bits`` as the file stores them (packed types fill whole bytes)."""
    return math.ceil(count * stored_bits(bits, packed) / 8)


def clamped_activation(bits: int) -> bool:
    """Whether an activation grid of ``bits`` is written with an integer clamp (narrower than int8/uint8)."""
    return bits < INT8_BITS
