"""Shared test plumbing: fixtures live in plugin modules named after what they provide."""

import tinygpt.runtime  # noqa: F401  (enables the fast BLAS before anything imports mlx)

pytest_plugins = ["tests.tiny_model", "tests.redis_server"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where MLX has a GPU backend (and TINYGPT_DEVICE allows it)."""
    import pytest

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from tinygpt.runtime.device import gpu_available, requested

    if requested() != "cpu" and gpu_available():
        return
    skip = pytest.mark.skip(reason="needs MLX's GPU backend (on Linux: pip install -e '.[cuda]' on a CUDA machine)")
    for item in gpu_items:
        item.add_marker(skip)
