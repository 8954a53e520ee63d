"""The options of a training run (``TrainConfig``), their defaults and checks: importable without torch, so
the CLI reads its defaults and help from here before any heavy import."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from proqha.errors import ProqhaError

OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("none", "bf16", "fp16")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}


@dataclass
class TrainConfig:
    """Every option of a training run (written to the run's config.json)."""

    arch: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    bits: int = 8
    bits_file: str | None = None
    weight_quantizer: str = "lsq"
    edge_layers: str = "int8"
    int8_kernels: str = "portable"
    share_grids: bool = True  # not a CLI option: False only for runs saved before shared grids (resumed)
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    init: str | None = None
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model for training and evaluation

    def resolved(self) -> "TrainConfig":
        """Fill defaults that depend on other options and validate ranges (ProqhaError on bad input)."""
        from proqha.data import check_data_dir, get_dataset_spec
        from proqha.models import get_model_spec
        from proqha.quant import QuantConfig
        from proqha.quant.quantizers import check_bits
        from proqha.train import resolve_device

        check_data_dir(self.dataset, self.data_dir, self.download)
        data = get_dataset_spec(self.dataset, self.data_dir)
        arch = self.arch or data.default_arch
        if arch is None:
            raise ProqhaError(f"--dataset {self.dataset} has no default architecture; pass --arch (a name or "
                              "package.module:factory)")
        get_model_spec(arch)
        try:
            check_bits(self.bits, "--bits")
            QuantConfig(**self.quant_options())
        except ValueError as exc:
            raise ProqhaError(str(exc)) from None
        if self.optimizer not in OPTIMIZERS:
            raise ProqhaError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ProqhaError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.amp == "fp16" and resolve_device(self.device).type != "cuda":
            raise ProqhaError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
        for name, value, ok in [("--epochs", self.epochs, self.epochs >= 1),
                                ("--batch-size", self.batch_size, self.batch_size >= 1),
                                ("--workers", self.workers, self.workers >= 0),
                                ("--lr", self.lr, self.lr is None or (math.isfinite(self.lr) and self.lr > 0)),
                                ("--weight-decay", self.weight_decay, self.weight_decay >= 0)]:
            if not ok:
                raise ProqhaError(f"{name} out of range: {value}")
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]
        return TrainConfig(**(asdict(self) | {"arch": arch, "lr": lr}))

    def quant_options(self) -> dict[str, Any]:
        """The ``QuantConfig`` fields this run sets."""
        return {"bits": self.bits, "weight_quantizer": self.weight_quantizer, "edge_layers": self.edge_layers,
                "int8_kernels": self.int8_kernels, "share_grids": self.share_grids}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
