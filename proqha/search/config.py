"""The options of a search (``SearchConfig``), their defaults and checks: importable without torch, so the
CLI reads its defaults and help from here before any heavy import."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from proqha.errors import ProqhaError

KNOB_KINDS = {"both": ("w", "a"), "weights": ("w",), "activations": ("a",)}
CRITERIA = ("hessian", "loss", "acc", "random")
STRATEGIES = ("auto", "table", "sets", "allocate")
INTERVALS = (1, 2, 4)
COST_METRICS = ("paper", "bitops")  # what --lam trades against: the paper cost (weight bits / 32), BitOPs
LEGACY_METRICS = {"size": "paper"}  # the name runs written before it was renamed use
START_BITS = 8  # a float (32-bit) knob enters the search here




@dataclass
class SearchConfig:
    """Every option of a search (written to the run's config.json)."""

    source: str = ""
    candidates: int = 16
    ratio: float = 0.5
    interval: int = 1
    min_bits: int = 2
    criterion: str = "hessian"
    lam: float = 0.1
    steps: int = 8
    finetune_epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    cost_metric: str | None = None
    target_cost: float | None = None
    target_bitops: float | None = None
    target_size_mb: float | None = None
    strategy: str = "auto"
    table_data: str = "calib"
    knobs: str = "both"
    fixed_bits: int | None = None
    fit_budget: bool = True
    final_epochs: int = 8
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    compile: bool = False  # torch.compile the model for fine-tuning and evaluation (a fresh compile per step)

    def resolved(self) -> "SearchConfig":
        """Validate ranges and combinations (ProqhaError naming the option); fill the cost metric and the
        strategy."""
        self._check_ranges()
        given = self._check_targets()
        follows = "bitops" if self.target_bitops is not None and len(given) == 1 else "paper" if given else None
        chosen = LEGACY_METRICS.get(self.cost_metric, self.cost_metric) if self.cost_metric else None
        metric = chosen or follows or "paper"
        if metric not in COST_METRICS:
            raise ProqhaError(f"--cost-metric must be paper or bitops, got {metric!r}")
        if follows and chosen and len(given) == 1 and chosen != follows:
            raise ProqhaError(f"--cost-metric {chosen} conflicts with {next(iter(given))} "
                              f"(which trades against {follows})")
        strategy = self.strategy
        if strategy == "auto":  # a budget to spend: the knapsack; else (or a random control) the table
            budget = (self.target_cost is not None or self.target_bitops is not None) and self.target_size_mb is None
            strategy = "allocate" if budget and self.criterion != "random" else "table"
        return SearchConfig(**(asdict(self) | {"cost_metric": metric, "strategy": strategy}))

    def _check_ranges(self) -> None:
        checks = [
            ("--lam", self.lam, math.isfinite(self.lam) and self.lam >= 0, "must be >= 0"),
            ("--ratio", self.ratio, 0 < self.ratio <= 1, "must be in (0, 1]"),
            ("--interval", self.interval, self.interval in INTERVALS, "must be 1, 2 or 4"),
            ("--min-bits", self.min_bits, 2 <= self.min_bits <= 8, "must be in 2..8"),
            ("--candidates", self.candidates, self.candidates >= 1, "must be >= 1"),
            ("--steps", self.steps, self.steps >= 1, "must be >= 1"),
            ("--finetune-epochs", self.finetune_epochs, self.finetune_epochs >= 0, "must be >= 0"),
            ("--lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "must be > 0"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "must be >= 1"),
            ("--criterion", self.criterion, self.criterion in CRITERIA, f"must be one of {', '.join(CRITERIA)}"),
            ("--strategy", self.strategy, self.strategy in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}"),
            ("--table-data", self.table_data, self.table_data in ("calib", "train"), "must be calib or train"),
            ("--knobs", self.knobs, self.knobs in KNOB_KINDS, f"must be one of {', '.join(KNOB_KINDS)}"),
            ("--fixed-bits", self.fixed_bits, self.fixed_bits is None or 2 <= self.fixed_bits <= 8, "must be in 2..8"),
            ("--final-epochs", self.final_epochs, self.final_epochs >= 0, "must be >= 0"),
        ]
        for option, value, ok, why in checks:
            if not ok:
                raise ProqhaError(f"{option} {why}, got {value}")

    def _check_targets(self) -> dict[str, float]:
        """The targets given (option -> value), after checking their combinations."""
        targets = {"--target-cost": self.target_cost, "--target-bitops": self.target_bitops,
                   "--target-size-mb": self.target_size_mb}
        given = {k: v for k, v in targets.items() if v is not None}
        if self.fixed_bits is not None and self.knobs == "both":
            raise ProqhaError("--fixed-bits sets the knobs that are not searched: use it with --knobs weights "
                              "or --knobs activations")
        if self.strategy == "allocate" and (self.target_size_mb is not None or not given):
            raise ProqhaError("--strategy allocate spends a budget: give --target-cost and/or --target-bitops "
                              "(not --target-size-mb)")
        if self.strategy == "allocate" and self.criterion == "random":
            raise ProqhaError("--strategy allocate measures each knob's loss; the random control is "
                              "--strategy table --criterion random")
        if self.knobs == "activations" and ({"--target-cost", "--target-size-mb"} & set(given)):
            raise ProqhaError("--knobs activations cannot reach a paper cost or size target: activations do not "
                              "count in the paper cost")
        for option, value in given.items():
            if not (math.isfinite(value) and value > 0):
                raise ProqhaError(f"{option} must be > 0, got {value}")
        return given

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
