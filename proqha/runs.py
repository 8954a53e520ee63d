"""Run directories: ``runs/<stage>-<n>``, one per invocation, and finding the latest of a stage."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
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
