"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A reader (or a process killed mid-write) sees either the old file or the new one, never half of one.
``check_writable`` refuses, before any work, an output path that could not be written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from proqha.errors import OptionError, ProqhaError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.chmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; a written file follows the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only folder: the previous file is still whole
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "; the previous version is intact" if path.exists() else ""
        raise ProqhaError(f"could not write {path}: {exc.strerror or exc}{kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a killed process leaves whole lines only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically with ``rows``."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn last line."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def check_writable(path: Path, option: str, folder: bool = False) -> None:
    """Refuse, before any work, a ``path`` (a file, or a ``folder``) that could not be written: a file in
    the way of a folder it needs, a folder where the file goes, or a nearest existing folder that is not
    writable (an OptionError naming ``option``, as the Python API spells it)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OptionError(option, f"{path} is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise OptionError(option, f"{path}: {existing} is a file, not a folder")
    target = existing if existing.is_dir() else existing.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise OptionError(option, f"{path}: {target} is not writable")
