"""Base models: the offline default (SmolLM2 from a GGUF), the cache and `resolve_model`.

Importing this package is cheap (no MLX, no gguf); conversion imports them when it runs.
`pull` lives in `tinygpt.runtime.models.pull` (not re-exported: it would shadow the module).
"""

from .cache import ModelNotFound
from .pull import DEFAULT_MODEL
from .resolve import resolve_model

__all__ = ["DEFAULT_MODEL", "ModelNotFound", "resolve_model"]
