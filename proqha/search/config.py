"""The options of a search (``SearchConfig``): each field declares its default, help text and valid values
once (``proqha.options``); the CLI's flags, ``search_bits``' defaults and the checks read them from here.
Importable without torch, so the CLI reads its defaults and help before any heavy import."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from proqha.errors import OptionError
from proqha.options import check_options, option

KNOB_KINDS = {"both": ("w", "a"), "weights": ("w",), "activations": ("a",)}
CRITERIA = ("hessian", "loss", "acc", "random")  # implemented in proqha.search.criteria
STRATEGIES = ("auto", "table", "sets", "allocate")  # "auto" resolves to one of proqha.search.strategies
INTERVALS = (1, 2, 4)
TABLE_DATA = ("calib", "train")
COST_METRICS = ("paper", "bitops", "file", "latency")  # what lam trades against: the paper cost (weight bits / 32), BitOPs,
# the predicted exported file's bytes, the predicted latency on the latency engine
LATENCY_ENGINES = ("ort", "openvino")  # the CPU engines a latency table is measured on
LEGACY_METRICS = {"size": "paper"}  # the name runs written before it was renamed use
START_BITS = 8  # a float (32-bit) knob enters the search here
TARGETS = ("target_cost", "target_bitops", "target_size_mb", "target_file_kb", "target_latency_ms",
           "target_latency_ratio")
FOLLOWS = {"target_bitops": "bitops", "target_file_kb": "file", "target_latency_ms": "latency",
           "target_latency_ratio": "latency"}  # the metric a lone target trades against
# (the others: paper)


def _known_metric(value: str) -> bool:
    return LEGACY_METRICS.get(value, value) in COST_METRICS


@dataclass
class SearchConfig:
    """Every option of a search (written to the run's config.json)."""

    source: str = option("", "Train run, search run or checkpoint to start from.")
    candidates: int = option(16, "Candidates sampled per step.", low=1)
    ratio: float = option(0.5, "Fraction of the knobs that count (for an unmet target or the cost metric) each "
                          "candidate lowers, in (0, 1].", low=0, high=1, low_open=True)
    interval: int = option(1, "Bits a chosen knob drops by: 1, 2 or 4.", check=lambda v: v in INTERVALS,
                           why="must be 1, 2 or 4")
    min_bits: int = option(2, "Floor for every knob (2..8).", low=2, high=8)
    criterion: str = option("hessian", "hessian (the reference's score), loss (the calibration loss a candidate "
                            "adds), acc (calibration error), or random (a control).", choices=CRITERIA)
    lam: float = option(0.1, "Weight of cost saving against sensitivity (0: the reference's choice).", low=0)
    steps: int = option(8, "Progressive steps.", low=1)
    finetune_epochs: int = option(2, "Adam fine-tuning epochs after each step.", low=0)
    lr: float = option(1e-3, "Adam learning rate for scoring and fine-tuning.", low=0, low_open=True)
    weight_decay: float = option(0.0, "Weight decay of the fine-tuning (the reference: 1e-4).", low=0)
    batch_size: int = option(64, "Batch size (also the scoring batch).", low=1)
    cost_metric: str | None = option(None, "What lam trades against: paper (the paper cost), bitops or file (the "
                                     "predicted exported file's bytes); follows the target.", check=_known_metric,
                                     why="must be paper, bitops or file")
    target_cost: float | None = option(None, "Stop once the paper cost is at or below this.", low=0,
                                       low_open=True)
    target_bitops: float | None = option(None, "Stop once BitOPs are at or below this (<= 1: ratio to 32x32 "
                                         "bits).", low=0, low_open=True)
    target_size_mb: float | None = option(None, "Stop once the weights at their bits (the paper's model size, "
                                          "edge layers included) take at most this many MB; lam then trades "
                                          "against the paper cost.", low=0, low_open=True)
    target_file_kb: float | None = option(None, "Stop once the exported ONNX file (packed weights: 2 bit as INT2, "
                                          "3-4 bit as INT4, 5-8 bit as int8), as predicted from one file the "
                                          "start model is exported to, takes at most this many KB (1 KB = 1000 "
                                          "bytes).", low=0, low_open=True)
    target_latency_ms: float | None = option(None, "Spend at most this many ms per call on latency_engine at "
                                             "latency_batch, as predicted from a per-layer table measured once "
                                             "at the start (float is a format: a layer may go float where the "
                                             "budget pays for it); each step's graph is measured too.", low=0,
                                             low_open=True)
    target_latency_ratio: float | None = option(None, "Spend at most this multiple of the uniform 8-bit graph's "
                                                "latency on latency_engine at latency_batch (1.2: 20% over "
                                                "int8); every measured graph is timed beside that graph, so a "
                                                "drift of the machine moves both alike.", low=0, low_open=True)
    latency_engine: str = option("ort", "Engine of the latency table and measurements: ort or openvino.",
                                 choices=LATENCY_ENGINES)
    latency_batch: int = option(1, "Batch size of the latency table and measurements.", low=1)
    strategy: str = option("auto", "table (every knob scored alone, the best lowered), sets (the reference's "
                           "random sets), or allocate (a knapsack on a loss table; needs a target); auto: "
                           "allocate when a cost, BitOPs or file target is set, else table.", choices=STRATEGIES)
    table_data: str = option("calib", "Data of the allocate strategy's loss table: calib or train.",
                             check=lambda v: v in TABLE_DATA, why="must be calib or train")
    knobs: str = option("both", "What is searched: both, weights or activations.", choices=tuple(KNOB_KINDS))
    fixed_bits: int | None = option(None, "Bits of the kind not searched (with knobs weights or activations); "
                                    "default: as trained.", low=2, high=8)
    fit_budget: bool = option(True, "Near a target, lower only as many knobs as it needs (off: every candidate "
                              "lowers ratio of the knobs, as the reference).")
    final_epochs: int = option(8, "Extra fine-tuning epochs of the last step (the one that meets the targets).",
                               low=0)
    uniform_floor: bool = option(True, "At the step that meets the targets, the allocate strategy keeps every knob "
                                 "at or above a maximal uniform configuration within the targets (W2A4 at a 3-bit "
                                 "budget, say) and spends what it leaves: one allocation per such configuration, "
                                 "raced with select_final (off: the unconstrained allocation and its runners-up).")
    select_final: bool = option(True, "At the step that meets the targets, race the chosen bits against the "
                                "strategy's next-best bits and the uniform bits that meet the same targets "
                                "(equal fine-tuning, scored on the calibration split) and keep the winner.")
    select_candidates: int = option(3, "Most configurations in the final race.", low=2)
    select_epochs: int = option(1, "Fine-tuning epochs per round of the final race (the worse half leaves "
                                "after each round).", low=1)
    seed: int = option(0, "Seed: same seed, same search on the same machine and thread count.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    workers: int = option(0, "DataLoader worker processes.", low=0)
    compile: bool = option(False, "torch.compile the model for fine-tuning and evaluation (recompiled each "
                           "step).")

    def resolved(self) -> "SearchConfig":
        """Check every option and their combinations (``OptionError`` naming the option); fill the cost
        metric and the strategy."""
        check_options(self)
        given = self._check_combinations()
        follows = (FOLLOWS.get(given[0], "paper") if len(given) == 1 else "paper") if given else None
        chosen = LEGACY_METRICS.get(self.cost_metric, self.cost_metric) if self.cost_metric else None
        if follows and chosen and len(given) == 1 and chosen != follows:
            raise OptionError("cost_metric", f"{chosen} conflicts with {given[0]} (which trades against {follows})",
                              others=(given[0],))
        strategy = self.strategy
        if strategy == "auto":  # a budget to spend: the knapsack; else (or a random control) the table
            budget = bool(given) and self.target_size_mb is None
            strategy = "allocate" if budget and self.criterion != "random" else "table"
        return SearchConfig(**(asdict(self) | {"cost_metric": chosen or follows or "paper", "strategy": strategy}))

    def _check_combinations(self) -> list[str]:
        """The targets given (their option names), after checking the options that go together."""
        given = [name for name in TARGETS if getattr(self, name) is not None]
        if self.fixed_bits is not None and self.knobs == "both":
            raise OptionError("fixed_bits", "sets the knobs that are not searched: use it with knobs 'weights' "
                                            "or 'activations'", others=("knobs",))
        if self.strategy == "allocate" and (self.target_size_mb is not None or not given):
            raise OptionError("strategy", "allocate spends a budget: give target_cost, target_bitops, "
                                          "target_file_kb, target_latency_ms and/or target_latency_ratio (not "
                                          "target_size_mb)", others=TARGETS)
        if self.strategy == "allocate" and self.criterion == "random":
            raise OptionError("strategy", "allocate measures each knob's loss; the random control is strategy "
                                          "'table' with criterion 'random'",
                              others=("strategy", "criterion"))
        if self.target_latency_ms is not None and self.target_latency_ratio is not None:
            raise OptionError("target_latency_ratio", "is a latency budget too: give target_latency_ms or "
                                                      "target_latency_ratio, not both", others=("target_latency_ms",))
        if self.knobs == "activations" and {"target_cost", "target_size_mb", "target_file_kb"} & set(given):
            raise OptionError("knobs", "activations cannot reach a paper cost, size or file target: activations "
                                       "do not count in the paper cost, and narrower ones add clamps to the file")
        return given

    @property
    def needs_file(self) -> bool:
        """Whether the search predicts the exported file (a file target, or lam trading against it), which
        needs a file measured at the start (``proqha.cost.FileModel``)."""
        return self.target_file_kb is not None or LEGACY_METRICS.get(self.cost_metric, self.cost_metric) == "file"

    @property
    def needs_latency(self) -> bool:
        """Whether the search predicts latency (a latency target, or lam trading against it), which needs a
        table measured at the start (``proqha.latency_model.LatencyModel``); float is then a level."""
        return (self.target_latency_ms is not None or self.target_latency_ratio is not None
                or self.cost_metric == "latency")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
