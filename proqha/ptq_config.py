"""The options of post-training quantization (``PTQConfig``): how ``proqha quantize`` and
``proqha.quantize(..., calib_data=...)`` set the quantizer ranges of a trained float model. The model and
data options are training's (``TrainConfig``). Importable without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from proqha.options import option

CALIB_METHODS = ("minmax", "percentile", "mse")
BN_RECALIB_BELOW = 6  # by default BatchNorm is re-estimated when a layer is narrower (benchmarks/ptq_calibration.py)


@dataclass
class PTQConfig:
    """Every option of a post-training quantization (written to the run's config.json beside training's)."""

    calib_batches: int = option(8, "Calibration batches of batch-size images, from the calibration split (held out "
                                   "of training, evaluation transforms).", low=1)
    calib_method: str = option("mse", "How activation ranges are set from the calibration images: minmax (the "
                                      "largest value), percentile (the --percentile of values) or mse (the range "
                                      "with the least squared rounding and clipping error); mse also fits weight "
                                      "ranges below 8 bit.", choices=CALIB_METHODS)
    percentile: float = option(99.99, "The percentile method's cut, in percent of values.", low=50, high=100)
    bn_recalib: bool | None = option(None, "Re-estimate BatchNorm statistics on the calibration images with "
                                            "quantized weights and activations (default: when a layer is below 6 "
                                            "bit; benchmarks/ptq_calibration.py).")

    def recalibrates(self, lowest_bits: int) -> bool:
        """Whether BatchNorm is re-estimated for a model whose lowest layer width is ``lowest_bits``."""
        return self.bn_recalib if self.bn_recalib is not None else lowest_bits < BN_RECALIB_BELOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
