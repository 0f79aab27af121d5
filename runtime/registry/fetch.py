"""Registries as sources, and pulling a package into the local cache with every sha256 checked.

A registry is a directory, a `file://` URL or an `http(s)://` base URL; each has an
`index.json` at its root and packages at the paths the index names. A plain `http://`
registry on another host cannot be trusted by itself (index, lock and files come from
one unauthenticated server, so a lock check proves nothing): pulling from one needs
the pin's `sha256`, or the project's explicit `allow_insecure_http`. Loopback `http://`
is this machine's own server and is trusted like a directory. Pulled packages live
in `<home>/specialists/<name>/<version>/`, an exact, verified copy: later changes in
the registry never reach what a runtime has loaded.

A pull downloads into a hidden staging folder, hashing every file as it streams and
stopping as soon as a file outgrows the size its lock declares (or `MAX_FILE_BYTES` for
locks without sizes), and only a package whose every file matches its lock (and whose lock matches the index's
digest and the pin's sha256) is renamed into the cache. Anything else raises
IntegrityError and leaves the cache, and whatever the runtime serves, as it was.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, unquote, urlsplit

import msgspec

from .. import paths
from ..hosts import is_loopback
from ..contracts.base import ContractError
from ..contracts.io import decode_json, write_json
from ..contracts.evals import GateResult
from ..contracts.specialist import RegistryEntry, RegistryIndex, SpecialistLock
from .errors import IntegrityError, PackageError, RegistryError, RegistryUnavailable
from .files import check_name, check_version, discard, fsync_tree, move_into_place, safe_relative, staging_dir
from .index import INDEX, read_index
from .package import EVAL_REPORT, LOCK, check_lock, gate_problem, read_manifest, verify_package

log = logging.getLogger("tinygpt.registry")

# index.json and lock.json are small; a registry sending more is broken or hostile.
MAX_METADATA_BYTES = 16 << 20
# The cap on one file of a package whose lock declares no sizes (older locks).
MAX_FILE_BYTES = 8 << 30
_CHUNK = 1 << 20


def cache_root() -> Path:
    """`<home>/specialists`: verified copies of pulled packages."""
    return paths.subdir("specialists")


def cached_dir(name: str, version: str) -> Path:
    return cache_root() / check_name(name) / check_version(version)


class Source(Protocol):
    """One configured registry; `label` is how messages name it."""

    label: str

    def index(self) -> RegistryIndex: ...

    def open(self, rel: str) -> BinaryIO:
        """A binary stream of the file at `rel` (relative to the registry root)."""
        ...


class DirSource:
    # Files on this machine: what the lock says is what we read.
    authenticated = True

    def __init__(self, root: Path, label: str | None = None):
        self.root = Path(root)
        self.label = label or str(root)

    def index(self) -> RegistryIndex:
        return read_index(self.root)

    def open(self, rel: str):
        path = self.root / safe_relative(rel, self.label)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise PackageError(f"registry {self.label}: {rel} is missing") from None
        except OSError as e:
            raise RegistryUnavailable(f"registry {self.label}: cannot read {rel} ({e})") from None


class HttpSource:
    def __init__(self, base_url: str, timeout: float = 30.0, *, allow_insecure_http: bool = False):
        self.base = base_url.rstrip("/")
        self.label = self.base
        self.timeout = timeout
        parts = urlsplit(self.base)
        # TLS authenticates the server; loopback is this machine; anything else must be opted into.
        self.authenticated = parts.scheme.lower() == "https" or is_loopback(parts.hostname or "") or allow_insecure_http

    def _get(self, rel: str):
        url = f"{self.base}/{quote(rel)}"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "tinygpt"}), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise PackageError(f"registry {self.label}: {rel} not found (HTTP 404)") from None
            raise RegistryUnavailable(f"registry {self.label}: GET {rel} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryUnavailable(f"registry {self.label} is unreachable: {reason}") from None

    def index(self) -> RegistryIndex:
        try:
            with self._get(INDEX) as r:
                data = r.read(MAX_METADATA_BYTES + 1)
        except PackageError:
            raise RegistryUnavailable(f"registry {self.label} has no {INDEX} (HTTP 404): not a registry") from None
        except OSError as e:
            raise RegistryUnavailable(f"registry {self.label}: reading {INDEX} failed ({e})") from None
        if len(data) > MAX_METADATA_BYTES:
            raise RegistryUnavailable(f"registry {self.label}: {INDEX} is larger than {MAX_METADATA_BYTES} bytes")
        try:
            return decode_json(data, RegistryIndex, f"{self.label}/{INDEX}")
        except ContractError as e:
            raise RegistryUnavailable(f"registry {self.label}: unreadable index ({e})") from None

    def open(self, rel: str):
        return self._get(str(safe_relative(rel, self.label)))


def source_for(spec: str, base_dir: Path, *, timeout: float = 30.0, allow_insecure_http: bool = False) -> Source:
    """The source a `registries` entry names; relative directories are relative to `base_dir`."""
    scheme = urlsplit(spec).scheme.lower() if "://" in spec else ""
    if scheme in ("http", "https"):
        return HttpSource(spec, timeout=timeout, allow_insecure_http=allow_insecure_http)
    if scheme == "file":
        return DirSource(Path(unquote(urlsplit(spec).path)), label=spec)
    if scheme:
        raise RegistryError(f"registry {spec!r}: unsupported scheme {scheme!r} (use a directory, file://, http:// or https://)")
    path = Path(spec).expanduser()
    return DirSource(path if path.is_absolute() else Path(base_dir) / path, label=spec)


class Pulled(msgspec.Struct, kw_only=True):
    path: str
    lock: SpecialistLock
    # False when the verified copy in the cache was used.
    downloaded: bool


def _read_small(source: Source, rel: str) -> bytes:
    with source.open(rel) as f:
        data = f.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise PackageError(f"registry {source.label}: {rel} is larger than {MAX_METADATA_BYTES} bytes")
    return data


def _download(source: Source, rel: str, dest: Path, *, sha256: str, size: int | None, what: str) -> None:
    """Stream `rel` to `dest`, hashing as it goes; stop at the first byte past its size.

    `size` is what the lock declares (None: only `MAX_FILE_BYTES` holds). A file that
    grows past it, ends short of it or hashes to anything else raises IntegrityError and
    leaves no file behind.
    """
    cap = MAX_FILE_BYTES if size is None else size
    name = rel.rpartition("/")[2] if "/" in rel else rel
    h = hashlib.sha256()
    n = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with source.open(rel) as src, open(dest, "wb") as out:
            announced = getattr(src, "headers", None) and src.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > cap:
                raise IntegrityError(f"{what}: {name} is announced as {announced} bytes, its lock says {cap}: refused")
            # Never read more than one byte past the cap: that byte is the proof of an overrun.
            while chunk := src.read(min(_CHUNK, cap + 1 - n)):
                n += len(chunk)
                if n > cap:
                    raise IntegrityError(f"{what}: {name} is larger than the {cap} bytes its lock declares: aborted")
                h.update(chunk)
                out.write(chunk)
        if size is not None and n != size:
            raise IntegrityError(f"{what}: {name} is {n} bytes, its lock says {size}: refused")
        if h.hexdigest() != sha256:
            raise IntegrityError(f"{what}: {name} has sha256 {h.hexdigest()[:12]}, its lock says {sha256[:12]}: refused")
    except (OSError, urllib.error.URLError) as e:
        dest.unlink(missing_ok=True)
        raise RegistryUnavailable(f"registry {source.label}: downloading {rel} failed ({e})") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def check_entry(entry: RegistryEntry, source: Source) -> None:
    """Index entries come from outside: names, versions and paths must be safe to use."""
    try:
        check_name(entry.name)
        check_version(entry.version)
        safe_relative(entry.path, f"registry {source.label}: {entry.name}@{entry.version}")
    except PackageError as e:
        raise PackageError(f"registry {source.label}: bad index entry: {e}") from None


def gate_problem_of(source: Source, entry: RegistryEntry) -> str | None:
    """Why `entry` may not be what a `"*"` pin means (None: its gate passed for exactly its
    weights). Reads the package's lock and eval report only (small files), each checked
    against the index and the lock, so a report can't vouch for weights it did not test."""
    check_entry(entry, source)
    what = f"{entry.name}@{entry.version} from {source.label}"
    try:
        lock = decode_json(_read_small(source, f"{entry.path}/{LOCK}"), SpecialistLock, f"{what}: {LOCK}")
    except ContractError as e:
        raise PackageError(str(e)) from None
    check_lock(lock, f"{what}: {LOCK}")
    if lock.digest != entry.digest:
        raise IntegrityError(f"{what}: its lock has digest {lock.digest[:12]}, the index says {entry.digest[:12]}: refused")
    gate = None
    if EVAL_REPORT in lock.files:
        data = _read_small(source, f"{entry.path}/{EVAL_REPORT}")
        if hashlib.sha256(data).hexdigest() != lock.files[EVAL_REPORT]:
            raise IntegrityError(f"{what}: {EVAL_REPORT} does not match its lock: refused")
        try:
            gate = decode_json(data, GateResult, f"{what}: {EVAL_REPORT}")
        except ContractError as e:
            return f"unreadable eval report ({e})"
    return gate_problem(lock, gate)


def pull(source: Source, entry: RegistryEntry, *, pin_sha256: str | None = None) -> Pulled:
    """The verified package of `entry` in the cache: the cached copy if intact, else downloaded.

    Raises IntegrityError when the lock, a file, or the pin's sha256 does not match
    (nothing is written to the cache then), RegistryUnavailable when the registry
    cannot be read, PackageError for a package that is malformed.
    """
    check_entry(entry, source)
    name, version = entry.name, entry.version
    what = f"{name}@{version} from {source.label}"
    if pin_sha256 and entry.digest != pin_sha256:
        raise IntegrityError(f"{what}: digest {entry.digest[:12]} is not the pinned sha256 {pin_sha256[:12]}: refused")
    if not pin_sha256 and not getattr(source, "authenticated", False):
        raise IntegrityError(
            f"{what}: a plain http:// registry on another host serves the index, lock and files unauthenticated, "
            "so their hashes prove nothing: use https://, pin the version's sha256, or set allow_insecure_http "
            "in tinygpt.project.json"
        )
    dest = cached_dir(name, version)
    if (dest / LOCK).is_file():
        try:
            lock = verify_package(dest, name=name, version=version, digest=entry.digest)
            return Pulled(path=str(dest), lock=lock, downloaded=False)
        except PackageError as e:
            # A damaged or stale copy is replaced by a fresh download, never served.
            log.warning("cached copy of %s@%s is not usable (%s); downloading it again", name, version, e)

    stage = staging_dir(dest.parent, version)
    try:
        try:
            lock = decode_json(_read_small(source, f"{entry.path}/{LOCK}"), SpecialistLock, f"{what}: {LOCK}")
        except ContractError as e:
            raise PackageError(str(e)) from None
        check_lock(lock, f"{what}: {LOCK}")
        if (lock.name, lock.version) != (name, version):
            raise PackageError(f"{what}: its lock is for {lock.name}@{lock.version}")
        if lock.digest != entry.digest:
            raise IntegrityError(f"{what}: its lock has digest {lock.digest[:12]}, the index says {entry.digest[:12]}: refused")
        for rel, expected in sorted(lock.files.items()):
            _download(source, f"{entry.path}/{rel}", stage / safe_relative(rel, what), sha256=expected,
                      size=lock.sizes.get(rel) if lock.sizes else None, what=what)
        manifest = read_manifest(stage)
        if (manifest.name, manifest.version) != (name, version):
            raise PackageError(f"{what}: its manifest is for {manifest.name}@{manifest.version}")
        write_json(stage / LOCK, lock)  # last: the copy is complete only now
        fsync_tree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    discard(dest)
    if not move_into_place(stage, dest):
        # Another process pulled it at the same moment: use theirs once it checks out.
        return Pulled(path=str(dest), lock=verify_package(dest, name=name, version=version, digest=entry.digest),
                      downloaded=False)
    log.info("pulled %s (%s)", what, lock.digest[:12])
    return Pulled(path=str(dest), lock=lock, downloaded=True)


def cached_lock(name: str, version: str) -> SpecialistLock | None:
    """The lock of a complete, intact copy in the cache (None when absent or damaged)."""
    try:
        dest = cached_dir(name, version)
        return verify_package(dest, name=name, version=version) if (dest / LOCK).is_file() else None
    except PackageError:
        return None
