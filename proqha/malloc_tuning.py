"""glibc malloc settings for training on a CPU (``reuse_freed_memory``).

glibc's malloc serves a block of 32 MiB or less from its heap only once its adaptive mmap threshold has
grown past the block's size, and returns freed heap memory to the system as soon as 128 KiB lie free at
the top. A CPU training step allocates and frees the same multi-megabyte activations and gradients
hundreds of times, so by default many of them are fresh pages that the kernel must fault in and zero:
on ResNet-20 (batch 128, 2 cores) about a quarter of a step (``benchmarks/qat_overhead.py`` measures
it). Fixing the threshold at glibc's maximum and keeping freed memory makes each step reuse the last
step's memory, at the price of a process whose resident size does not shrink while it trains.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 1 << 30  # free heap kept before any is returned to the system


def available() -> bool:
    """Whether this process runs on glibc, whose ``mallopt`` ``reuse_freed_memory`` sets (nothing is set)."""
    return _glibc() is not None


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's malloc to serve blocks up to 32 MiB from a heap it keeps (once per process); returns
    whether the settings are in force (False off Linux/glibc, where nothing is changed)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # glibc only: musl has no gnu_get_libc_version, and its mallopt does nothing
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None

