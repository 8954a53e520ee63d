"""Fused CPU kernels of the quantizers (``fake_quant.c``), compiled on first use.

One pass each way over a multi-megabyte activation where aten operators take four forward and three
backward per quantizer: the part of a CPU QAT step that quantization adds (``benchmarks/qat_overhead.py``).
``forward``/``backward``: one activation quantizer; ``quant_add_*``: a residual add between three of
them; ``per_channel_*``: a weight quantizer (one grid per output channel), in one call where plain
operators take a dozen small ones.

The library is built with the system's C compiler for this CPU (``-march=native``) and cached under
``~/.cache/proqha/kernels`` keyed by the source, flags, compiler and CPU. Without a compiler, or with
``PROQHA_NATIVE_KERNELS=0`` (read once per process), ``library()`` is None and the quantizers use aten
operators and the plain math (one warning line when a build fails).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fake_quant.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC")
OPENMP = "-fopenmp"  # only where the kernels then share torch's thread pool (openmp_shared_with_torch)
SWITCH = "PROQHA_NATIVE_KERNELS"  # "0": never build or use them
BUILD_TIMEOUT_S = 120


def cache_dir() -> Path:
    """Where built kernels are kept: ``$XDG_CACHE_HOME/proqha/kernels`` (default ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "proqha" / "kernels"


def compiler() -> list[str] | None:
    """The command of the C compiler to build with: ``$CC`` split as a shell would (``ccache gcc``), else
    ``cc`` or ``gcc`` found on the PATH (None: none found). ValueError: a ``$CC`` with unbalanced quotes."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def compiler_version(command: list[str]) -> str:
    """What ``command --version`` prints (it names the compiler, and keys the build cache)."""
    return subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30).stdout


def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's feature list (x86 ``flags``, Arm ``Features``): -march=native code runs only on CPUs
    that have the same features, so it keys the build cache."""
    try:
        with open(cpuinfo) as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


class DlInfo(ctypes.Structure):
    """glibc's ``Dl_info`` (what ``dladdr`` fills in)."""

    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


def defining_file(handle: int, symbol: str) -> str | None:
    """The shared object that ``symbol`` resolves to as seen from the library ``handle`` (dlsym, then
    dladdr), or None where it does not resolve."""
    libc = ctypes.CDLL(None)
    libc.dlsym.restype, libc.dlsym.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
    address = libc.dlsym(handle, symbol.encode())
    info = DlInfo()
    if not address or not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.fname:
        return None
    return os.path.realpath(info.fname.decode())


def torch_openmp_file() -> str | None:
    """The shared object torch's own parallel loops call into (``GOMP_parallel`` as libtorch_cpu resolves
    it), or None where torch does not run on GNU OpenMP."""
    try:
        torch_cpu = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return defining_file(torch_cpu._handle, "GOMP_parallel")
    except (OSError, AttributeError):
        return None


def openmp_shared_with_torch(version: str) -> bool:
    """Whether a parallel build would share torch's thread pool: GCC (whose ``-fopenmp`` links
    ``libgomp.so.1``) and a torch whose ``GOMP_parallel`` lives in a file of that name, which the dynamic
    linker then reuses. Anything else (clang's libomp, Intel's runtime, a renamed copy) would start a
    second pool of spinning threads, so the kernels are built serial."""
    openmp = torch_openmp_file()
    return "Free Software Foundation" in version and openmp is not None and os.path.basename(openmp) == "libgomp.so.1"


def flags(version: str) -> tuple[str, ...]:
    """The compiler flags (``FLAGS``, and OpenMP where it shares torch's pool), given ``cc --version``."""
    return (*FLAGS, OPENMP) if openmp_shared_with_torch(version) else FLAGS


def build(command: list[str], out_dir: Path) -> Path:
    """Compile ``fake_quant.c`` with the compiler ``command`` into ``out_dir`` (unless built already) and
    return the library's path. The file appears atomically, so concurrent processes (torchrun workers) can
    share the cache. Raises OSError or subprocess.CalledProcessError when the build fails."""
    version = compiler_version(command)
    options = flags(version)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *options, version, cpu_signature()]).encode()).hexdigest()
    target = out_dir / f"fake_quant-{key[:16]}.so"
    if not target.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            subprocess.run([*command, *options, str(SOURCE), "-o", tmp], check=True, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


class GridArgs(ctypes.Structure):
    """A quantizer as the C kernels take it (``grid_t``); ``on`` 0: an input that passes unchanged."""

    _fields_ = [("inv", ctypes.c_float), ("s", ctypes.c_float), ("lo", ctypes.c_float), ("hi", ctypes.c_float),
                ("on", ctypes.c_int)]


def load(path: Path) -> ctypes.CDLL:
    """Open a built library and declare its functions' signatures."""
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fake_quant_forward.argtypes = [ptr, ptr, i64, GridArgs, ctypes.c_int]
    lib.fake_quant_forward.restype = None
    lib.fake_quant_backward.argtypes = [ptr, ptr, ptr, i64, GridArgs, ctypes.c_int]
    lib.fake_quant_backward.restype = ctypes.c_double
    grids = [GridArgs] * 3
    lib.quant_add_forward.argtypes = [ptr, ptr, ptr, i64, *grids, ctypes.c_int]
    lib.quant_add_forward.restype = None
    lib.quant_add_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, *grids, ctypes.POINTER(ctypes.c_double),
                                       ctypes.c_int]
    lib.quant_add_backward.restype = None
    f32, nt = ctypes.c_float, ctypes.c_int
    lib.per_channel_forward.argtypes = [ptr, ptr, i64, i64, ptr, f32, nt, nt, nt]
    lib.per_channel_forward.restype = None
    lib.per_channel_backward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, ptr, f32, f32, nt, nt, nt]
    lib.per_channel_backward.restype = None
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernels, or None where they cannot be had (switched off, not Linux, no compiler,
    a failed build: that one with a warning). Built once per machine, loaded once per process."""
    if os.environ.get(SWITCH) == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        command = compiler()
        return None if command is None else load(build(command, cache_dir()))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        lines = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
        warnings.warn(f"fused quantizer kernels unavailable, using aten operators: {lines[-1] if lines else exc!r}",
                      RuntimeWarning, stacklevel=2)
        return None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can take these tensors (float32 CPU tensors, and the library built)."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and library() is not None


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if its elements fill its memory in some order (contiguous, channels-last), else a contiguous
    copy: an elementwise kernel may then walk the memory and keep the layout."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _in_layout_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``ref`` (a dense tensor of the same shape); copied only if they differ."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def float32(v: float) -> float:
    """``v`` rounded to float32 (as a Python float). A float32 sum, product or quotient of float32 values
    taken in double and rounded once is the float32 result: double has over twice float32's precision."""
    return ctypes.c_float(v).value


def grid_args(scale: float, qmin: int, qmax: int) -> GridArgs:
    """``GridArgs`` of a per-tensor float32 grid of step ``scale`` (a float or a one-element tensor). The
    reciprocal is the float32 quotient 1/s, which is what ``1.0 / scale`` computes in ``forward_math``,
    taken on the host (no tensor operators)."""
    s = float32(float(scale))
    return GridArgs(float32(1.0 / s) if s else math.copysign(math.inf, s), s, qmin, qmax, 1)


def forward(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x * (1/s)), qmin, qmax) * s`` in one pass, in ``x``'s memory layout (``usable(x)``
    must hold; ``scale`` a float or a one-element tensor)."""
    x = _dense(x)
    y = torch.empty_like(x)  # the same strides as x
    library().fake_quant_forward(x.data_ptr(), y.data_ptr(), x.numel(), grid_args(scale, qmin, qmax),
                                 torch.get_num_threads())
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, scale: float, qmin: int, qmax: int) -> tuple[torch.Tensor, float]:
    """``kernels.backward_math`` in one pass: d/dx, and the scale sum (a float, summed in double)."""
    x = _dense(x)
    grad_x = torch.empty_like(x)
    g = _in_layout_of(grad, x)
    total = library().fake_quant_backward(g.data_ptr(), x.data_ptr(), grad_x.data_ptr(), x.numel(),
                                          grid_args(scale, qmin, qmax), torch.get_num_threads())
    return grad_x, total


PASS_THROUGH = GridArgs(0.0, 0.0, 0.0, 0.0, 0)  # an input without a quantizer


def quant_add_forward(a: torch.Tensor, b: torch.Tensor, grids: tuple[GridArgs, GridArgs, GridArgs]) -> torch.Tensor:
    """``Qo(Qa(a) + Qb(b))`` in one pass (``a``, ``b``: the same shape and layout, ``usable``)."""
    a = _dense(a)
    b = _in_layout_of(b, a)
    out = torch.empty_like(a)
    library().quant_add_forward(a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel(), *grids, torch.get_num_threads())
    return out


def quant_add_backward(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, grids: tuple[GridArgs, GridArgs, GridArgs]
                       ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """d/da, d/db and the three scale sums (qa, qb, qo) of ``quant_add_forward``, in one pass."""
    a = _dense(a)
    b, g = _in_layout_of(b, a), _in_layout_of(grad, a)
    grad_a, grad_b, sums = torch.empty_like(a), torch.empty_like(a), (ctypes.c_double * 3)()
    library().quant_add_backward(g.data_ptr(), a.data_ptr(), b.data_ptr(), grad_a.data_ptr(), grad_b.data_ptr(),
                                 a.numel(), *grids, sums, torch.get_num_threads())
    return grad_a, grad_b, list(sums)


def per_channel_forward(w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int, eps: float) -> torch.Tensor:
    """``kernels.per_channel_forward_math`` on the scales ``max(|alpha|, eps) / qmax`` (one per row,
    ``kernels.lsq_scale``'s float32 steps) in one call; ``usable(w, alpha)`` must hold."""
    w, alpha = _dense(w), alpha.contiguous()  # each row stays contiguous
    y = torch.empty_like(w)
    library().per_channel_forward(w.data_ptr(), y.data_ptr(), len(alpha), w.numel() // max(len(alpha), 1),
                                  alpha.data_ptr(), eps, qmin, qmax, torch.get_num_threads())
    return y


def per_channel_backward(grad: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,
                         grad_factor: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.per_channel_backward_math`` and then ``kernels.lsq_alpha_grad(sums * grad_factor, alpha,
    qmax)`` in one call, the same float32 steps: (d/dw, d/dalpha)."""
    w, alpha = _dense(w), alpha.contiguous()
    g = _in_layout_of(grad, w)
    grad_w, grad_alpha = torch.empty_like(w), torch.empty_like(alpha)
    library().per_channel_backward(g.data_ptr(), w.data_ptr(), grad_w.data_ptr(), grad_alpha.data_ptr(), len(alpha),
                                   w.numel() // max(len(alpha), 1), alpha.data_ptr(), eps, grad_factor, qmin, qmax,
                                   torch.get_num_threads())
    return grad_w, grad_alpha
