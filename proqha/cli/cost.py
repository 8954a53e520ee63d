"""`proqha cost`: per-layer MACs, weights and bits, and the paper's cost figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from proqha.cli.common import console, handle_errors, parse_int_tuple


@handle_errors
def cost(
    arch: Annotated[str, typer.Option(help="Architecture: a registered name or package.module:factory.")] = "resnet18",
    bits: Annotated[int, typer.Option(help="Uniform weight/activation bits of searchable layers (2..8, 32).")] = 8,
    bits_file: Annotated[Optional[Path], typer.Option(help="Per-layer bits (JSON BitConfig) instead of --bits.")] = None,
    edge_layers: Annotated[str, typer.Option(help="First conv and last linear: int8, float, or search.")] = "int8",
    input_size: Annotated[Optional[str], typer.Option(help="C,H,W (default: the architecture's own).")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes (default: the architecture's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print per-layer cost and the totals: paper cost, BitOPs, size."""
    from proqha.cost import arch_cost_report, format_ratio

    size = parse_int_tuple(input_size, "--input-size", 3) if input_size else None
    report = arch_cost_report(arch, size, num_classes, bits, edge_layers, bits_file)
    if as_json:
        console.print_json(json.dumps(report.to_dict() | {"arch": arch}))
        return
    table = Table(title=f"{arch} at {'x'.join(map(str, report.input_size))}")
    for col in ("layer", "kind", "MACs", "weights", "w", "a", "searched", "GBitOPs"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for layer in report.layers:
        table.add_row(layer.name, layer.kind, f"{layer.macs:,}", f"{layer.params:,}", str(layer.w_bits),
                      str(layer.a_bits), "yes" if layer.searchable else "no", f"{layer.bitops / 1e9:.3f}")
    console.print(table)
    t = report.totals()
    totals = Table(title="totals")
    for col in ("paper cost", "GMACs", "GBitOPs", "BitOPs ratio", "size (bytes)", "float size (bytes)"):
        totals.add_column(col, justify="right")
    totals.add_row(format_ratio(t["paper_cost"]), f"{t['macs'] / 1e9:.3f}", f"{t['gbitops']:.3f}",
                   format_ratio(t["bitops_ratio"]), f"{t['size_bytes']:,}", f"{t['float_size_bytes']:,}")
    console.print(totals)
