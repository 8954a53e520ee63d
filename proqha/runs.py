"""Run directories: ``runs/<stage>-<n>``, one per invocation, and finding the latest of a stage."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from proqha.errors import ProqhaError

DEFAULT_ROOT = Path("runs")


def _numbered(stage: str, root: Path) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(stage)}-(\d+)$")
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return sorted(found)


def next_run_dir(stage: str, root: Path = DEFAULT_ROOT) -> Path:
    """The next unused ``<root>/<stage>-<n>`` (not created)."""
    runs = _numbered(stage, Path(root))
    return Path(root) / f"{stage}-{(runs[-1][0] + 1) if runs else 1}"


def latest_run_dir(stage: str, root: Path = DEFAULT_ROOT) -> Path | None:
    """The highest-numbered ``<root>/<stage>-<n>`` that exists, or None."""
    runs = _numbered(stage, Path(root))
    return runs[-1][1] if runs else None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the duration: a second process writing into the same run is refused
    with one line instead of interleaving its files. The lock dies with its process (flock)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise ProqhaError(f"run directory {run_dir} is in use (pid {owner}); wait for it or use another") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_error(run_dir: Path, first_saved: Path, keep: bool = False, made_here: bool = True) -> Iterator[None]:
    """Remove what a new run wrote into ``run_dir`` when its work fails (any error but Ctrl-C) before
    ``first_saved`` is written: a run with nothing saved must not become the latest run a later command
    picks up. ``made_here``: the folder was created for this run (else it was an empty one the user named:
    only its contents go). ``keep``: leave everything (a resumed run, another rank's folder)."""
    try:
        yield
    except Exception:
        if not keep and not Path(first_saved).exists():
            if made_here:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for child in Path(run_dir).iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise


def pick_checkpoint(run: Path | None, step: int | None = None, best_under_cost: float | None = None
                    ) -> tuple[Path, Path, int | None]:
    """(checkpoint, run directory, search step) that RUN names for export, bench and parity: a search run
    (its last step, ``step``, or its most accurate step at or below ``best_under_cost``), a train run (its
    last checkpoint), or a checkpoint file; default the latest search run, else the latest train run."""
    from proqha.search.frontier import FRONTIER_FILE, read_frontier, step_checkpoints  # search imports runs
    if run is None:
        run = latest_run_dir("search", DEFAULT_ROOT) or latest_run_dir("train", DEFAULT_ROOT)
        if run is None:
            raise ProqhaError(f"no train or search run under {DEFAULT_ROOT}/ to export (pass RUN)")
    if run.is_file():
        if step is not None or best_under_cost is not None:
            raise ProqhaError("--step/--best-under-cost need a search run directory, not a checkpoint file")
        return run, run.parent, None
    if not run.is_dir():
        raise ProqhaError(f"RUN not found: {run}")
    if (run / FRONTIER_FILE).is_file():
        rows = read_frontier(run)
        if step is not None and best_under_cost is not None:
            raise ProqhaError("give --step or --best-under-cost, not both")
        if best_under_cost is not None:
            fitting = [r for r in rows if r["cost"] <= best_under_cost + 1e-12]
            if not fitting:
                raise ProqhaError(f"--best-under-cost {best_under_cost}: no step of {run} is that cheap "
                                  f"(lowest {min(r['cost'] for r in rows):.4f})")
            step = max(fitting, key=lambda r: (r["test_top1"], -r["cost"]))["step"]
        done = dict(step_checkpoints(run))
        step = rows[-1]["step"] if step is None else step
        if step not in done:
            raise ProqhaError(f"--step {step}: {run} has steps {min(done)}..{max(done)}")
        return done[step], run, step
    if step is not None or best_under_cost is not None:
        raise ProqhaError(f"--step/--best-under-cost: {run} is not a search run")
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        raise ProqhaError(f"{run} has no checkpoint (checkpoints/last.pt)")
    return last, run, None
