"""The Typer app. Commands only parse options, call the library, and print."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from proqha.cli.bench import bench
from proqha.cli.common import fail, options
from proqha.cli.cost import cost
from proqha.cli.export import export
from proqha.cli.parity import parity_command
from proqha.cli.pipeline import pipeline
from proqha.cli.quantize import quantize
from proqha.cli.report import report
from proqha.cli.search import search
from proqha.cli.sensitivity import sensitivity
from proqha.cli.train import train

app = typer.Typer(name="proqha", help="ProQHA: progressive mixed-precision quantization, from QAT to deployment.",
                  add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of any error.")] = False) -> None:
    """ProQHA: progressive mixed-precision quantization, from QAT to deployment."""
    options.debug = debug


app.command()(train)
app.command()(quantize)
app.command()(search)
app.command()(report)
app.command()(export)
app.command("parity")(parity_command)
app.command()(bench)
app.command()(pipeline)
app.command()(cost)
app.command()(sensitivity)


def main() -> None:
    """Console entry point: usage errors (click's, which Typer may vendor) become one line, exit code 2."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click.ClickException, whichever click package Typer uses
        if options.debug:
            raise
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            sys.exit(fail(" ".join(exc.format_message().split())).exit_code)
        sys.exit(fail(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                      "(rerun with proqha --debug for the traceback)", 1).exit_code)
    sys.exit(code if isinstance(code, int) else 0)
