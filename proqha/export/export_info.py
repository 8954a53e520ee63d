"""What the writer records of an exported graph (``ExportInfo``, a ``LayerExport`` per conv/linear), the
facts validation checks the graph against."""

from __future__ import annotations

from dataclasses import dataclass, field

from proqha.export import qdq


@dataclass
class LayerExport:
    """What was written for one conv/linear: its integer weight initializer (``weight_storage``: int8,
    uint8 at zero point 128 where int8 pair sums could pass int16, or packed int4/int2), the factor its
    trained integers were multiplied by, and the range those integers must stay in."""

    kind: str
    w_bits: int
    a_bits: int
    initializer: str | None
    qmin: int
    qmax: int
    odd_levels: bool
    bn_folded: bool
    int_factor: int = 1
    weight_zero_point: int = 0
    calls: int = 1  # a module called on several inputs (a detector's head shared across levels): one per call
    weight_storage: str = "int8"
    dequantized: str | None = None  # the weight DequantizeLinear's output
    act_max: int = 0  # the largest uint8 value its input takes in an integer kernel


@dataclass
class ExportInfo:
    """Facts about an exported graph that validation checks against."""

    profile: str
    quantized: bool
    int8_kernels: str = "portable"
    weights: str = "packed"
    layers: dict[str, LayerExport] = field(default_factory=dict)
    quant_adds: int = 0
    matmuls: int = 0  # tensor products with both inputs quantized (attention)
    output_scale: float | None = None  # the output's grid step (through upsampling and reshapes after it)
    other_size: tuple[int, ...] | None = None  # with a dynamic height and width: the second size checked

    @property
    def opset(self) -> int:
        """The graph's opset: the lowest that reads every weight type it stores."""
        return max([qdq.BASE_OPSET] + [qdq.storage_opset(layer.weight_storage) for layer in self.layers.values()])

    @property
    def integer_layers(self) -> int:
        """Conv/linear layers and matmuls that must run in integer kernels."""
        return sum(layer.calls for layer in self.layers.values() if layer.initializer and layer.a_bits != 32) + \
            self.matmuls

    @property
    def all_layers(self) -> int:
        """Every conv/linear layer (each call of a shared one) and every matmul between quantized tensors."""
        return sum(layer.calls for layer in self.layers.values()) + self.matmuls

    @property
    def rules(self) -> qdq.Rules:
        """The checks the graph must pass, as its profile says."""
        return qdq.profile_for(self.profile, self.int8_kernels).rules(self.quantized)
