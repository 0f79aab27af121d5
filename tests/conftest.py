"""Shared test plumbing: fixtures live in plugin modules named after what they provide."""

import tinygpt.runtime  # noqa: F401  (enables the fast BLAS before anything imports mlx)

pytest_plugins = ["tests.tiny_model", "tests.redis_server"]
