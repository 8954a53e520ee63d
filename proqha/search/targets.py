"""A search's targets (paper cost, BitOPs, size, exported file): their values for a cost report, whether they are met, and
how far a candidate moves towards them."""

from __future__ import annotations

import math

from proqha.cost import CostReport
from proqha.search.config import SearchConfig

LATENCY_TOLERANCE = 0.10  # a latency budget counts as met within 10% under it (measurement noise of a graph)


def target_values(cfg: SearchConfig, report: CostReport) -> dict[str, tuple[float, float]]:
    """Each configured target's (value, limit) for ``report``: paper cost, BitOPs (a ratio to 32x32 bits
    when the limit is <= 1), size in MB, the predicted exported file in KB (``CostReport.file_bytes``: a
    weight lowered within its stored width, 8 to 7 bit say, leaves it where it was), the predicted latency in
    ms (``CostReport.latency_ms``) against ``latency_budget_ms``. Empty when no target is set."""
    values = {}
    if cfg.target_cost is not None:
        values["cost"] = (report.paper_cost, cfg.target_cost)
    if cfg.target_bitops is not None:
        values["bitops"] = (report.bitops_ratio if cfg.target_bitops <= 1 else report.bitops, cfg.target_bitops)
    if cfg.target_size_mb is not None:
        values["size_mb"] = (report.size_bytes / 1e6, cfg.target_size_mb)
    if cfg.target_file_kb is not None:
        values["file_kb"] = (report.file_bytes / 1e3, cfg.target_file_kb)
    if (budget := latency_budget_ms(cfg, report)) is not None:
        values["latency_ms"] = (report.latency_ms, budget)
    return values


def latency_budget_ms(cfg: SearchConfig, report: CostReport) -> float | None:
    """The latency budget in ms on the latency table's clock: ``target_latency_ms``, or
    ``target_latency_ratio`` times the uniform 8-bit graph's latency (``LatencyModel.reference``); None
    without a latency target (or, for a ratio, without a table)."""
    if cfg.target_latency_ms is not None:
        return cfg.target_latency_ms
    if cfg.target_latency_ratio is not None and report.latency_model is not None:
        return cfg.target_latency_ratio * report.latency_model.reference
    return None


def within(value: float, limit: float) -> bool:
    """Whether ``value`` meets ``limit`` (up to rounding)."""
    return value <= limit * (1 + 1e-12)


def target_met(cfg: SearchConfig, report: CostReport) -> bool:
    """Whether the model's cost satisfies every configured target (False when none is set)."""
    values = target_values(cfg, report)
    return bool(values) and all(within(v, limit) for v, limit in values.values())


def latency_over(cfg: SearchConfig, measured_ms: float, ratio: float) -> bool:
    """Whether a graph measured at ``measured_ms``, ``ratio`` times the uniform 8-bit graph timed beside it,
    misses the latency target (``target_latency_ms`` by its ms, ``target_latency_ratio`` by its ratio): over
    it by more than ``LATENCY_TOLERANCE`` (False without a latency target)."""
    if cfg.target_latency_ratio is not None:
        return ratio > cfg.target_latency_ratio * (1 + LATENCY_TOLERANCE)
    return cfg.target_latency_ms is not None and measured_ms > cfg.target_latency_ms * (1 + LATENCY_TOLERANCE)


def missed_targets(cfg: SearchConfig, row: dict) -> list[str]:
    """What a frontier ``row`` (a step of ``proqha search``) misses of the configured targets, one phrase each
    ("file 41.50 KB against --target-file-kb 1"): paper cost, BitOPs, size and the predicted file exactly, the
    latency as measured on the whole graph (``latency_over``)."""
    checks = [("cost", row["cost"], cfg.target_cost, "{:.4f}", "--target-cost"),
              ("BitOPs", row["bitops_ratio"] if (cfg.target_bitops or 0) <= 1 else row["bitops"], cfg.target_bitops,
               "{:.4g}", "--target-bitops"),
              ("size", row["size_bytes"] / 1e6, cfg.target_size_mb, "{:.4f} MB", "--target-size-mb"),
              ("file", row["file_bytes"] / 1e3, cfg.target_file_kb, "{:.2f} KB", "--target-file-kb")]
    missed = [f"{what} {form.format(value)} against {flag} {limit:g}" for what, value, limit, form, flag in checks
              if limit is not None and not within(value, limit)]
    ratio = row.get("latency_ratio", math.nan)
    if latency_over(cfg, row["latency_ms"], ratio):
        missed.append(f"latency {ratio:.3f}x the uniform 8-bit graph timed beside it against --target-latency-ratio "
                      f"{cfg.target_latency_ratio:g} ({row['latency_ms']:.4g} ms measured)"
                      if cfg.target_latency_ratio is not None else
                      f"latency {row['latency_ms']:.4g} ms measured against --target-latency-ms "
                      f"{cfg.target_latency_ms:g} (predicted {row['latency_ms_pred']:.4g} ms)")
    return missed


def budget_progress(cfg: SearchConfig, current: CostReport, candidate: CostReport) -> float:
    """How much of the remaining way to the targets a candidate covers: the sum, over targets not yet
    met, of (reduction / remaining gap); with no target, the reduction of ``cfg.cost_metric``."""
    now, then = target_values(cfg, current), target_values(cfg, candidate)
    if not now:
        return current.metric(cfg.cost_metric) - candidate.metric(cfg.cost_metric)
    return sum((value - then[name][0]) / (value - limit) for name, (value, limit) in now.items()
               if not within(value, limit))
