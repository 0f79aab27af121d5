"""An optimized BLAS for MLX's fp32 matmuls on Linux.

MLX's Linux CPU wheel links ``libmlx.so`` against a bundled *reference* BLAS and leaves
``cblas_sgemm`` & co. as undefined dynamic symbols. The dynamic linker resolves those in
the global scope first (the program, LD_PRELOAD, and every library dlopen'ed with
RTLD_GLOBAL) and only then in libmlx's own dependencies. So loading an optimized OpenBLAS
with RTLD_GLOBAL *before* ``mlx.core`` is first imported makes libmlx bind to it: fp32
matmul gets ~30x faster here (benchmarks/RESULTS.md). No LD_PRELOAD re-exec is needed
(checked with LD_DEBUG=bindings); once mlx is imported its symbols are bound: too late.
bf16 matmuls do not go through BLAS and are unaffected; macOS uses Accelerate already.
Only the CPU backend needs it: where MLX's CUDA wheel is installed (and TINYGPT_DEVICE is
not ``cpu``) nothing is loaded (runtime/device.py decides, without importing MLX).

``TINYGPT_BLAS`` picks the library: unset or ``auto`` searches the known locations,
a path loads that file (any BLAS exporting unprefixed ``cblas_sgemm``, e.g. MKL's
libmkl_rt.so), ``off`` keeps the reference BLAS. OpenBLAS reads ``OPENBLAS_NUM_THREADS``
and ``OPENBLAS_CORETYPE`` when it loads, so set those before the first call.

Install on Debian/Ubuntu: ``apt-get install libopenblas0-pthread``. PyPI has no
self-contained unprefixed OpenBLAS: numpy's and scipy-openblas prefix their symbols
(``scipy_cblas_sgemm``), and cmeel-openblas needs the system's libgfortran.so.5.
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
import warnings
from pathlib import Path

ENV = "TINYGPT_BLAS"
_OFF = frozenset({"off", "0", "no", "false", "none", "reference"})
_SYMBOL = "cblas_sgemm"  # the one libmlx.so needs most; prefixed builds lack it


def candidates() -> list[Path]:
    """Known locations of an unprefixed optimized OpenBLAS, best first."""
    arch = f"{os.uname().machine}-linux-gnu"
    libs = [Path("/usr/lib") / arch, Path("/usr/lib64")]
    return [
        # Debian/Ubuntu: the pthread build suits MLX (it calls BLAS from one thread);
        # the OpenMP build would start a second thread pool beside MLX's.
        libs[0] / "openblas-pthread/libopenblas.so.0",
        libs[0] / "openblas-openmp/libopenblas.so.0",
        libs[0] / "libopenblas.so.0",
        # Fedora/RHEL name their pthread build libopenblasp.
        libs[1] / "libopenblasp.so.0",
        libs[1] / "libopenblas.so.0",
        # conda environments and pip's cmeel-openblas (needs libgfortran5 on the system).
        Path(sys.prefix) / "lib/libopenblas.so.0",
        Path(sysconfig.get_path("platlib")) / "cmeel.prefix/lib/libopenblas.so.0",
        # Single-threaded, still far faster than the reference BLAS.
        libs[0] / "openblas-serial/libopenblas.so.0",
    ]


class _Dl_info(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _global_provider() -> str | None:
    """The file that provides cblas_sgemm in the process's global symbol scope.

    This is what libmlx.so will bind to when it loads; None means only the bundled
    reference BLAS (loaded RTLD_LOCAL as libmlx's own dependency) has it.
    """
    if sys.platform != "linux":
        return None
    process = ctypes.CDLL(None)
    try:
        func = getattr(process, _SYMBOL)
    except AttributeError:
        return None
    info = _Dl_info()
    if not process.dladdr(ctypes.cast(func, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return os.fsdecode(info.dli_fname) if info.dli_fname else None


# The outcome of the first enable_fast_blas() call; later calls return it unchanged.
_state: dict | None = None


def _load(path: Path) -> str | None:
    """dlopen `path` into the global scope; the reason it is unusable, or None if it is fine."""
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return f"cannot load {path}: {exc}"
    if not hasattr(lib, _SYMBOL):
        return f"{path} does not export {_SYMBOL} (a prefixed build, e.g. numpy's, cannot serve MLX)"
    return None


def _decide() -> dict:
    choice = os.environ.get(ENV, "").strip()
    if choice.lower() in _OFF:
        return {"active": None, "source": "off", "reason": f"{ENV}={choice}"}
    if sys.platform != "linux":
        return {"active": None, "source": "platform", "reason": f"MLX uses the system BLAS on {sys.platform}"}
    from .device import expects_cpu_backend

    if not expects_cpu_backend():
        # MLX's CUDA backend does its matmuls in cuBLAS; the CPU BLAS only serves the CPU backend.
        return {"active": None, "source": "backend", "reason": "MLX computes on its CUDA backend here (TINYGPT_DEVICE=cpu to use the CPU)"}
    if "mlx.core" in sys.modules:
        # libmlx.so is already bound; only an LD_PRELOAD'ed library can be in use.
        active = _global_provider()
        if active is None:
            warnings.warn(
                "tinygpt: mlx was imported before enable_fast_blas(), so MLX keeps its reference "
                "BLAS (fp32 matmul is far slower); import tinygpt.runtime before mlx",
                RuntimeWarning,
                stacklevel=3,
            )
        return {"active": active, "source": "preloaded" if active else "too-late", "reason": "mlx was imported first"}
    if choice and choice.lower() != "auto":
        path = Path(choice).expanduser()
        problem = _load(path) if path.is_file() else f"{ENV}={choice} is not a file"
        if problem:
            warnings.warn(f"tinygpt: {problem}; keeping MLX's reference BLAS", RuntimeWarning, stacklevel=3)
            return {"active": None, "source": "env", "reason": problem}
        return {"active": str(path), "source": "env", "reason": f"{ENV}={choice}"}
    preloaded = _global_provider()
    if preloaded:
        return {"active": preloaded, "source": "preloaded", "reason": "already in the global scope (LD_PRELOAD)"}
    problems = []
    for path in candidates():
        if not path.is_file():
            continue
        problem = _load(path)
        if problem is None:
            return {"active": str(path), "source": "auto", "reason": "found at a known location"}
        problems.append(problem)
    reason = "; ".join(problems) or "no optimized OpenBLAS found (apt-get install libopenblas0-pthread)"
    return {"active": None, "source": "auto", "reason": reason}


def enable_fast_blas() -> str | None:
    """Make MLX use an optimized BLAS; call before `mlx` is first imported.

    Returns the path of the active optimized BLAS, or None when MLX keeps its bundled
    reference BLAS (disabled, not Linux, none installed, or mlx imported too early).
    Idempotent and cheap (a few stats and one dlopen); never imports mlx.
    """
    global _state
    if _state is None:
        _state = _decide()
    return _state["active"]


def _openblas_details(path: str) -> dict:
    """Build, detected core and thread count, when the library is an OpenBLAS."""
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # already loaded: just a handle
    details = {}
    for key, fn in (("config", "openblas_get_config"), ("core", "openblas_get_corename")):
        if hasattr(lib, fn):
            getattr(lib, fn).restype = ctypes.c_char_p
            details[key] = getattr(lib, fn)().decode()
    if hasattr(lib, "openblas_get_num_threads"):
        details["threads"] = int(lib.openblas_get_num_threads())
    return details


def blas_info() -> dict:
    """What `tinygpt status` shows: the active BLAS, why, and OpenBLAS's build details.

    Enables the fast BLAS first if nobody has yet (same rules as `enable_fast_blas`).
    """
    enable_fast_blas()
    info = dict(_state)
    if info["active"]:
        info.update(_openblas_details(info["active"]))
    return info


def reference_blas_warning() -> str | None:
    """A one-line warning with the fix when MLX runs on its reference BLAS on Linux, else None.

    For screens (`tinygpt up`): fp32 decode there is ~3x slower and LoRA training far slower.
    """
    enable_fast_blas()
    if _state["active"] or _state["source"] == "platform":
        return None
    if _state["source"] == "off":
        return f"MLX uses its reference BLAS ({_state['reason']}): fp32 decode ~3x slower; unset {ENV} for the fast one"
    return (
        "MLX uses its reference BLAS (fp32 decode ~3x slower, training far slower): "
        f"apt-get install libopenblas0-pthread, or point {ENV} at an optimized libopenblas.so.0, and restart"
    )
