"""`proqha quantize`: post-training quantization of a trained float model (an ``--init`` file or a train run)
into a run folder that ``search``, ``export``, ``bench``, ``sensitivity`` and ``train --init`` read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import declared_option, fresh_run_dir, handle_errors, params_given
from proqha.cli.quantize_report import run_quantize
from proqha.options import check_options, default
from proqha.ptq_config import PTQConfig
from proqha.train_config import TrainConfig

STAGE = "quantize"  # the run folders' prefix: runs/quantize-<n>


@handle_errors
def quantize(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help="A proqha run (or checkpoint) to quantize, as --init; its "
                                                       "architecture and data come with it.")] = None,
    init: Annotated[Optional[Path], declared_option(TrainConfig, "init", "--init")] = default(TrainConfig, "init"),
    arch: Annotated[Optional[str], declared_option(TrainConfig, "arch")] = default(TrainConfig, "arch"),
    dataset: Annotated[str, declared_option(TrainConfig, "dataset")] = default(TrainConfig, "dataset"),
    data_dir: Annotated[Optional[Path], declared_option(TrainConfig, "data_dir")] = default(TrainConfig, "data_dir"),
    num_classes: Annotated[Optional[int], declared_option(TrainConfig, "num_classes")] = default(TrainConfig, "num_classes"),
    image_size: Annotated[Optional[int], declared_option(TrainConfig, "image_size")] = default(TrainConfig, "image_size"),
    val_split: Annotated[Optional[float], declared_option(TrainConfig, "val_split")] = default(TrainConfig, "val_split"),
    bits: Annotated[int, declared_option(TrainConfig, "bits")] = default(TrainConfig, "bits"),
    bits_file: Annotated[Optional[Path], declared_option(TrainConfig, "bits_file")] = default(TrainConfig, "bits_file"),
    weight_quantizer: Annotated[str, declared_option(TrainConfig, "weight_quantizer")] = default(TrainConfig, "weight_quantizer"),
    edge_layers: Annotated[str, declared_option(TrainConfig, "edge_layers")] = default(TrainConfig, "edge_layers"),
    int8_kernels: Annotated[str, declared_option(TrainConfig, "int8_kernels")] = default(TrainConfig, "int8_kernels"),
    calib_batches: Annotated[int, declared_option(PTQConfig, "calib_batches")] = default(PTQConfig, "calib_batches"),
    calib_method: Annotated[str, declared_option(PTQConfig, "calib_method")] = default(PTQConfig, "calib_method"),
    percentile: Annotated[float, declared_option(PTQConfig, "percentile")] = default(PTQConfig, "percentile"),
    bn_recalib: Annotated[Optional[bool], declared_option(PTQConfig, "bn_recalib", "--bn-recalib/--no-bn-recalib")
                          ] = default(PTQConfig, "bn_recalib"),
    batch_size: Annotated[int, declared_option(TrainConfig, "batch_size")] = default(TrainConfig, "batch_size"),
    seed: Annotated[int, declared_option(TrainConfig, "seed")] = default(TrainConfig, "seed"),
    workers: Annotated[int, declared_option(TrainConfig, "workers")] = default(TrainConfig, "workers"),
    device: Annotated[str, declared_option(TrainConfig, "device")] = default(TrainConfig, "device"),
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/quantize-<n>).")] = None,
) -> None:
    """Quantize a trained float model without training (post-training quantization): calibrate its ranges,
    then print float and quantized top-1 and the drop."""
    from proqha.errors import OptionError

    if run is not None and init is not None:
        raise OptionError("init", "names the model to quantize, as RUN does: give one of them")
    init = run if run is not None else init
    if init is None:
        raise OptionError("init", "is needed: the trained model to quantize (a state dict file, a proqha "
                                  "checkpoint or run)")
    ptq = PTQConfig(calib_batches=calib_batches, calib_method=calib_method, percentile=percentile,
                    bn_recalib=bn_recalib)
    check_options(ptq)
    cfg = TrainConfig(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                      num_classes=num_classes, image_size=image_size, val_split=val_split, bits=bits,
                      bits_file=str(bits_file) if bits_file else None, weight_quantizer=weight_quantizer,
                      edge_layers=edge_layers, int8_kernels=int8_kernels, batch_size=batch_size, seed=seed,
                      workers=workers, device=device, init=str(init))
    run_quantize(cfg.following_init(params_given(ctx)).resolved(), ptq, fresh_run_dir(STAGE, run_dir))
