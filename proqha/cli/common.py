"""What every command shares: consoles, the one-line error convention, option parsing helpers."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from proqha.errors import OptionError, ProqhaError
from proqha.files import check_writable
from proqha.options import declared
from proqha.runs import DEFAULT_ROOT, RunDir, latest_run_dir, next_run_dir

# Piped output (no terminal to measure) gets wide tables rather than truncated layer names.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])
FILESYSTEM_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
                       errno.EDQUOT, errno.ENAMETOOLONG}  # an OSError with these is one line and exit 2


class _Options:
    debug = False  # set by `proqha --debug`: errors keep their traceback


options = _Options()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; return the Exit to raise."""
    err_console.print(f"error: {message}", markup=False)
    return typer.Exit(code)


def interrupted(stage: str, run_dir: Path, progress_file: Path, saved: str) -> typer.Exit:
    """The Exit (code 130) of a run stopped by Ctrl-C, telling what was saved and the command that goes on
    (``progress_file``: where the first completed piece of work is written; ``saved``: what it holds)."""
    resume = f"proqha {stage} --resume --run-dir {run_dir}"
    if not RunDir(run_dir).config.is_file():
        return fail("interrupted before the run started; nothing was saved", 130)
    if not progress_file.is_file():
        return fail(f"interrupted before anything was saved; to start the run again: {resume}", 130)
    return fail(f"interrupted; {saved}: {resume}", 130)


def handle_errors(fn: F | None = None, *, flags: dict[str, str] | None = None) -> Any:
    """Turn ProqhaError into one stderr line and exit code 2, Ctrl-C into exit 130 (no traceback). An
    OptionError is printed with its flag: ``flags[option]`` where the command spells the library's option
    otherwise (``@handle_errors(flags={"engines": "--engine"})``), else ``--`` and the option's name."""
    if fn is None:
        return functools.partial(handle_errors, flags=flags)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProqhaError as exc:
            if options.debug:
                raise
            raise fail(_with_flag(exc, flags or {})) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except OSError as exc:  # the machine refused a path: the user's to fix, not a bug of ours
            if options.debug or exc.errno not in FILESYSTEM_REFUSALS:
                raise
            raise fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)) from None

    return wrapper


def _with_flag(exc: ProqhaError, flags: dict[str, str]) -> str:
    """The message of ``exc`` as the command line says it."""
    if not isinstance(exc, OptionError):
        return str(exc)
    return exc.with_flag(flags)


def parse_int_tuple(text: str, option: str, length: int | None = None) -> tuple[int, ...]:
    """Parse ``"3,224,224"``; a bad value is a ProqhaError naming ``option``."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ProqhaError(f"{option} must be comma-separated integers, got {text!r}") from None
    if (length is not None and len(values) != length) or any(v <= 0 for v in values):
        raise ProqhaError(f"{option} must be {length or 'some'} positive integers, got {text!r}")
    return values


C = TypeVar("C")


def options_given(ctx: typer.Context | None, exclude: set[str]) -> list[str]:
    """The options of the command ``ctx`` runs that were typed on its command line (or set by environment),
    other than ``exclude`` (parameter names), as their flags."""
    if ctx is None:
        return []
    return [p.opts[0] for p in ctx.command.params if p.name not in exclude and p.name is not None
            and getattr(ctx.get_parameter_source(p.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")]


def params_given(ctx: typer.Context | None) -> set[str]:
    """The parameter names of the options typed on ``ctx``'s command line (or set by environment)."""
    if ctx is None:
        return set()
    return {p.name for p in ctx.command.params if p.name is not None
            and getattr(ctx.get_parameter_source(p.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}


def resume_config(stage: str, config_cls: type[C], run_dir: Path | None, ctx: typer.Context | None = None,
                  **overrides: Any) -> tuple[C, Path]:
    """The saved options of a run to resume (default: the latest of ``stage``), with overrides left at None
    ignored; ProqhaError when there is no such run, or when ``ctx``'s command line sets another option."""
    given = options_given(ctx, exclude={"run_dir", "resume", *overrides})
    if given:
        raise ProqhaError(f"--resume continues a run with the options it was started with; {given[0]} cannot change "
                          f"them (leave it out, or start a new run)")
    run_dir = run_dir or latest_run_dir(stage, DEFAULT_ROOT)
    if run_dir is None:
        raise ProqhaError(f"--resume: no {stage} run found under {DEFAULT_ROOT}/ (pass --run-dir)")
    config_file = RunDir(run_dir).config
    if not config_file.is_file():
        raise ProqhaError(f"--resume: {run_dir} is not a {stage} run (no config.json)")
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProqhaError(f"--resume: cannot read {config_file}: {exc}") from None
    if saved.get("stage") != stage:
        raise ProqhaError(f"--resume: {run_dir} is a {saved.get('stage', 'unknown')} run, not a {stage} run")
    names = {f.name for f in dataclasses.fields(config_cls)}
    if "int8_kernels" in names:  # a run saved before these options trained on the grids they name
        from proqha.quant.grid import LEGACY_QUANT

        saved = {k: v for k, v in LEGACY_QUANT.items() if k in names} | saved
    cfg = config_cls(**{k: v for k, v in saved.items() if k in names})
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg.resolved(), run_dir


def fresh_run_dir(stage: str, run_dir: Path | None) -> Path:
    """``run_dir``, or the next ``runs/<stage>-<n>``; an existing non-empty folder is a ProqhaError."""
    run_dir = run_dir or next_run_dir(stage, DEFAULT_ROOT)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ProqhaError(f"--run-dir {run_dir} already exists; use --resume or another --run-dir")
    check_writable(run_dir, "run_dir", folder=True)
    return run_dir


def declared_option(config_cls: type, name: str, *flags: str, **extra: Any) -> Any:
    """The Typer option of a config field, with the help text declared on the field (``proqha.options``);
    use it with the field's declared default: ``lr: Annotated[float, declared_option(C, "lr")] = default(C, "lr")``."""
    return typer.Option(*flags, help=declared(config_cls, name).help, **extra)
