"""The eval gate's result cache: suite reports keyed by the content hash of what made them.

    key = sha256(model digest, adapter digest, the suite's settings, its data files'
                 sha256, a custom scorer's source sha256, CACHE_VERSION)

A commit that changes none of these finds every report here and decides without loading
a model: this module (and everything the cache-hit path imports) must never import MLX.
Thresholds and minimums are not in the key: changing them re-decides from the cache.

Reports live in `<TINYGPT_HOME>/evals/cache/<key[:2]>/<key>.json`, written atomically.
Model files without a manifest are hashed once per (path, size, mtime) and remembered in
`<TINYGPT_HOME>/evals/digests.json`, so a big local model costs a stat, not a re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import msgspec

from tinygpt.runtime import paths
from tinygpt.runtime.hashing import sha256_file
from tinygpt.runtime.contracts.base import ContractError
from tinygpt.runtime.contracts.evals import EvalSuite, SuiteReport
from tinygpt.runtime.contracts.io import atomic_write_bytes, read_json, write_json

# Bump when the way suites are run or scored changes: old reports then stop matching.
CACHE_VERSION = 1


def cache_root() -> Path:
    return paths.subdir("evals")


class DigestMemo:
    """sha256 of files remembered by (absolute path, size, mtime_ns)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "digests.json"
        try:
            self._known: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._known = {}
        self._dirty = False

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        known = self._known.get(str(path))
        if known and known[:2] == stamp:
            return known[2]
        digest = sha256_file(path)
        self._known[str(path)] = [*stamp, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        if self._dirty:
            atomic_write_bytes(self.path, json.dumps(self._known, sort_keys=True).encode())
            self._dirty = False


def model_digest(model_dir: Path, memo: DigestMemo) -> str:
    """The model's identity, the same value the runtime reports for it (manifest digest,
    else the sha256 over the sorted "path sha256" lines of its files)."""
    from tinygpt.runtime.models.manifest import model_digest as digest

    return digest(model_dir, sha256=memo.sha256)


def scorer_digest(suite: EvalSuite) -> str:
    """sha256 of a custom scorer's source file (editing the scorer reruns its suite)."""
    if suite.kind != "custom" or not suite.scorer:
        return ""
    module = sys.modules.get(suite.scorer.partition(":")[0])
    source = getattr(module, "__file__", None)
    return sha256_file(Path(source)) if source and os.path.isfile(source) else ""


def suite_key(*, model_digest: str, adapter_digest: str | None, suite: EvalSuite, file_digests: list[str], scorer: str) -> str:
    """The content hash of one suite run: same key, same numbers (up to sampling noise)."""
    settings = msgspec.to_builtins(suite)
    for field in ("threshold", "minimum", "data", "answers"):
        settings.pop(field, None)
    payload = {
        "v": CACHE_VERSION,
        "model": model_digest,
        "adapter": adapter_digest or "",
        "suite": settings,
        "files": file_digests,
        "scorer": scorer,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ResultCache:
    """Suite reports by key. `enabled=False` reads nothing (but still records new results)."""

    def __init__(self, root: Path | None = None, *, enabled: bool = True):
        self.root = root or cache_root() / "cache"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> SuiteReport | None:
        report = None
        if self.enabled and self._path(key).is_file():
            try:
                report = read_json(self._path(key), SuiteReport)
            except ContractError:
                report = None  # a damaged entry is a miss, and the rerun overwrites it
        if report is not None and report.key != key:
            report = None
        self.hits += report is not None
        self.misses += report is None
        return report

    def put(self, report: SuiteReport) -> None:
        write_json(self._path(report.key), report)
