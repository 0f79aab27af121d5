"""Specialists on one base model: LoRA / DoRA adapters served side by side, swapped atomically.

Each loaded adapter version gets its own *module tree* over the base model's arrays: the
tree of `nn.Module` objects is cloned (cheap, a few hundred dicts) while every weight
array stays shared, then mlx-lm's own `load_adapters` wraps the cloned linears in
`LoRALinear` / `DoRALinear`. So the base weights are loaded once, an adapter costs only
its own low-rank matrices, switching specialist per request is choosing another model
object, and unloading one is dropping it.

`ServedAdapters` is the part HTTP threads see (names, versions, digests, reference counts; no
arrays): a request *acquires* the version current when it arrives and keeps it to the
end, so a swap never changes the weights under a request in flight, and a retired
version is freed only when its last request has finished.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..models import adapter_format
from ..models.adapter_format import AdapterFormatError, AdapterInfo
from .protocol import ApiError

# The key of the bare base model ("@" never appears in specialist names).
BASE = "@base"


class AdapterRefused(ApiError, AdapterFormatError):
    """An adapter operation refused, answered over HTTP with its status (400, 404, 409).

    Also an `AdapterFormatError`, so a caller below the HTTP layer (the registry's
    swapper) catches it without importing this one.
    """


def read_adapter(path: str | Path, name: str, version: str | None, base_digest: str) -> AdapterInfo:
    """`adapter_format.read_adapter`, a refusal answered as HTTP 400."""
    try:
        return adapter_format.read_adapter(path, name, version, base_digest)
    except AdapterFormatError as e:
        raise AdapterRefused(400, str(e)) from None


def clone_modules(module):
    """A copy of a module tree that shares every array: new dicts, same weights.

    `load_adapters` replaces linears inside the copy; the original stays untouched.
    """
    import mlx.nn as nn

    new = copy.copy(module)
    for k, v in module.items():
        if isinstance(v, nn.Module):
            new[k] = clone_modules(v)
        elif isinstance(v, (list, tuple)):
            new[k] = type(v)(clone_modules(x) if isinstance(x, nn.Module) else x for x in v)
        elif isinstance(v, dict):
            new[k] = {kk: clone_modules(x) if isinstance(x, nn.Module) else x for kk, x in v.items()}
    return new


_IN_LAYER = re.compile(r"^(?:.*\.)?layers\.\d+\.(.+)$")


def build_adapter_model(base, info: AdapterInfo):
    """The base model with `info`'s adapter applied, sharing the base arrays (model thread only).

    The same steps as mlx-lm's `load_adapters` (`linear_to_lora_layers`, then the
    weights), except that the layers to wrap are read off the adapter's own tensor
    names: mlx-lm's search for candidate layers walks every module of every block and
    was most of a hot swap's time.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    config = json.loads((Path(info.path) / "adapter_config.json").read_text())
    weights = mx.load(str(Path(info.path) / "adapters.safetensors"))
    keys = set()
    for name in weights:
        module = name.rsplit(".", 1)[0]
        found = _IN_LAYER.match(module)
        keys.add(found.group(1) if found else module)
    model = clone_modules(base)
    params = {**config["lora_parameters"], "keys": sorted(keys)}
    params.setdefault("dropout", 0.0)
    try:
        linear_to_lora_layers(model, config["num_layers"], params, use_dora=info.method == "dora")
    except (ValueError, KeyError) as e:
        raise AdapterRefused(400, f"adapter {info.name!r} does not fit the base model: {e}") from None
    shapes = {k: v.shape for k, v in tree_flatten(model.parameters())}
    wrong = [f"{k} {tuple(v.shape)}" for k, v in weights.items() if shapes.get(k) != v.shape]
    if wrong:
        raise AdapterRefused(
            400,
            f"adapter {info.name!r} does not fit the base model: tensors with no matching parameter "
            f"or of another shape: {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}",
        )
    model.load_weights(list(weights.items()), strict=False)
    model.eval()
    mx.eval(list(weights.values()))
    return model


@dataclass
class _Entry:
    info: AdapterInfo
    refs: int = 0
    retired: bool = False


class ServedAdapters:
    """Which version of each specialist new requests get; thread-safe, no arrays."""

    def __init__(self, base_name: str, base_digest: str, aliases: tuple[str, ...] = ()):
        self.base_name = base_name
        self.base_digest = base_digest
        self._base_names = {base_name, *aliases}
        self._lock = threading.Lock()
        self._current: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._base_refs = 0

    def acquire(self, model: str) -> tuple[str, AdapterInfo | None]:
        """The version key `model` names now, held until `release`; unknown names are a 404."""
        with self._lock:
            if model in self._base_names:
                self._base_refs += 1
                return BASE, None
            name, _, version = model.partition("@")
            key = f"{name}@{version}" if version else self._current.get(name)
            entry = self._entries.get(key) if key else None
            if entry is None or entry.retired:
                known = sorted(self._base_names | set(self._current))
                raise ApiError(
                    404,
                    f"model {model!r} not found; this server serves {', '.join(known)} "
                    f"(a specialist as NAME or NAME@VERSION)",
                    code="model_not_found",
                    param="model",
                )
            entry.refs += 1
            return key, entry.info

    def release(self, key: str) -> None:
        with self._lock:
            if key == BASE:
                self._base_refs -= 1
            elif key in self._entries:
                self._entries[key].refs -= 1

    def check_new(self, info: AdapterInfo) -> None:
        """Refuse a name that shadows the base, or a version reused with other weights."""
        with self._lock:
            if info.name in self._base_names:
                raise AdapterRefused(400, f"adapter name {info.name!r} is the base model's name")
            entry = self._entries.get(info.key)
            if entry and not entry.retired and entry.info.digest != info.digest:
                raise AdapterRefused(409, f"{info.key} is loaded with other weights ({entry.info.digest[:12]}); use a new version")

    def has(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and not entry.retired

    def publish(self, info: AdapterInfo, *, keep_previous: bool = False) -> str | None:
        """Make `info` the version new requests get; returns the key retired by the swap."""
        info = msgspec.structs.replace(info, loaded_at=time.time())
        with self._lock:
            old = self._current.get(info.name)
            entry = self._entries.get(info.key)
            if entry is None or entry.retired:
                self._entries[info.key] = _Entry(info, refs=entry.refs if entry else 0)
            self._current[info.name] = info.key
            if old and old != info.key and not keep_previous:
                self._entries[old].retired = True
                return old
            return None

    def unpublish(self, name: str, version: str | None = None) -> list[str]:
        """Stop serving `name` (every version) or just `name@version`; in-flight requests finish."""
        with self._lock:
            keys = [k for k in self._entries if k.partition("@")[0] == name and not self._entries[k].retired]
            if version is not None:
                keys = [k for k in keys if k == f"{name}@{version}"]
            if not keys:
                raise AdapterRefused(404, f"no loaded specialist {name}{'@' + version if version else ''}", code="model_not_found")
            for k in keys:
                self._entries[k].retired = True
            if self._current.get(name) in keys:
                del self._current[name]
            return keys

    def freeable(self) -> list[str]:
        """Retired versions no request holds any more; forgotten as they are returned."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e.retired and e.refs <= 0]
            for k in keys:
                del self._entries[k]
            return keys

    def snapshot(self) -> tuple[dict[str, str], list[AdapterInfo]]:
        """(name → current key, every servable version), for /v1/models and the admin API."""
        with self._lock:
            infos = [e.info for e in self._entries.values() if not e.retired]
            return dict(self._current), infos

    def in_use(self) -> dict[str, int]:
        with self._lock:
            refs = {k: e.refs for k, e in self._entries.items() if e.refs}
            if self._base_refs:
                refs[BASE] = self._base_refs
            return refs
