"""Run directories: ``runs/<stage>-<n>``, one per invocation, and finding the latest of a stage."""

from __future__ import annotations

import re
from pathlib import Path

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
