"""TinyGPT runtime: the OpenAI-compatible server, the `tinygpt` command and the shared contracts."""

# Before anything imports mlx: libmlx.so binds its cblas_* symbols when it loads, and an
# optimized BLAS in the global scope by then makes fp32 matmuls ~30x faster on Linux.
# Cheap (one dlopen, no mlx import); TINYGPT_BLAS=off opts out. See runtime/blas.py.
from tinygpt.runtime.blas import enable_fast_blas as _enable_fast_blas

_enable_fast_blas()
