"""The options of a training run (``TrainConfig``): each field declares its default, help text and valid
values (``proqha.options``), which the CLI, ``proqha.fit`` and the checks read. Importable without torch,
so the CLI reads its defaults and help before any heavy import."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from proqha.errors import OptionError, ProqhaError
from proqha.options import declared, option

OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("none", "bf16", "fp16")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}  # the peak learning rate when ``lr`` is not given
_DEFAULT_LR_TEXT = ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items())

# ``proqha.fit`` (the Python API) trains the user's own network, not one of the registry's: there it
# defaults to Adam at 1e-3 without weight decay and one epoch, where ``proqha train`` (TrainConfig below)
# trains the registry's networks with the classic ResNet recipe (SGD at 0.1, momentum 0.9, weight decay
# 5e-4, 15 epochs).
# On networks proqha was not tuned for, SGD at 0.1 can fail to learn at all, Adam at 1e-3 learns
# (README, `benchmarks/qat_accuracy.py`). Both validate against TrainConfig's declarations.
API_FIT_EPOCHS = 1
API_FIT_OPTIMIZER = "adam"
API_FIT_WEIGHT_DECAY = 0.0


def _at_least(low: float, open_: bool = False, finite: bool = False) -> dict[str, Any]:
    """``option`` rules for a lower bound (``open_``: strictly above it; ``finite``: no inf or NaN), worded
    as training's messages are: ``out of range: must be >= 1``."""

    def ok(value: float) -> bool:
        if finite and not math.isfinite(value):
            return False
        return value > low if open_ else value >= low

    return {"check": ok, "why": f"out of range: must be {'>' if open_ else '>='} {low:g}"}


@dataclass
class TrainConfig:
    """Every option of a training run (written to the run's config.json)."""

    arch: str | None = option(None, "Architecture: a registered name, or package.module:factory for your own "
                                    "(default: the dataset's own).")
    dataset: str = option("digits", "digits (offline default), mnist, cifar10, cifar100, imagefolder, or "
                                    "package.module:factory for your own.")
    data_dir: str | None = option(None, "Folder with the dataset's files.")
    download: bool = option(False, "Download the dataset into --data-dir if missing.")
    bits: int = option(8, "Weight and activation bits of searchable layers: 2..8, or 32 for float.")
    bits_file: str | None = option(None, "Per-layer bits (JSON BitConfig); overrides --bits.")
    weight_quantizer: str = option("lsq", "lsq (deploy-exact) or dorefa (the paper's).")
    edge_layers: str = option("int8", "First conv and last linear: int8, float, or search.")
    int8_kernels: str = option("portable", "The CPUs the int8 file must be exact on: portable (every CPU: 8-bit "
                               "weights on 8-bit inputs train on ±64 levels, onnxruntime's reduce_range) or vnni "
                               "(±127, exact only where int8 sums are int32: VNNI/AMX, ARM64, TensorRT).")
    share_grids: bool = option(True, "Quantizers that must agree share one grid; False only for runs saved before "
                                     "shared grids (resumed).", cli=False)
    epochs: int = option(15, "Training epochs.", **_at_least(1))
    batch_size: int = option(64, "Batch size.", **_at_least(1))
    lr: float | None = option(None, f"Peak learning rate (default: {_DEFAULT_LR_TEXT}).",
                              **_at_least(0, open_=True, finite=True))
    optimizer: str = option("sgd", "sgd or adam.", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum.", cli=False)
    weight_decay: float = option(5e-4, "Weight decay (not on biases, BN, quantizer ranges).",
                                 **_at_least(0, finite=True))
    seed: int = option(0, "Seed: same seed, same result on the same machine and thread count.")
    workers: int = option(0, "DataLoader worker processes.", **_at_least(0))
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    init: str | None = option(None, "Start from this checkpoint (float or quantized).")
    amp: str = option("none", "Mixed precision for the float parts: none, bf16, fp16 (CUDA); quantizer math stays "
                              "float32.", choices=AMP_MODES)
    channels_last: bool = option(False, "Train in channels_last memory format.")
    compile: bool = option(False, "torch.compile the model for training and evaluation (eager, with one warning, "
                                  "if it cannot).")

    def resolved(self) -> "TrainConfig":
        """Fill defaults that depend on other options and validate them (``ProqhaError``; ``OptionError``
        naming the option for a bad value)."""
        from proqha.data import check_data_dir, get_dataset_spec
        from proqha.devices import resolve_device
        from proqha.models import get_model_spec
        from proqha.options import check_options

        check_data_dir(self.dataset, self.data_dir, self.download)
        data = get_dataset_spec(self.dataset, self.data_dir)
        arch = self.arch or data.default_arch
        if arch is None:
            raise OptionError("dataset", f"{self.dataset} has no default architecture; pass arch (a name or "
                                         "package.module:factory)", others=("arch",))
        get_model_spec(arch)
        self._check_quant_options()
        check_options(self)
        if self.amp == "fp16" and resolve_device(self.device).type != "cuda":
            raise OptionError("amp", "fp16 needs a CUDA device; bf16 runs on the CPU")
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]
        return TrainConfig(**(asdict(self) | {"arch": arch, "lr": lr}))

    def _check_quant_options(self) -> None:
        """The quantization options, checked by ``QuantConfig`` (their declarations live there)."""
        from proqha.quant import QuantConfig
        from proqha.quant.quantizers import check_bits

        try:
            check_bits(self.bits)
        except ValueError as exc:
            raise OptionError("bits", str(exc).removeprefix("bits ")) from None
        try:
            QuantConfig(**self.quant_options())
        except OptionError:
            raise
        except ValueError as exc:
            raise ProqhaError(str(exc)) from None

    def quant_options(self) -> dict[str, Any]:
        """The ``QuantConfig`` fields this run sets."""
        return {"bits": self.bits, "weight_quantizer": self.weight_quantizer, "edge_layers": self.edge_layers,
                "int8_kernels": self.int8_kernels, "share_grids": self.share_grids}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_train_option(name: str, value: Any) -> None:
    """``OptionError`` when ``value`` breaks TrainConfig's declaration of option ``name`` (as ``proqha.fit``
    checks its arguments)."""
    why = declared(TrainConfig, name).problem(value)
    if why:
        raise OptionError(name, f"{why}, got {value!r}" if isinstance(value, str) else f"{why}, got {value}")
