"""A search step's fine-tuning (Adam, one cosine schedule over its epochs) as a runner that can stop and go
on: the final race (``proqha.search.race``) trains several candidates a few epochs at a time on the same
schedule and the same batches, so the winner ends exactly where training it alone would have."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from proqha.search.config import SearchConfig
from proqha.search.data import SearchData
from proqha.seeds import Salt, step_seed
from proqha.train import LossFn, make_optimizer, train_one_epoch, training_net


class FineTune:
    """``epochs`` of Adam on ``model`` for search step ``step``: epoch ``e`` draws its batches from
    ``step_seed(seed, step, FINETUNE_EPOCH + e)`` whichever model runs it, and the learning rate follows one
    cosine over all ``epochs``. ``run_to(n)`` trains up to epoch ``n``."""

    def __init__(self, model: nn.Module, cfg: SearchConfig, data: SearchData, device: torch.device, step: int,
                 epochs: int, loss_fn: LossFn | None = None) -> None:
        self.model, self.cfg, self.data, self.device = model, cfg, data, device
        self.step, self.epochs, self.loss_fn = step, epochs, loss_fn
        self.done, self.train_top1 = 0, math.nan
        self.optimizer = make_optimizer(model, "adam", cfg.lr, cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=max(1, epochs * data.train_steps()))

    def run_to(self, epoch: int, on_batch: Callable | None = None) -> float:
        """Train epochs ``done + 1`` to ``epoch`` (at most ``epochs``); the last epoch's train top-1."""
        epoch = min(epoch, self.epochs)
        if epoch <= self.done:
            return self.train_top1
        if self.cfg.compile:  # a fresh compile per run: the step's bits, and no pile of stale guarded graphs
            torch._dynamo.reset()
        net = training_net(self.model, self.device, self.cfg.compile)
        for e in range(self.done, epoch):
            seed = step_seed(self.cfg.seed, self.step, Salt.FINETUNE_EPOCH + e)
            torch.manual_seed(seed)
            self.train_top1 = train_one_epoch(net, self.data.train_batches(seed), self.optimizer, self.scheduler,
                                              self.device, e, on_batch, loss_fn=self.loss_fn)["train_top1"]
        self.done = epoch
        return self.train_top1
