"""File plumbing shared by the registry modules: hashing, names, safe paths, locks, staging."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ..contracts.project import NAME_PATTERN
from .errors import PackageError

_NAME = re.compile(NAME_PATTERN)
# Versions become folder names and "name@version" model ids: no '/', '@' or leading dot.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
_VERSION = re.compile(VERSION_PATTERN)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PackageError(f"invalid specialist name {name!r}: lower-case a-z, 0-9, '.', '_', '-' (at most 64)")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version) or ".." in version:
        raise PackageError(f"invalid version {version!r}: letters, digits, '.', '_', '+', '-' (at most 64), e.g. 3 or 1.2.0")
    return version


def safe_relative(path: str, what: str) -> PurePosixPath:
    """`path` as a relative POSIX path that stays inside its folder, or PackageError.

    Indexes and locks come from registries we do not control: a path like
    "../../.bashrc" must never make us read or write outside the package.
    """
    p = PurePosixPath(path)
    if not path or p.is_absolute() or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise PackageError(f"{what}: unsafe path {path!r} (must be relative, without '..')")
    return p


def version_key(version: str) -> tuple:
    """Natural order for versions: "10" after "9", "1.10" after "1.9"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.+-]", version))


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder next to the destination, so the final rename is atomic."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    # mkdtemp makes it private (0700); a package is readable like any registry entry.
    path.chmod(0o755)
    return path


def fsync_tree(folder: Path) -> None:
    """Flush every file in `folder` and the folder itself, before it is renamed into place."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(folder: Path) -> None:
    """Remove a folder; renamed aside first so nobody sees it half-deleted under its name."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.trash-", dir=folder.parent))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def move_into_place(staged: Path, dest: Path) -> bool:
    """Rename `staged` to `dest`; False (and `staged` removed) when `dest` appeared meanwhile."""
    try:
        os.rename(staged, dest)
    except OSError:
        if dest.exists():
            shutil.rmtree(staged, ignore_errors=True)
            return False
        raise
    return True
