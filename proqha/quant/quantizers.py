"""Quantizer modules: plain modules with visible state (bits, signed, axis, clip range alpha).

Every quantizer is parameterised by a learnable clip range ``alpha`` (per channel for weights) and
derives its scale as ``alpha / qmax``, so lowering the bit-width at run time keeps the range and only
coarsens the grid. The range is initialised from the first tensor the quantizer sees (weights: their
per-channel max |w|; activations: the batch max), which is also what makes a float checkpoint load
into the quantized twin. ``bits = 32`` switches a quantizer off (identity).

A quantizer with ``tracks_range`` (the model's outputs: logits) does not learn its range by gradient:
in training mode its range follows the observed activations (``tracked_range``), so that a network still
finding its output scale can never clip its own logits and lose their gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from proqha.quant import grid as g
from proqha.quant import kernels


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False


RANGE_DECAY = 0.01
"""How fast a tracked range shrinks towards smaller batch maxima (per training forward); it grows at once."""


def tracked_range(alpha: torch.Tensor, batch_max: torch.Tensor, decay: float = RANGE_DECAY) -> torch.Tensor:
    """The next tracked clip range: never below this batch's max |x| (nothing in the batch clips), else
    an exponential moving average towards it, so a range left by early outliers comes back down."""
    return torch.maximum(batch_max, alpha + decay * (batch_max - alpha))


def check_bits(bits: object, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in 2..8 or 32, else raise ValueError naming ``what``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in g.VALID_BITS:
        raise ValueError(f"{what} must be an integer in 2..8 or 32 (full precision), got {bits!r}")
    return bits


class Quantizer(nn.Module):
    """Base: bit-width, lazy range initialisation, integer grid, and bits kept in the state dict."""

    signed: bool = True
    axis: int | None = None

    def __init__(self, bits: int = 8, channels: int = 1) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.alpha = nn.Parameter(torch.ones(channels))
        self.initialized = False
        self.tracks_range = False

    def track_range(self) -> "Quantizer":
        """Take the range from the observed activations instead of learning it (see ``tracked_range``): the
        range becomes a buffer (the same state-dict key), which DistributedDataParallel broadcasts from rank
        0 before every forward, so every rank quantizes with the same range."""
        self.tracks_range = True
        alpha = self.alpha.detach().clone()
        del self.alpha
        self.register_buffer("alpha", alpha)
        return self

    # -- grid -------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.bits != g.FULL_PRECISION

    def qrange(self) -> tuple[int, int]:
        return g.signed_range(self.bits) if self.signed else g.unsigned_range(self.bits)

    def scale(self) -> torch.Tensor:
        """Current step size(s): ``|alpha| / qmax`` (the source's, while ``shares_grid``)."""
        if self.shares_grid:
            return self.grid_source.scale()  # type: ignore[union-attr]
        return kernels.lsq_scale(self.alpha, self.qrange()[1])

    grid_source: "Quantizer | None" = None  # set by ``share_grid_with``; not a child module

    def share_grid_with(self, source: "Quantizer") -> "Quantizer":
        """Quantize on ``source``'s grid whenever both have the same bits and kind: ``source``'s output is
        this quantizer's input (a residual add's output feeding a conv), so the second rounding is the
        identity and an exported graph writes none. The range follows ``source``'s at every forward (it
        is where a narrower searched grid starts learning its own)."""
        object.__setattr__(self, "grid_source", source)
        return self

    @property
    def shares_grid(self) -> bool:
        """Whether this quantizer is on its ``grid_source``'s grid now (same bits, sign and levels)."""
        src = self.grid_source
        return (src is not None and self.enabled and src.enabled and src.bits == self.bits
                and src.signed == self.signed and src.qrange() == self.qrange())

    def grid(self) -> g.Grid:
        """The integer grid an exporter reproduces (fails for a quantizer that is off)."""
        if not self.enabled:
            raise ValueError("quantizer is off (32 bit): it has no integer grid")
        qmin, qmax = self.qrange()
        return g.Grid(self.bits, self.scale().detach().clone(), qmin, qmax, self.signed, self.axis)

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integers ``x`` maps to on this quantizer's grid."""
        gr = self.grid()
        return g.to_integers(x.detach(), gr.scale, gr.qmin, gr.qmax, gr.axis)

    # -- range initialisation ---------------------------------------------------------------------
    def _initial_alpha(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().abs().amax().reshape(1)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the clip range from a tensor (called on the first forward)."""
        self.alpha.copy_(self._initial_alpha(x).clamp_min(1e-4).to(self.alpha))
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if x.dtype != torch.float32 or _autocast_on(x.device.type):
            # mixed precision covers the float parts only: the grid math stays in float32
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float())
        if self.shares_grid and self.grid_source.initialized and not kernels.recording(x):  # type: ignore[union-attr]
            with torch.no_grad():
                self.alpha.copy_(self.grid_source.alpha)  # type: ignore[union-attr]
            self.initialized = True
        if not self.initialized:
            self.initialize(x)
        elif self.tracks_range and self.training and not kernels.recording(x):
            self._track(x)
        return self._fake_quant(x)

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        self.alpha.copy_(tracked_range(self.alpha, self._initial_alpha(x).to(self.alpha)))

    def per_tensor_args(self, x: torch.Tensor) -> g.PerTensorArgs:
        """What the per-tensor LSQ kernels take to quantize ``x``: alpha, qmin, qmax, gradient factor."""
        qmin, qmax = self.qrange()
        return self.alpha, qmin, qmax, g.lsq_grad_factor(x.numel() // max(x.shape[0], 1), qmax)

    def _fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        return g.fake_quant_per_tensor(x, *self.per_tensor_args(x))

    # -- state: bits and the initialised flag travel with the state dict ----------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"bits": self.bits, "initialized": self.initialized}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.bits = check_bits(int(state["bits"]))
        self.initialized = bool(state["initialized"])

    def extra_repr(self) -> str:
        kind = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {kind}, axis={self.axis}" + (", tracked range" if self.tracks_range else "")


class PACTQuantizer(Quantizer):
    """Activations known to be non-negative: PACT clip at learnable alpha, unsigned grid 0..2^b-1.

    With the LSQ scale gradient, dL/dalpha is 1 for inputs above alpha (PACT's gradient) plus the
    rounding-error term inside the range. ``absorbs_relu``: the ReLU before it was removed from the graph
    (the grid's clamp at 0 is the same function and gradient); when off (32 bit) it applies that ReLU.
    """

    signed = False
    absorbs_relu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled and self.absorbs_relu:
            return torch.relu(x)
        return super().forward(x)


class SignedActQuantizer(Quantizer):
    """Activations that can be negative: signed grid -2^(b-1)..2^(b-1)-1 with step alpha / (2^(b-1)-1),
    zero point 0. The full signed range (one level below -alpha) fills int8/uint8-with-offset exactly,
    so an 8-bit signed activation needs no integer clamp when deployed."""

    signed = True

    def qrange(self) -> tuple[int, int]:
        lo, hi = g.signed_range(self.bits)
        return lo - 1, hi


MAX_RANGE_BITS = 8
"""Weights at this width take their range from max |w| per channel at every training step instead of
learning it: an 8-bit grid clipping nothing rounds to 1/254 of the range, so a learned range gains
nothing there, while Adam's scale-free steps (lr per step whatever the gradient's size) drag the small
ranges of depthwise channels to zero and below (measured on MobileNetV3: 10% of weights clipped, ranges
negative). Narrower weights learn their range (LSQ), starting from the max."""


class WeightQuantizer(Quantizer):
    """Weights: symmetric signed per output channel, ±(2^(b-1)-1) (capped by ``pair_with``), zero point 0;
    the range is max |w| at 8 bit (``MAX_RANGE_BITS``), LSQ-learned below."""

    signed = True
    axis = 0
    paired_input: Quantizer | None = None  # set by ``pair_with``; not a child module

    def pair_with(self, input_quantizer: Quantizer) -> "WeightQuantizer":
        """Keep every uint8 x int8 pair sum of this layer inside int16 (``int8_kernels="portable"``): the
        grid's top level is capped by ``int16_weight_max`` of the input grid as it is at each use, so a
        searched input width moves the cap with it (8-bit weights: ±64 on 8-bit inputs, ±127 on unsigned
        7-bit ones, ±85 on signed 7-bit ones, stored up to 191)."""
        object.__setattr__(self, "paired_input", input_quantizer)
        return self

    def qrange(self) -> tuple[int, int]:
        lo, hi = super().qrange()
        partner = self.paired_input
        if partner is None or not partner.enabled:
            return lo, hi
        cap = min(hi, g.int16_weight_max(g.uint8_top(partner.qrange()[1], partner.signed)))
        return -cap, cap

    def _initial_alpha(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach().abs().flatten(1).amax(dim=1)

    def follow(self, w: torch.Tensor) -> None:
        """At ``MAX_RANGE_BITS``, set the range to max |w| (a layer calls it on each training forward and
        when it turns to eval mode, so the deployed range is that of the final weights)."""
        if self.bits == MAX_RANGE_BITS and not kernels.recording(w):
            self.initialize(w)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.follow(w)
        return super().forward(w)

    def _fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange()
        factor = g.lsq_grad_factor(w[0].numel(), qmax)
        return g.fake_quant_per_channel(w, self.alpha, qmin, qmax, factor)


class DoReFaWeightQuantizer(Quantizer):
    """The paper's weights (DoReFa): tanh normalisation to [-1, 1], 2^b levels on odd integers.

    ``w_q = (2k - n) / n`` with ``k = round(n * (tanh(w) / (2 max|tanh w|) + 1/2))`` and ``n = 2^b - 1``.
    Its grid has scale ``1/n`` (one per tensor; no learnable range) and the odd integers in [-n, n],
    which int8 holds exactly only up to 7 bit.
    """

    signed = True
    axis = None

    def __init__(self, bits: int = 8, channels: int = 1) -> None:
        super().__init__(bits, 1)
        self.alpha.requires_grad_(False)
        self.initialized = True

    def qrange(self) -> tuple[int, int]:
        n = 2**self.bits - 1
        return -n, n

    def scale(self) -> torch.Tensor:
        return torch.full((1,), 1.0 / (2**self.bits - 1), device=self.alpha.device)

    def grid(self) -> g.Grid:
        gr = super().grid()
        return g.Grid(gr.bits, gr.scale, gr.qmin, gr.qmax, True, None, odd_levels=True)

    def _normalized(self, w: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w)
        return t / (2 * t.abs().amax().clamp_min(kernels.SCALE_EPS)) + 0.5

    def _fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        n = 2**self.bits - 1
        # (2k - n) * (1/n): the integers times the grid's scale, as a deployed DequantizeLinear computes it
        return (2 * g.round_ste(self._normalized(w) * n) - n) * self.scale()

    def integers(self, w: torch.Tensor) -> torch.Tensor:
        n = 2**self.bits - 1
        return (2 * torch.round(self._normalized(w.detach()) * n) - n).to(torch.int32)


WEIGHT_QUANTIZERS: dict[str, type[Quantizer]] = {"lsq": WeightQuantizer, "dorefa": DoReFaWeightQuantizer}
