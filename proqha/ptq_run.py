"""Post-training quantization into a run folder (``quantize_run``): a trained float model (any ``init``
file, or a train run) gets its quantizer ranges from calibration images, the float and the quantized model
are evaluated on the test split, and the run folder is written as a train run's is, so ``search``,
``export``, ``bench``, ``report``, ``sensitivity`` and ``train --init`` read it. No printing here: callers
pass callbacks for progress."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import torch

from proqha.checkpoint import Checkpoint, save_checkpoint
from proqha.cost import cost_report
from proqha.errors import OptionError
from proqha.evaluation import evaluate_loader, output_warnings
from proqha.files import atomic_write_json, write_jsonl
from proqha.health import OutputHealth
from proqha.loaders import make_loader
from proqha.ptq_config import PTQConfig
from proqha.runs import RunDir, removed_on_error, run_lock
from proqha.train_config import TrainConfig

STAGE = "quantize"
Progress = Callable[[str, int, int], None]


def _batches(dataset: Any, batch_size: int, count: int) -> list[torch.Tensor]:
    """The first ``count`` batches of a split's images, in order."""
    loader = make_loader(dataset, batch_size, shuffle=False)
    return [x for x, _ in itertools.islice(loader, count)]


def quantize_run(cfg: TrainConfig, ptq: PTQConfig, run_dir: Path, on_start: Callable[[], None] | None = None,
                 on_batch: Progress | None = None) -> dict[str, Any]:
    """Quantize the (resolved) ``cfg``'s ``init`` model after training: calibrate on ``ptq.calib_batches``
    batches of the calibration split, evaluate float and quantized on the test split, write ``run_dir``
    (config.json, metrics.jsonl, bits.json, cost.json, checkpoints/last.pt). Nothing is written until
    both evaluations are done. Returns ``float``/``quantized`` (their evaluation rows), ``drop`` (top-1
    points), ``calib_images``, ``bn_layers``, ``warnings`` and ``num_classes``."""
    from proqha.devices import resolve_device
    from proqha.quant import BitConfig, float_twin
    from proqha.quant.ptq import calibrate_ranges, lowest_bits, recalibrate_batchnorm
    from proqha.train import prepare_model

    if not cfg.init:
        raise OptionError("init", "post-training quantization needs a trained model: an init file or a train run")
    device = resolve_device(cfg.device)
    source = cfg.data_source()
    calib_set, test_set = source.load("calib"), source.load("test")
    model, recipe, notes = prepare_model(cfg, device)
    if notes:  # a re-initialised head: nothing trains it here, so the quantized model would predict at random
        raise OptionError("num_classes", f"{notes[0]}; post-training quantization does not train, so that head "
                                         "would predict at random: leave num_classes to the file's head, or "
                                         "train it (proqha train --init)")
    if on_start is not None:
        on_start()
    test_loader = make_loader(test_set, cfg.batch_size, shuffle=False, workers=cfg.workers)
    float_row = evaluate_loader(float_twin(model), _counted(test_loader, "float", on_batch), device)
    batches = _batches(calib_set, cfg.batch_size, ptq.calib_batches)
    calibrate_ranges(model, batches, ptq.calib_method, device, ptq.percentile, on_batch)
    bn_layers = recalibrate_batchnorm(model, batches, device, on_batch) if ptq.recalibrates(lowest_bits(model)) else 0
    health = OutputHealth()
    quant_row = evaluate_loader(model, _counted(test_loader, "quantized", on_batch), device, health=health)
    warnings = output_warnings(model, health, test_loader, device)
    drop = float_row["test_top1"] - quant_row["test_top1"]
    row = {"epoch": 0, **quant_row, "float_top1": float_row["test_top1"], "float_loss": float_row["test_loss"],
           "top1_drop": drop, "calib_images": sum(len(b) for b in batches), "warnings": warnings}
    layout = RunDir(run_dir)
    data = source.to_dict()
    made_here = not layout.path.exists()
    with run_lock(layout.path), removed_on_error(layout.path, layout.last, made_here=made_here):
        layout.write_config(cfg.to_dict() | ptq.to_dict() | {"stage": STAGE, "epochs": 0, "recipe": recipe.to_dict(),
                                                             "num_classes": recipe.num_classes}
                            | ({"class_names": data["class_names"]} if data.get("class_names") else {}))
        write_jsonl(layout.metrics, [row])
        BitConfig.from_model(model).save(layout.bits)
        atomic_write_json(layout.cost, cost_report(model, recipe.input_size).to_dict())
        save_checkpoint(Checkpoint(STAGE, model.state_dict(), recipe.to_dict(), BitConfig.from_model(model).to_dict(),
                                   data, row, cfg.to_dict() | ptq.to_dict()), layout.last)
    return {"run_dir": str(layout.path), "float": float_row, "quantized": quant_row, "drop": drop,
            "calib_images": row["calib_images"], "bn_layers": bn_layers, "warnings": warnings,
            "num_classes": recipe.num_classes}


def _counted(loader: Any, phase: str, on_batch: Progress | None) -> Any:
    """``loader``, reporting each batch to ``on_batch`` as ``phase``."""
    if on_batch is None:
        return loader
    total = len(loader)

    def batches():
        for i, batch in enumerate(loader):
            yield batch
            on_batch(phase, i + 1, total)

    return batches()
