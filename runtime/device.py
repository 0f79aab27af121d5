"""Which MLX device a process computes on, what it is called, and how much of it it may take.

MLX picks its backend when it is installed: the plain Linux wheel is the CPU backend,
`mlx[cuda13]` (the `mlx-cuda-13` wheel) adds the CUDA backend, macOS has Metal. Whatever
is there, ``TINYGPT_DEVICE`` overrides the choice per process: ``cpu`` computes on the CPU
even where a GPU exists (e.g. a second small job beside the runtime), ``gpu`` insists on
the GPU and fails clearly where there is none, unset or ``auto`` takes the GPU when MLX
has one.

The CUDA backend computes on the first *visible* CUDA device; a process is pinned to a
card with ``CUDA_VISIBLE_DEVICES`` (set by `device_plan` for pipeline workers), the same
way as for any CUDA program. Several processes share one card (the runtime and a training
worker): each takes a memory budget (``TINYGPT_MEMORY_FRACTION`` of the card, set per role
by `device_plan`; `mx.set_memory_limit` + `mx.set_cache_limit`) so training can never take
the memory the runtime serves from.

`expects_cpu_backend()` answers without importing MLX (the OpenBLAS preload must happen
before MLX loads, and only matters for the CPU backend); everything else imports MLX.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

import msgspec

ENV = "TINYGPT_DEVICE"
MEMORY_ENV = "TINYGPT_MEMORY_FRACTION"
CHOICES = ("auto", "cpu", "gpu")
# MLX's CUDA wheels (`mlx[cuda13]` brings mlx-cuda-13; older releases named it mlx-cuda).
CUDA_DISTRIBUTIONS = ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda")
# Agent sessions (or eval requests) a client of one runtime keeps in flight, by the runtime's
# backend: 2 CPU cores gain little past ~8 sequences a step, where a GPU decodes its whole
# batch (up to 256, the runtime's DEFAULT_LIMITS) in about the time of one.
CLIENTS_AT_ONCE = {"cpu": 8, "gpu": 48}


class DeviceError(ValueError):
    """The device asked for is not there (e.g. TINYGPT_DEVICE=gpu without a GPU backend)."""


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The device a process computes on, as /health, /metrics and `tinygpt status` show it."""

    backend: str  # "gpu" | "cpu" (MLX's device type)
    api: str  # "CUDA" | "Metal" | "CPU"
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_bytes: int = 0  # the card's memory (0: not reported)
    dtype: str = "float32"  # the dtype the runtime serves in on this backend
    memory_limit_bytes: int = 0  # this process's budget (0: none set)
    visible: str | None = None  # CUDA_VISIBLE_DEVICES, when set

    def describe(self) -> str:
        """One line: `MLX gpu (CUDA) NVIDIA H100 80GB HBM3, bfloat16`."""
        line = f"MLX {self.backend} ({self.api}) {self.name}, {self.dtype}"
        if self.memory_limit_bytes:
            line += f", memory budget {self.memory_limit_bytes / 2**30:.1f} GiB"
            if self.memory_bytes:
                line += f" of {self.memory_bytes / 2**30:.0f} GiB"
        return line


def requested() -> str:
    """TINYGPT_DEVICE, checked: auto | cpu | gpu."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise DeviceError(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}")
    return value


def cuda_wheel_installed() -> bool:
    """Whether MLX's CUDA backend is installed (package metadata only; MLX is not imported)."""
    for dist in CUDA_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def expects_cpu_backend() -> bool:
    """Whether this process will compute on MLX's Linux CPU backend, decided without MLX.

    False on macOS (Metal and Accelerate) and where the CUDA wheel is installed and the
    GPU is not refused; a CUDA wheel on a machine without a card still falls back to the
    CPU later, but the OpenBLAS preload is only worth its dlopen where the CPU is the plan.
    """
    try:
        choice = requested()
    except DeviceError:
        return True  # the error is raised where the device is selected
    if choice == "cpu":
        return True
    return sys.platform == "linux" and not cuda_wheel_installed()


def gpu_available() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.is_available(mx.gpu))
    except (AttributeError, ValueError, RuntimeError):
        return False


def _api(mx) -> str:
    if getattr(mx, "cuda", None) is not None and mx.cuda.is_available():
        return "CUDA"
    if getattr(mx, "metal", None) is not None and mx.metal.is_available():
        return "Metal"
    return "GPU"


_selected: DeviceInfo | None = None


def select() -> DeviceInfo:
    """Make this process compute on the chosen device (idempotent); what it is.

    Raises DeviceError when TINYGPT_DEVICE=gpu and MLX has no GPU here.
    """
    global _selected
    import mlx.core as mx

    choice = requested()
    has_gpu = gpu_available()
    if choice == "gpu" and not has_gpu:
        raise DeviceError(
            f"{ENV}=gpu but MLX has no GPU backend here (on Linux: pip install 'tinygpt[cuda]', "
            "which brings mlx[cuda13]; then check nvidia-smi)"
        )
    use_gpu = has_gpu and choice != "cpu"
    device = mx.gpu if use_gpu else mx.cpu
    mx.set_default_device(device)
    try:
        props = mx.device_info(device)
    except (AttributeError, ValueError, RuntimeError):
        props = {}
    name = str(props.get("device_name") or props.get("architecture") or ("GPU" if use_gpu else "CPU"))
    memory = int(props.get("total_memory") or props.get("memory_size") or 0)
    limit = _selected.memory_limit_bytes if _selected is not None and _selected.backend == ("gpu" if use_gpu else "cpu") else 0
    _selected = DeviceInfo(
        backend="gpu" if use_gpu else "cpu",
        api=_api(mx) if use_gpu else "CPU",
        name=name,
        memory_bytes=memory,
        dtype=serving_dtype("gpu" if use_gpu else "cpu"),
        memory_limit_bytes=limit,
        visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    return _selected


def serving_dtype(backend: str) -> str:
    """bf16 on a GPU (half the bytes per token, tensor cores); fp32 on the CPU, where
    fp32 matmuls go through the optimized BLAS and bf16 has no fast kernels."""
    return "bfloat16" if backend == "gpu" else "float32"


def cast_for_device(model, info: DeviceInfo) -> str:
    """On a GPU, cast a loaded model's floating weights to bf16 (packed quantized weights
    stay as they are: `set_dtype` only touches floating arrays); on the CPU leave the
    stored dtype (fp32 for the converted default model). Returns the dtype now in use."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if info.backend == "gpu":
        model.set_dtype(getattr(mx, info.dtype))
    for _, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            return str(value.dtype).removeprefix("mlx.core.")
    return info.dtype


def memory_fraction(default: float | None) -> float | None:
    """TINYGPT_MEMORY_FRACTION (0 < f <= 1), else `default`."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DeviceError(f"{MEMORY_ENV}={raw!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise DeviceError(f"{MEMORY_ENV}={raw} must be in (0, 1]")
    return value


def apply_memory_budget(fraction: float | None) -> DeviceInfo:
    """Cap this process's MLX memory at `fraction` of the GPU (and its buffer cache at a
    quarter of that), so processes sharing one card cannot starve each other.

    A no-op on the CPU backend (the OS shares RAM) or when `fraction` is None.
    """
    global _selected
    info = select()
    if fraction is None or info.backend != "gpu" or not info.memory_bytes:
        return info
    import mlx.core as mx

    limit = int(info.memory_bytes * fraction)
    mx.set_memory_limit(limit)
    mx.set_cache_limit(limit // 4)
    _selected = msgspec.structs.replace(info, memory_limit_bytes=limit)
    return _selected


_PROBE = (
    "import msgspec, sys\n"
    "from tinygpt.runtime import device\n"
    "sys.stdout.write(msgspec.json.encode(device.select()).decode())\n"
)


def probe(timeout: float = 60.0) -> DeviceInfo | str:
    """The device a TinyGPT process would use here, asked of a fresh interpreter so the
    caller never imports MLX (`tinygpt status`); an error message when that fails."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"device probe failed: {e}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"device probe failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}"
    return msgspec.json.decode(done.stdout, type=DeviceInfo)


def current() -> DeviceInfo:
    """The selected device (selecting it first if nobody has)."""
    return _selected if _selected is not None else select()
