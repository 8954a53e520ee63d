"""The options of a training run (``TrainConfig``): each field declares its default, help text and valid
values (``proqha.options``), which the CLI, ``proqha.fit`` and the checks read. Importable without torch,
so the CLI reads its defaults and help before any heavy import."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Collection

from proqha.errors import OptionError, ProqhaError
from proqha.options import declared, option

if TYPE_CHECKING:
    from proqha.data.source import DataSource

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
    num_classes: int | None = option(None, "Classes of the model's head (default: the dataset's own); an init "
                                           "file's head of another size is re-initialised.", **_at_least(1))
    image_size: int | None = option(None, "imagefolder: train on random-resized crops of N pixels, test on the "
                                          "center N after resizing to N/0.875 (default 224).", **_at_least(8))
    val_split: float | None = option(None, "imagefolder without val/: hold out this fraction of train/ as the "
                                           "test split (fixed and seeded).",
                                     check=lambda v: 0 < v < 1, why="must be in (0, 1)")
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
    init: str | None = option(None, "Start from these weights: a proqha checkpoint or run folder (float or "
                                    "quantized), a plain state_dict() file, or a checkpoint holding one under "
                                    "state_dict, model_state_dict, model or net (module./_orig_mod. prefixes "
                                    "stripped; read with weights_only=True).")
    amp: str = option("none", "Mixed precision for the float parts: none, bf16, fp16 (CUDA); quantizer math stays "
                              "float32.", choices=AMP_MODES)
    channels_last: bool = option(False, "Train in channels_last memory format.")
    compile: bool = option(False, "torch.compile the model for training and evaluation (eager, with one warning, "
                                  "if it cannot).")

    def resolved(self) -> "TrainConfig":
        """Fill defaults that depend on other options and validate them (``ProqhaError``; ``OptionError``
        naming the option for a bad value)."""
        from proqha.devices import resolve_device
        from proqha.models import get_model_spec
        from proqha.options import check_options

        for name in ("num_classes", "image_size", "val_split"):  # before any folder is read
            if getattr(self, name) is not None:
                check_train_option(name, getattr(self, name))
        source = self.data_source()
        source.check()
        data = source.spec()
        if self.num_classes is not None and self.num_classes < data.num_classes:
            raise OptionError("num_classes", f"{self.num_classes} is fewer than the {data.num_classes} classes of "
                                             f"{self.dataset}")
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

    def following_init(self, given: Collection[str] = ()) -> "TrainConfig":
        """This config with the architecture, head and data of the model ``init`` names when it is a proqha
        run or checkpoint, for each of those options not in ``given`` (the ones the user
        set); unchanged for any other file (a state dict of the user's)."""
        from proqha.data.source import DataSource
        from proqha.weights import read_checkpoint

        try:
            state = read_checkpoint(self.init) if self.init else None
        except OptionError:
            raise
        except ProqhaError as exc:
            raise OptionError("init", str(exc)) from None
        if state is None or state.recipe is None:
            return self
        data = DataSource.from_dict(state.data)
        found = {"arch": state.recipe["arch"], "num_classes": int(state.recipe["num_classes"]),
                 "dataset": data.dataset, "data_dir": data.data_dir, "download": data.download,
                 "image_size": data.image_size, "val_split": data.val_split}
        return replace(self, **{k: v for k, v in found.items() if k not in given})

    def data_source(self) -> "DataSource":
        """Where this run's data comes from (what its checkpoints record)."""
        from proqha.data.source import DataSource

        return DataSource(self.dataset, self.data_dir, self.download, self.image_size, self.val_split)

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
