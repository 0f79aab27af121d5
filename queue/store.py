"""The pipeline's content-addressed file store and path handling.

Enqueueing copies a trajectory file to ``<home>/pipeline/objects/<sha[:2]>/<sha>.<fmt>``
before any job runs: the runtime may keep appending to its own file, but every stage
reads exactly the bytes whose hash named the job. Paths inside the TinyGPT home travel
relative to it, so a worker on another host that mounts the same directory under a
different path (its own TINYGPT_HOME) still finds them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tinygpt.runtime import paths
from tinygpt.runtime.contracts import atomic_write_bytes

HOME_PREFIX = "@home/"


def objects_dir() -> Path:
    return paths.subdir("pipeline") / "objects"


def datasets_dir() -> Path:
    """Where datasets are built: ``<home>/datasets/<name>/``."""
    return paths.subdir("datasets")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str:
    """"json" when the bytes start like a JSON object, else "msgpack" (decoding decides)."""
    return "json" if data.lstrip()[:1] == b"{" else "msgpack"


def object_path(sha: str, fmt: str) -> Path:
    return objects_dir() / sha[:2] / f"{sha}.{fmt}"


def put_bytes(data: bytes, *, fsync: bool = True) -> tuple[str, Path]:
    """Store `data` under its sha256 (once); returns (sha256, stored path).

    Written to a temp name and renamed, so a reader sees the whole file or none. With
    `fsync=False` the caller syncs (`sync()`) before it enqueues jobs naming the file:
    one sync for a bulk import instead of one per file (~3 ms each on a plain disk).
    """
    sha = sha256_bytes(data)
    dest = object_path(sha, sniff_format(data))
    if dest.exists():
        return sha, dest
    if fsync:
        atomic_write_bytes(dest, data)
        return sha, dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return sha, dest


def put_file(path: str | os.PathLike, *, fsync: bool = True) -> tuple[str, Path]:
    """Copy a trajectory file into the store; a missing file raises FileNotFoundError."""
    return put_bytes(Path(path).read_bytes(), fsync=fsync)


def sync() -> None:
    """Flush every file written with `fsync=False` to disk."""
    os.sync()


def to_ref(path: str | os.PathLike) -> str:
    """`path` as it travels in a job: ``@home/...`` when inside the TinyGPT home."""
    path = Path(path).resolve()
    try:
        return HOME_PREFIX + path.relative_to(paths.home().resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve(ref: str) -> Path:
    """The local path of a job's file reference (see `to_ref`)."""
    if ref.startswith(HOME_PREFIX):
        return paths.home() / ref[len(HOME_PREFIX) :]
    return Path(ref)
