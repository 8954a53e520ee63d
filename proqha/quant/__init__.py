"""Quantizers, quantized layers, model conversion and per-layer bit configs."""

from proqha.quant.bitconfig import BitConfig
from proqha.quant.convert import (
    QuantConfig,
    float_twin,
    load_float_state_dict,
    quant_layers,
    quantize_model,
    require_quantized,
    searchable_layers,
    set_uniform_bits,
    switch_on_fixed_quantizers,
)
from proqha.quant.grid import Grid
from proqha.quant.layers import QuantAdd, QuantConv2d, QuantLayer, QuantLinear
from proqha.quant.quantizers import (
    DoReFaWeightQuantizer,
    PACTQuantizer,
    Quantizer,
    SignedActQuantizer,
    WeightQuantizer,
)

__all__ = [
    "BitConfig", "DoReFaWeightQuantizer", "Grid", "PACTQuantizer", "QuantAdd", "QuantConfig", "QuantConv2d",
    "QuantLayer", "QuantLinear", "Quantizer", "SignedActQuantizer", "WeightQuantizer", "float_twin",
    "load_float_state_dict",
    "quant_layers", "quantize_model", "require_quantized", "searchable_layers", "set_uniform_bits", "switch_on_fixed_quantizers",
]
