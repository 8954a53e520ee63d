"""onnxruntime's own post-training quantizer on the same float graph: the one-liner a user compares proqha
with, as a bench anchor row.

``quantize_static`` after ``quant_pre_process`` (without it its QDQ graph runs slower than fp32), QDQ
format, uint8 activations, int8 weights per channel (U8S8, its CPU default), calibrated by min/max on
images the caller gives. On CPUs without VNNI its 8-bit weights can saturate the int16 pair sums of the
U8S8 kernels, so its file is fast but not exact there (``proqha.export.pair_sums``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

ANCHOR_LABEL = "ort quantize_static"
ANCHOR_NOTE = (f"{ANCHOR_LABEL}: onnxruntime's own quantize_static (U8S8, per-channel, min/max calibration) of the fp32 "
               "twin: the anchor; it is not the trained function, and on CPUs without VNNI its 8-bit weights can "
               "saturate the int8 kernels. vs qs: latency as a ratio to its row on the same engine and batch")


def quantize_static_graph(fp32_graph: bytes, calibration: np.ndarray, input_name: str = "input",
                          reduce_range: bool = False) -> bytes:
    """The QDQ graph onnxruntime's ``quantize_static`` makes of ``fp32_graph``, calibrated on ``calibration``
    (a float32 batch, fed one image at a time). ``reduce_range``: 7-bit weights, its choice for CPUs
    without VNNI."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: calibration[i: i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "qdq.onnx"))
        src.write_bytes(fp32_graph)
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()
