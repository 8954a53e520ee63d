"""The glibc malloc settings training applies (``proqha.malloc_tuning``): a step's freed activations are
reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proqha import malloc_tuning

CHILD = """
import ctypes, resource, sys
from proqha import malloc_tuning
libc = ctypes.CDLL("libc.so.6")
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
# glibc's starting point, fixed: a 128 KiB mmap threshold that does not adapt (the adaptive default
# reaches the same state or a better one depending on the heap's layout)
libc.mallopt(malloc_tuning.M_MMAP_THRESHOLD, 128 << 10)
if sys.argv[1] == "reuse":
    assert malloc_tuning.reuse_freed_memory()
def step():  # a training step's pattern: several 8 MiB blocks, 64-byte aligned as torch's CPU
    blocks = []  # allocator asks for them, written (touched), then all freed
    for _ in range(6):
        p = ctypes.c_void_p()
        assert libc.posix_memalign(ctypes.byref(p), 64, 8 << 20) == 0
        ctypes.memset(p, 1, 8 << 20)
        blocks.append(p)
    for p in blocks:
        libc.free(p)
for _ in range(5):  # the heap settles in the first steps (how many varies with the process's history)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _thp_always() -> bool:
    """Transparent huge pages on for every mapping: faults then come in 2 MiB pages, not 4 KiB ones."""
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.subprocess
@pytest.mark.skipif(not malloc_tuning.available(), reason="glibc's mallopt is not available on this platform")
@pytest.mark.skipif(_thp_always(), reason="transparent huge pages are always on: page faults are not 4 KiB")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """Ten steps fault in at most about one step's pages, where a threshold that leaves blocks to mmap
    faults in every step's. (glibc's adaptive defaults land anywhere between: here one to ten steps'.)"""
    pages_per_step = 6 * (8 << 20) // 4096
    mapped, reused = _page_faults("mapped"), _page_faults("reuse")
    assert mapped >= 9 * pages_per_step, (mapped, pages_per_step)
    assert reused <= 1.5 * pages_per_step, (reused, pages_per_step)


def test_training_tunes_malloc_on_a_cpu(monkeypatch):
    import torch

    from proqha import epoch_loop

    calls = []
    monkeypatch.setattr(epoch_loop, "reuse_freed_memory", lambda: calls.append(1))
    epoch_loop.training_net(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert calls == [1]
