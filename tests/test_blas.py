"""The fast BLAS path: MLX binds to an optimized OpenBLAS and still computes the same matmuls.

BLAS choice is per process (libmlx.so binds its symbols once, when mlx is imported), so
every check runs in a fresh interpreter. Correctness only; speed is benchmarks/blas_matmul.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinygpt.runtime.blas import ENV, candidates
from tinygpt.runtime.device import expects_cpu_backend

INSTALLED = [str(p) for p in candidates() if p.is_file()]
needs_fast_blas = pytest.mark.skipif(
    not INSTALLED or sys.platform != "linux",
    reason="no optimized OpenBLAS on this machine (apt-get install libopenblas0-pthread)",
)
# The preload, its symbol binding and its fp32 tolerance (1e-4 against float64) are about
# MLX's CPU backend; where MLX computes on CUDA (cuBLAS, TF32-class fp32) nothing is
# preloaded: test_gpu_backend_preloads_nothing checks that instead.
cpu_backend = pytest.mark.skipif(
    not expects_cpu_backend(), reason="MLX computes on its GPU backend here; the OpenBLAS preload is a CPU-backend matter"
)

# Imports tinygpt.runtime first, as the product does, then checks mx.matmul against
# numpy in float64 on shapes that hit sgemm's edge cases (odd sizes, transposed views,
# batches).
PROBE = textwrap.dedent(
    """
    import json, sys, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if sys.argv[1] == "mlx-first":
            import mlx.core
        from tinygpt.runtime.blas import enable_fast_blas, _global_provider
        active = enable_fast_blas()
    import numpy as np
    import mlx.core as mx

    rng = np.random.default_rng(0)
    errors = []
    for m, k, n in [(1, 64, 64), (7, 33, 129), (256, 512, 128), (512, 512, 512)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        for got in (mx.array(a) @ mx.array(b), mx.array(a.T).T @ mx.array(b.T).T):
            got = np.array(got, dtype=np.float64)
            errors.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    x = rng.standard_normal((3, 40, 24)).astype(np.float32)
    w = rng.standard_normal((3, 24, 56)).astype(np.float32)
    got = np.array(mx.array(x) @ mx.array(w), dtype=np.float64)
    want = x.astype(np.float64) @ w.astype(np.float64)
    errors.append(float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
    print(json.dumps({
        "active": active,
        "again": enable_fast_blas(),
        "provider": _global_provider(),
        "max_rel_error": max(errors),
        "warnings": [str(w.message) for w in caught],
    }))
    """
)


def run_probe(tmp_path: Path, blas: str | None, mode: str = "normal", trace: bool = False) -> dict:
    """Run PROBE in a fresh interpreter with TINYGPT_BLAS=`blas` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    if blas is not None:
        env[ENV] = blas
    if trace:
        # glibc logs every symbol binding; the files show what libmlx.so really bound to.
        env["LD_DEBUG"] = "bindings"
        env["LD_DEBUG_OUTPUT"] = str(tmp_path / "ld")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if trace:
        result["bindings"] = _sgemm_bindings(tmp_path)
    return result


def _sgemm_bindings(tmp_path: Path) -> list[str]:
    """The libraries libmlx.so's cblas_sgemm was bound to, from the LD_DEBUG files."""
    targets = []
    for log in tmp_path.glob("ld.*"):
        for line in log.read_text(errors="replace").splitlines():
            if "libmlx.so" in line and "`cblas_sgemm'" in line:
                targets.append(line.split(" to ", 1)[1].split(" [", 1)[0])
    return targets


@cpu_backend
@needs_fast_blas
def test_fast_blas_is_found_and_matmul_matches_numpy(tmp_path):
    result = run_probe(tmp_path, None)
    assert result["active"] in INSTALLED
    assert result["again"] == result["active"]  # idempotent
    assert result["provider"] == result["active"]
    assert result["max_rel_error"] < 1e-4
    assert result["warnings"] == []


@cpu_backend
@needs_fast_blas
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="LD_DEBUG tracing is glibc's")
def test_libmlx_binds_cblas_sgemm_to_the_fast_blas(tmp_path):
    (tmp_path / "fast").mkdir()
    fast = run_probe(tmp_path / "fast", None, trace=True)
    assert fast["bindings"], "no cblas_sgemm binding of libmlx.so was traced"
    assert {Path(t).resolve() for t in fast["bindings"]} == {Path(fast["active"]).resolve()}

    (tmp_path / "off").mkdir()
    off = run_probe(tmp_path / "off", "off", trace=True)
    assert off["bindings"] and all("mlx_cpu.libs" in t for t in off["bindings"])


@cpu_backend
def test_off_keeps_the_reference_blas_and_stays_correct(tmp_path):
    result = run_probe(tmp_path, "off")
    assert result["active"] is None
    assert result["provider"] is None
    assert result["max_rel_error"] < 1e-4


@cpu_backend
@needs_fast_blas
def test_explicit_path_is_used(tmp_path):
    result = run_probe(tmp_path, INSTALLED[-1])
    assert result["active"] == INSTALLED[-1]
    assert Path(result["provider"]).resolve() == Path(INSTALLED[-1]).resolve()


@cpu_backend
def test_bad_path_warns_and_falls_back(tmp_path):
    result = run_probe(tmp_path, str(tmp_path / "no-such-libblas.so"))
    assert result["active"] is None
    assert any("no-such-libblas.so" in w for w in result["warnings"])
    assert result["max_rel_error"] < 1e-4


@cpu_backend
def test_mlx_imported_first_is_reported_not_hidden(tmp_path):
    result = run_probe(tmp_path, None, mode="mlx-first")
    assert result["active"] is None
    assert any("imported before" in w for w in result["warnings"])


def test_import_stays_mlx_free():
    code = "import sys, tinygpt.runtime, tinygpt.runtime.blas as b; b.blas_info(); print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
def test_gpu_backend_preloads_nothing_and_fp32_matmul_stays_close(tmp_path):
    """On the CUDA backend nothing is dlopen'ed and matmuls run in cuBLAS: fp32 results agree
    with float64 to TF32-class precision (METHOD.md: ~3e-4), not to the CPU's 1e-4."""
    result = run_probe(tmp_path, None)
    assert result["active"] is None and result["provider"] is None
    assert result["warnings"] == []
    assert result["max_rel_error"] < 2e-3
