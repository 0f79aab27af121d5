"""What can go wrong with registries and packages, as exceptions callers can act on.

All are `ValueError`s whose message names the specialist, the registry and the file.
"""

from __future__ import annotations


class RegistryError(ValueError):
    """Base: a registry, package or pin that cannot be used as it is."""


class PackageError(RegistryError):
    """A package that cannot be built or read (bad name, missing files, a version reused)."""


class IntegrityError(PackageError):
    """A file whose sha256 is not what the package lock (or the pin) says: refused."""


class RegistryUnavailable(RegistryError):
    """A registry that cannot be reached or read right now (down, missing, not a registry)."""


class NotFound(RegistryError):
    """A pin that no configured registry can satisfy."""
