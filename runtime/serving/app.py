"""`Runtime`: the server assembled (model thread, recorder, registry, HTTP) and its lifecycle.

`tinygpt serve` builds one from the command line and blocks in `serve_forever`; tests
start one on port 0 in a thread (`start()`), talk to `url`, and `stop()` it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from collections.abc import Callable

import msgspec

from .. import paths
from ..models.manifest import model_digest
from .adapters import ServedAdapters, build_adapter_model, read_adapter
from .completions import Completions
from .config import ServerConfig  # noqa: F401  (where callers have always found it)
from .engine import Engine
from .guard import RequestGuard, check_bind
from .http import RuntimeHTTPServer
from .messages import Messages
from .metrics import Metrics
from .prompts import ChatPrompts
from .protocol import UNSET, ModelCard, ModelList
from .recorder import Recorder
from .responses import Responses

log = logging.getLogger("tinygpt.serving")


def resolve_model_dir(model: str) -> Path:
    """A model directory from a cached name or a path."""
    from tinygpt.runtime.models import resolve_model

    return Path(resolve_model(model))


class Runtime:
    """The whole server. Construct, `start()`, then `serve_forever()` or use `url`."""

    def __init__(self, config: ServerConfig, *, on_trajectory_flushed: Callable[[Path], None] | None = None):
        check_bind(config.host, config.api_key, config.insecure)  # before anything loads
        RequestGuard(config.host, config.allow_origins, config.adapter_dirs)  # a bad --allow-origin fails here
        self.config = config
        self.metrics = Metrics()
        self.model_dir = resolve_model_dir(config.model)
        name = config.name or (self.model_dir.name if "/" in config.model or Path(config.model).is_dir() else config.model)
        self.registry = ServedAdapters(name, model_digest(self.model_dir), aliases=(config.model, "base"))
        self.engine = Engine(
            self.model_dir,
            registry=self.registry,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            prefix_cache_bytes=config.prefix_cache_mb << 20,
            prefill_step_size=config.prefill_step_size,
            metrics=self.metrics,
            memory_fraction=config.memory_fraction,
        )
        self.recorder: Recorder | None = None
        if config.record:
            root = Path(config.trajectories_dir) if config.trajectories_dir else paths.subdir("trajectories")
            self.recorder = Recorder(
                root, on_flushed=on_trajectory_flushed, idle_seconds=config.session_idle_s, metrics=self.metrics
            )
        self.httpd: RuntimeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.completions: Completions | None = None
        self.responses: Responses | None = None
        self.messages: Messages | None = None
        self.started = time.time()
        m = self.metrics
        m.gauge("tinygpt_queue_depth", "requests waiting for a batch slot", lambda: self.engine.queued)
        m.gauge("tinygpt_active_sequences", "sequences decoding", lambda: self.engine.n_active)
        m.gauge("tinygpt_prefix_cache_bytes", "bytes held by the prefix KV cache", lambda: self.engine.prefix_cache_nbytes)
        m.gauge("tinygpt_adapters_loaded", "servable specialist versions", lambda: len(self.registry.snapshot()[1]))

    def start(self) -> Runtime:
        """Load the model, start the recorder and bind the HTTP server (in a thread)."""
        self.engine.start()
        try:
            self._start_front()
        except BaseException:
            # Never leave the model thread running behind a failed start.
            self.stop()
            raise
        return self

    def _start_front(self) -> None:
        dev = self.engine.device
        self.metrics.device.set(1, backend=dev.backend, api=dev.api, name=dev.name, dtype=dev.dtype)
        cfg = self.engine.config
        tok = self.engine.tokenizer
        context = cfg.get("max_position_embeddings") or 0
        tok_max = getattr(tok, "model_max_length", 0) or 0
        if 0 < tok_max < 10_000_000:
            context = min(context, tok_max) if context else tok_max
        self.completions = Completions(
            self.engine,
            ChatPrompts(tok),
            self.recorder,
            context_length=context or 4096,
            default_max_tokens=self.config.max_tokens,
            vocab_size=int(cfg["vocab_size"]),
            project=self.config.project,
            tool_mode=self.config.tool_mode,
            tool_modes=self.config.tool_modes,
        )
        # The Responses and Anthropic Messages APIs answer through the same core.
        self.responses = Responses(self.completions)
        self.messages = Messages(self.completions)
        if self.recorder is not None:
            self.recorder.start()
        for name, path in self.config.adapters:
            self.load_adapter(name, path)
        self.httpd = RuntimeHTTPServer((self.config.host, self.config.port), self)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def serve_forever(self) -> None:
        """Block until interrupted (the HTTP server runs in its own thread)."""
        try:
            while self._thread is not None and self._thread.is_alive() and self.engine.healthy:
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop accepting, finish the model thread, seal open trajectories."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        self.engine.stop()
        if self.recorder is not None and self.recorder.running:
            self.recorder.close()

    # ------------------------------------------------------------ specialists

    def load_adapter(self, name: str, path: str, version: str | None = None, *, keep_previous: bool = False) -> dict:
        """Load a specialist version and make it current (a hot swap if one was serving)."""
        start = time.perf_counter()
        info = read_adapter(path, name, version, self.registry.base_digest)
        self.registry.check_new(info)

        def op(engine: Engine) -> tuple[str | None, float]:
            t = time.perf_counter()
            self.registry.check_new(info)
            if not self.registry.has(info.key):
                engine.add_model(info.key, build_adapter_model(engine.base_model, info))
            retired = self.registry.publish(info, keep_previous=keep_previous)
            return retired, time.perf_counter() - t

        retired, model_thread_s = self.engine.call(op).result()
        seconds = time.perf_counter() - start
        self.metrics.adapter_ops.observe(seconds, op="swap" if retired else "load")
        log.info("loaded %s (%s) in %.1f ms", info.key, info.digest[:12], seconds * 1e3)
        return {
            "loaded": msgspec.to_builtins(info),
            "retired": retired,
            "seconds": seconds,
            "model_thread_seconds": model_thread_s,
        }

    def unload_adapter(self, name: str, version: str | None = None) -> dict:
        """Stop serving a specialist (or one version); memory is freed when its requests finish."""
        start = time.perf_counter()
        keys = self.registry.unpublish(name, version)
        # Wake the model thread so it frees what is no longer in use right away.
        self.engine.call(lambda engine: None).result()
        self.metrics.adapter_ops.observe(time.perf_counter() - start, op="unload")
        return {"unloaded": keys}

    def adapters_state(self) -> dict:
        current, infos = self.registry.snapshot()
        return {
            "current": current,
            "versions": [msgspec.to_builtins(i) for i in infos],
            "in_use": self.registry.in_use(),
        }

    def model_list(self) -> ModelList:
        reg = self.registry
        created = int(self.started)
        dev = self.engine.device
        cards = [ModelCard(id=reg.base_name, created=created, digest=reg.base_digest,
                           dtype=dev.dtype if dev else UNSET, device=dev.describe() if dev else UNSET)]
        current, infos = reg.snapshot()
        for info in sorted(infos, key=lambda i: (i.name, i.loaded_at)):
            card = dict(created=int(info.loaded_at), root=reg.base_name, version=info.version, digest=info.digest)
            if current.get(info.name) == info.key:
                cards.append(ModelCard(id=info.name, **card))
            cards.append(ModelCard(id=info.key, **card))
        return ModelList(data=cards)

