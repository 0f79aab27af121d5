"""Reading and writing contracts: JSON on disk, msgpack where size matters.

Writes are atomic (temp file in the same directory, fsync, rename) so a crash never
leaves a half-written file behind.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TypeVar

import msgspec

from .base import Contract, ContractError

T = TypeVar("T", bound=Contract)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _known_version(kind: type) -> int | None:
    return next((f.default for f in msgspec.structs.fields(kind) if f.name == "schema_version"), None)


def _check_version(obj: T, source: str) -> T:
    # A newer writer may have changed meanings, not just added fields: refuse, don't guess.
    version = getattr(obj, "schema_version", None)
    if version is not None:
        known = _known_version(type(obj))
        if known is not None and version > known:
            raise ContractError(
                source, f"schema_version {version} is newer than this tinygpt understands ({known}); upgrade tinygpt"
            )
    return obj


def decode_json(data: bytes | str, kind: type[T], source: str) -> T:
    """Decode JSON into `kind`; errors name `source`, the field path and what was expected."""
    try:
        return _check_version(msgspec.json.decode(data, type=kind), source)
    except msgspec.ValidationError as e:
        raise ContractError(source, str(e)) from None
    except msgspec.DecodeError as e:
        raise ContractError(source, f"not valid JSON ({e})") from None


def decode_msgpack(data: bytes, kind: type[T], source: str) -> T:
    """Decode msgpack into `kind`, with the same error shape as `decode_json`."""
    try:
        return _check_version(msgspec.msgpack.decode(data, type=kind), source)
    except msgspec.ValidationError as e:
        raise ContractError(source, str(e)) from None
    except msgspec.DecodeError as e:
        raise ContractError(source, f"not valid msgpack ({e})") from None


def read_json(path: str | os.PathLike, kind: type[T]) -> T:
    """Load a JSON file into its contract. A missing file is a ContractError too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ContractError(str(path), "file not found") from None
    except IsADirectoryError:
        raise ContractError(str(path), "is a directory, expected a JSON file") from None
    return decode_json(data, kind, str(path))


def write_json(path: str | os.PathLike, obj: Contract) -> None:
    """Write a contract as indented JSON, atomically."""
    data = msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n"
    atomic_write_bytes(path, data)


def to_msgpack(obj: Contract) -> bytes:
    return msgspec.msgpack.encode(obj)


def read_any(path: str | os.PathLike, kind: type[T]) -> T:
    """Load a contract from `.json` or `.msgpack` / `.mpk` by the file's suffix."""
    path = Path(path)
    if path.suffix in (".msgpack", ".mpk"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ContractError(str(path), "file not found") from None
        return decode_msgpack(data, kind, str(path))
    return read_json(path, kind)
