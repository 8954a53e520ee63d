"""`proqha train`: quantization-aware (or float) training into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import (
    declared_option,
    fresh_run_dir,
    handle_errors,
    params_given,
    resume_config,
)
from proqha.cli.train_report import run_train
from proqha.options import declared, default
from proqha.train_config import TrainConfig


@handle_errors
def train(
    ctx: typer.Context,
    arch: Annotated[Optional[str], declared_option(TrainConfig, "arch")] = default(TrainConfig, "arch"),
    dataset: Annotated[str, declared_option(TrainConfig, "dataset")] = default(TrainConfig, "dataset"),
    data_dir: Annotated[Optional[Path], declared_option(TrainConfig, "data_dir")] = default(TrainConfig, "data_dir"),
    download: Annotated[bool, declared_option(TrainConfig, "download")] = default(TrainConfig, "download"),
    num_classes: Annotated[Optional[int], declared_option(TrainConfig, "num_classes")] = default(TrainConfig, "num_classes"),
    image_size: Annotated[Optional[int], declared_option(TrainConfig, "image_size")] = default(TrainConfig, "image_size"),
    val_split: Annotated[Optional[float], declared_option(TrainConfig, "val_split")] = default(TrainConfig, "val_split"),
    bits: Annotated[int, declared_option(TrainConfig, "bits")] = default(TrainConfig, "bits"),
    bits_file: Annotated[Optional[Path], declared_option(TrainConfig, "bits_file")] = default(TrainConfig, "bits_file"),
    weight_quantizer: Annotated[str, declared_option(TrainConfig, "weight_quantizer")] = default(TrainConfig, "weight_quantizer"),
    edge_layers: Annotated[str, declared_option(TrainConfig, "edge_layers")] = default(TrainConfig, "edge_layers"),
    int8_kernels: Annotated[str, declared_option(TrainConfig, "int8_kernels")] = default(TrainConfig, "int8_kernels"),
    epochs: Annotated[Optional[int], typer.Option(help=f"{declared(TrainConfig, 'epochs').help} Default "
                                                      f"{default(TrainConfig, 'epochs')}; with --resume, extends "
                                                      "the run.")] = None,
    batch_size: Annotated[int, declared_option(TrainConfig, "batch_size")] = default(TrainConfig, "batch_size"),
    lr: Annotated[Optional[float], declared_option(TrainConfig, "lr")] = default(TrainConfig, "lr"),
    optimizer: Annotated[str, declared_option(TrainConfig, "optimizer")] = default(TrainConfig, "optimizer"),
    weight_decay: Annotated[float, declared_option(TrainConfig, "weight_decay")] = default(TrainConfig, "weight_decay"),
    seed: Annotated[int, declared_option(TrainConfig, "seed")] = default(TrainConfig, "seed"),
    workers: Annotated[int, declared_option(TrainConfig, "workers")] = default(TrainConfig, "workers"),
    device: Annotated[str, declared_option(TrainConfig, "device")] = default(TrainConfig, "device"),
    init: Annotated[Optional[Path], declared_option(TrainConfig, "init", "--init")] = default(TrainConfig, "init"),
    amp: Annotated[str, declared_option(TrainConfig, "amp")] = default(TrainConfig, "amp"),
    channels_last: Annotated[bool, declared_option(TrainConfig, "channels_last")] = default(TrainConfig, "channels_last"),
    compile: Annotated[bool, declared_option(TrainConfig, "compile", "--compile")] = default(TrainConfig, "compile"),
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/train-<n>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --run-dir (default: the latest) from its last epoch.")] = False,
) -> None:
    """Train a model quantization-aware (or float with --bits 32) and save checkpoints each epoch.

    Under torchrun (`torchrun --nproc_per_node=N -m proqha train ...`) it trains with
    DistributedDataParallel; --batch-size stays the global batch and only rank 0 writes or prints."""
    from proqha import distributed

    distributed.setup()
    if resume:
        cfg, run_dir = resume_config("train", TrainConfig, run_dir, ctx, epochs=epochs)
    else:
        cfg = TrainConfig(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                          download=download, num_classes=num_classes, image_size=image_size,
                          val_split=val_split, bits=bits, bits_file=str(bits_file) if bits_file else None,
                          weight_quantizer=weight_quantizer, edge_layers=edge_layers, int8_kernels=int8_kernels,
                          epochs=epochs if epochs is not None else default(TrainConfig, "epochs"),
                          batch_size=batch_size,
                          lr=lr, optimizer=optimizer, weight_decay=weight_decay, seed=seed, workers=workers,
                          device=device, init=str(init) if init else None, amp=amp,
                          channels_last=channels_last, compile=compile).following_init(params_given(ctx)).resolved()
        run_dir = distributed.decide_on_main(lambda: fresh_run_dir("train", run_dir))
    run_train(cfg, run_dir, resume)
