"""A local registry's `index.json`: read it, add a package to it, under a file lock.

Writers (the publish stage on any worker, `tinygpt publish`) take `<registry>/.index.lock`
around read-modify-write and replace the file atomically, so readers (runtimes, the eval
gate, an HTTP server in front of the folder) always see a whole index, and two publishers
at once never lose each other's entry. The index lists only complete packages: an entry is
added after the package's lock exists.
"""

from __future__ import annotations

from pathlib import Path

from ..contracts.base import ContractError
from ..contracts.io import read_json, write_json
from ..contracts.specialist import RegistryEntry, RegistryIndex, SpecialistLock, SpecialistManifest
from ..filelock import FileLock
from .errors import PackageError, RegistryUnavailable
from .files import version_key

INDEX = "index.json"
LOCK_FILE = ".index.lock"


def read_index(root: Path) -> RegistryIndex:
    """The index of the registry folder `root` (empty when the folder has none yet)."""
    root = Path(root)
    if not (root / INDEX).is_file():
        if not root.is_dir():
            raise RegistryUnavailable(f"registry {root} does not exist (or is not a directory)")
        return RegistryIndex()
    try:
        return read_json(root / INDEX, RegistryIndex)
    except ContractError as e:
        raise RegistryUnavailable(f"registry {root}: unreadable index ({e})") from None


def entry_for(root: Path, package: Path, lock: SpecialistLock, manifest: SpecialistManifest) -> RegistryEntry:
    return RegistryEntry(
        name=lock.name, version=lock.version, digest=lock.digest,
        path=Path(package).resolve().relative_to(Path(root).resolve()).as_posix(),
        base_model=manifest.base_model, created_at=manifest.created_at,
        base_digest=manifest.base_digest, method=manifest.method,
    )


def _ordered(entries: list[RegistryEntry]) -> list[RegistryEntry]:
    return sorted(entries, key=lambda e: (e.name, version_key(e.version)))


def add_entry(root: Path, entry: RegistryEntry) -> bool:
    """Add `entry`; False when it is already there. Another digest for its version is refused."""
    root = Path(root)
    with FileLock(root / LOCK_FILE):
        index = read_index(root)
        same = next((e for e in index.specialists if e.name == entry.name and e.version == entry.version), None)
        if same is not None:
            if same.digest != entry.digest:
                raise PackageError(
                    f"{root / INDEX} already lists {entry.name}@{entry.version} with digest {same.digest[:12]}; "
                    f"versions are immutable: publish a new version"
                )
            return False
        write_json(root / INDEX, RegistryIndex(specialists=_ordered([*index.specialists, entry])))
        return True


def newest(entries: list[RegistryEntry]) -> RegistryEntry:
    """The newest entry: the one published last (ties: the highest version)."""
    return max(entries, key=lambda e: (e.created_at, version_key(e.version)))


def next_version(index: RegistryIndex, name: str) -> str:
    """One above the highest whole-number version of `name` ("1" for a new specialist)."""
    numbers = [int(e.version) for e in index.specialists if e.name == name and e.version.isdigit()]
    return str(max(numbers, default=0) + 1)
