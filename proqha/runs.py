"""Run folders: ``runs/<stage>-<n>``, one per invocation. ``RunDir`` names every file of a run (the only
place these names are spelled) and holds its lock; ``pick_checkpoint`` turns a run folder or a checkpoint
file into the checkpoint a later stage reads."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from proqha.errors import OptionError, ProqhaError
from proqha.files import atomic_write_json

DEFAULT_ROOT = Path("runs")
CONFIG_FILE = "config.json"  # every resolved option, and the run's stage
METRICS_FILE = "metrics.jsonl"  # one row per training epoch
COST_FILE = "cost.json"  # the cost report of the trained model
BITS_FILE = "bits.json"  # the per-layer bit config
FRONTIER_FILE = "frontier.csv"  # a search run's record, one row per completed step
LATENCY_TABLE_FILE = "latency_table.json"  # a search's per-layer latency table (proqha.deploy.latency_table)
SENSITIVITY_CSV = "sensitivity.csv"  # proqha sensitivity: one row per layer, knob and bits
SENSITIVITY_PNG = "sensitivity.png"  # its heat map
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"  # a train run's newest epoch
BEST_CHECKPOINT = "best.pt"  # a train run's most accurate epoch
STEP_CHECKPOINT = re.compile(r"^step-(\d{3,})\.pt$")  # a search run's step, step-NNN.pt


@dataclass(frozen=True)
class RunDir:
    """One run folder and the paths of its files (none is created by naming it)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        """config.json: every resolved option, and the run's stage."""
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def cost(self) -> Path:
        return self.path / COST_FILE

    @property
    def bits(self) -> Path:
        return self.path / BITS_FILE

    @property
    def frontier(self) -> Path:
        return self.path / FRONTIER_FILE

    @property
    def latency_table(self) -> Path:
        """latency_table.json: a latency-budgeted search's per-layer table, reused on resume."""
        return self.path / LATENCY_TABLE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / CHECKPOINTS / BEST_CHECKPOINT

    @property
    def export(self) -> Path:
        """What ``proqha export`` writes by default."""
        return self.path / "export"

    @property
    def bench(self) -> Path:
        """What ``proqha bench`` writes by default: bench.json, bench.csv and its plots."""
        return self.path / "bench"

    @property
    def sensitivity_csv(self) -> Path:
        """What ``proqha sensitivity`` writes by default: one row per layer, knob and bits."""
        return self.path / SENSITIVITY_CSV

    @property
    def sensitivity_png(self) -> Path:
        """The heat map ``proqha sensitivity`` draws beside it."""
        return self.path / SENSITIVITY_PNG

    def step_checkpoint(self, step: int) -> Path:
        """Where a search run keeps the checkpoint of ``step``."""
        return self.checkpoints / f"step-{step:03d}.pt"

    def step_bits(self, step: int) -> Path:
        """The bit config of a search run's ``step``."""
        return self.path / f"bits-step{step:03d}.json"

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """The step checkpoints of a search run, in step order."""
        if not self.checkpoints.is_dir():
            return []
        return sorted((int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := STEP_CHECKPOINT.match(p.name)))

    def write_config(self, config: dict[str, Any]) -> None:
        """config.json, written atomically."""
        atomic_write_json(self.config, config)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """``run_lock`` of this folder."""
        return run_lock(self.path)


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
MODEL_STAGES = ("train", "quantize")  # the runs whose model a search or export starts from


def latest_model_run(root: Path = DEFAULT_ROOT) -> Path | None:
    """The newer (by its config.json) of the latest train run and the latest quantize run, or None."""
    found = [run for run in (latest_run_dir(stage, root) for stage in MODEL_STAGES) if run is not None]
    config = lambda run: RunDir(run).config  # noqa: E731
    return max(found, key=lambda run: config(run).stat().st_mtime if config(run).is_file() else 0.0, default=None)


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


class Picked(NamedTuple):
    """A checkpoint, the run folder it belongs to, and its search step (None for a train checkpoint)."""

    checkpoint: Path
    run_dir: Path
    step: int | None


def pick_checkpoint(run: Path | str | None, step: int | None = None, best_under_cost: float | None = None, *,
                    start_option: str | None = None) -> Picked:
    """The checkpoint that ``run`` names: a checkpoint file, a train run (its last.pt) or a search run; by
    default the latest search run, else the newest train or quantize run (``latest_model_run``).

    A search run gives the step of its frontier.csv that ``step`` names, or the most accurate one at or below
    ``best_under_cost``, or its last (what export, bench and parity read). With ``start_option`` (the option
    that named ``run``, e.g. a search's ``source``), ``run`` is where new work starts: a search run gives its
    newest step checkpoint, logged or not, and the errors name that option.
    """
    run = _default_run() if run is None else Path(run)
    given = "step" if step is not None else "best_under_cost" if best_under_cost is not None else None
    if run.is_file():
        if given:
            raise OptionError(given, "needs a search run directory, not a checkpoint file")
        return Picked(run, run.parent, None)
    if not run.is_dir():
        if start_option:
            raise OptionError(start_option, f"{run}: no such checkpoint or run directory")
        raise ProqhaError(f"RUN not found: {run}")
    folder = RunDir(run)
    if start_option is None and folder.frontier.is_file():
        return _search_step(folder, step, best_under_cost)
    if given:
        raise OptionError(given, f"picks a step of a search run; {run} is not a search run")
    if folder.last.is_file():
        return Picked(folder.last, run, None)
    steps = folder.step_checkpoints() if start_option else []
    if steps:
        return Picked(steps[-1][1], run, steps[-1][0])
    if start_option:
        raise OptionError(start_option, f"{run}: the run has no checkpoint yet")
    raise ProqhaError(f"{run} has no checkpoint ({CHECKPOINTS}/{LAST_CHECKPOINT})")


def _default_run() -> Path:
    run = latest_run_dir("search", DEFAULT_ROOT) or latest_model_run(DEFAULT_ROOT)
    if run is None:
        raise ProqhaError(f"no search, train or quantize run under {DEFAULT_ROOT}/ (pass RUN)")
    return run


def _search_step(folder: RunDir, step: int | None, best_under_cost: float | None) -> Picked:
    """The step of a search run that ``step`` or ``best_under_cost`` names (default: its last logged step)."""
    from proqha.search.frontier import read_frontier  # search imports runs

    rows = read_frontier(folder.path)
    if step is not None and best_under_cost is not None:
        raise OptionError("best_under_cost", "chooses the step: give it or a step, not both")
    if best_under_cost is not None:
        fitting = [r for r in rows if r["cost"] <= best_under_cost + 1e-12]
        if not fitting:
            raise OptionError("best_under_cost", f"{best_under_cost}: no step of {folder.path} is that cheap "
                              f"(lowest {min(r['cost'] for r in rows):.4f})")
        step = max(fitting, key=lambda r: (r["test_top1"], -r["cost"]))["step"]
    done = dict(folder.step_checkpoints())
    step = rows[-1]["step"] if step is None else step
    if step not in done:
        raise OptionError("step", f"{step}: {folder.path} has steps {min(done)}..{max(done)}")
    return Picked(done[step], folder.path, step)
