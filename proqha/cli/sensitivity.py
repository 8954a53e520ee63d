"""`proqha sensitivity [RUN]`: which layers hurt. Parses ``SensitivityConfig``'s options and hands them to
``cli.sensitivity_report.sensitivity_and_report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import declared_option, handle_errors
from proqha.errors import OptionError
from proqha.options import declared, default
from proqha.search.sensitivity import SensitivityConfig as S

BITS = ",".join(map(str, default(S, "bits")))


def parse_bits(text: str) -> tuple[int, ...]:
    """``"8,6,4,2"`` as integers; anything else is an OptionError on ``bits``."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise OptionError("bits", f"must be comma-separated bits in 2..8, got {text!r}") from None


@handle_errors
def sensitivity(
    run: Annotated[Optional[Path], typer.Argument(help=declared(S, "run").help)] = None,
    bits: Annotated[str, declared_option(S, "bits")] = BITS,
    split: Annotated[str, declared_option(S, "split")] = default(S, "split"),
    samples: Annotated[Optional[int], declared_option(S, "samples")] = default(S, "samples"),
    batch_size: Annotated[int, declared_option(S, "batch_size")] = default(S, "batch_size"),
    out: Annotated[Optional[Path], declared_option(S, "out")] = default(S, "out"),
    top: Annotated[int, declared_option(S, "top")] = default(S, "top"),
    rank_by: Annotated[str, declared_option(S, "rank_by")] = default(S, "rank_by"),
    device: Annotated[str, declared_option(S, "device")] = default(S, "device"),
) -> None:
    """Measure the loss and top-1 each layer's weights and activations cost at lower bits, one at a time;
    print the worst and write sensitivity.csv and sensitivity.png."""
    from proqha.cli.sensitivity_report import sensitivity_and_report

    cfg = S(run=run, bits=parse_bits(bits), split=split, samples=samples, batch_size=batch_size, out=out, top=top,
            rank_by=rank_by, device=device)
    sensitivity_and_report(cfg.resolved())
