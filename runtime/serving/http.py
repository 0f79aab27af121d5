"""The HTTP front: stdlib `ThreadingHTTPServer`, one thread per connection, as in mlx-lm.

Nothing here touches arrays. A thread reads and bounds the body, checks the API key,
decodes JSON straight into a Struct and hands off to `Completions`; every failure is an
OpenAI error object, and every connection error ends only that connection. No framework
dependency is needed for a handful of routes, SSE and keep-alive.

Every request first passes `guard.RequestGuard.screen` (Host, browser Origin, JSON
content type; CORS preflights are answered there), and every body `check_body` (depth).

Routes: ``POST /v1/chat/completions``, ``POST /v1/responses`` (OpenAI Responses),
``POST /v1/messages[/count_tokens]`` (Anthropic Messages), ``GET /v1/models[/{id}]``,
``GET /health``, ``GET /metrics``, ``POST /v1/trajectories/{id}/feedback`` and ``…/hindsight``
(a relabel: runtime/serving/hindsight.py), and behind the
admin key ``GET|POST /admin/adapters`` and ``DELETE /admin/adapters/{name}[@{version}]``.
"""

from __future__ import annotations

import hmac
import logging
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import msgspec

from ..contracts.trajectory import Feedback
from .completions import TOOL_MODE_HEADER, ClientGone
from .guard import RequestGuard
from .messages_protocol import error_body as anthropic_error_body
from .protocol import AdapterLoad, ApiError, ChatRequest, FeedbackRequest, HindsightRequest, Tool, decode, encode
from .recorder import SESSION_HEADER

if TYPE_CHECKING:
    from .app import Runtime

log = logging.getLogger("tinygpt.serving.http")

# (method, pattern, endpoint name for metrics, auth: "api" | "anthropic" | "admin" | None);
# "anthropic" is the API key sent as `x-api-key` or as a Bearer token.
ROUTES = [
    ("GET", r"/health", "health", None),
    ("GET", r"/metrics", "metrics", None),
    ("GET", r"/v1/models", "models", "api"),
    ("GET", r"/v1/models/(?P<model>[^/]+)", "model", "api"),
    ("POST", r"/v1/chat/completions", "chat", "api"),
    ("POST", r"/v1/responses", "responses", "api"),
    ("POST", r"/v1/messages", "messages", "anthropic"),
    ("POST", r"/v1/messages/count_tokens", "count_tokens", "anthropic"),
    ("POST", r"/v1/trajectories/(?P<tid>[^/]+)/feedback", "feedback", "api"),
    ("POST", r"/v1/trajectories/(?P<tid>[^/]+)/hindsight", "hindsight", "api"),
    ("GET", r"/admin/adapters", "adapters", "admin"),
    ("POST", r"/admin/adapters", "adapter_load", "admin"),
    ("DELETE", r"/admin/adapters/(?P<model>[^/]+)", "adapter_unload", "admin"),
]
_COMPILED = [(m, re.compile(f"^{p}$"), name, auth) for m, p, name, auth in ROUTES]
# Endpoints whose errors take another API's shape than OpenAI's.
ERROR_BODIES = {"messages": anthropic_error_body, "count_tokens": anthropic_error_body}


class RuntimeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, runtime: Runtime):
        self.runtime = runtime
        cfg = runtime.config
        self.guard = RequestGuard(cfg.host, cfg.allow_origins, cfg.adapter_dirs)
        self.max_connections = runtime.config.max_connections
        self._open = 0
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        # One thread per connection, but not without limit: beyond it, a quick 503.
        with self._open_lock:
            full = self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            self.runtime.metrics.rejected.inc(reason="connections")
            error = ApiError(503, "too many open connections; retry shortly", type="server_error", code="server_busy")
            body = error.body()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            try:
                request.sendall(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open -= 1

    def handle_error(self, request, client_address) -> None:
        # Resets and timeouts from clients are routine; anything else is logged once.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Garbage request lines are answered with a status line too (no HTTP/0.9 bare bodies).
    default_request_version = "HTTP/1.0"
    server_version = "tinygpt"
    sys_version = ""
    # A client that stalls this long while we read or write is dropped (slow-loris safety).
    timeout = 30
    server: RuntimeHTTPServer

    def log_message(self, format: str, *args) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)
        for k, v in self.server.guard.cors_headers(getattr(self, "headers", None)).items():
            self.send_header(k, v)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by the stdlib parser (bad request line, huge headers) as JSON too."""
        self.close_connection = True
        self._reply_error(ApiError(code, message or explain or "bad request"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    # ------------------------------------------------------------ plumbing

    @property
    def rt(self) -> Runtime:
        return self.server.runtime

    def _dispatch(self, method: str) -> None:
        self._status = 0
        self._streaming = False
        self._headers_sent = False
        self._error_body = None
        endpoint = "unknown"
        try:
            path = urlsplit(self.path).path
            if self.server.guard.screen(self, method):
                return
            route, params, allowed = None, {}, []
            for m, pattern, name, auth in _COMPILED:
                found = pattern.match(path)
                if found:
                    allowed.append(m)
                    if m == method:
                        route, params = (name, auth), {k: unquote(v) for k, v in found.groupdict().items()}
                        break
            if route is None:
                self.close_connection = True
                if allowed:
                    raise ApiError(405, f"{method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
                raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
            endpoint, auth = route
            self._error_body = ERROR_BODIES.get(endpoint)
            self._authorize(auth)
            getattr(self, f"_{endpoint}")(**params)
        except ApiError as e:
            if e.status >= 400:
                self.close_connection = True
            self._reply_error(e)
        except ClientGone:
            self.close_connection = True
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:
            log.exception("internal error on %s %s", method, self.path)
            self.close_connection = True
            self._reply_error(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))
        finally:
            self.rt.metrics.requests.inc(endpoint=endpoint, status=str(self._status or 0))

    def _reply_error(self, e: ApiError) -> None:
        if getattr(self, "_streaming", False) or getattr(self, "_headers_sent", False):
            return
        shape = getattr(self, "_error_body", None)
        try:
            self.send_json(e.status, shape(e) if shape else e.body(), e.headers)
        except (TimeoutError, BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _authorize(self, auth: str | None) -> None:
        if auth is None:
            return
        # The admin key never falls back to the API key: API clients must not load adapters.
        key = self.rt.config.admin_key if auth == "admin" else self.rt.config.api_key
        if key is None:
            if auth == "admin":
                raise ApiError(403, "admin endpoints are off: start the server with --admin-key")
            return
        given = self.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if auth == "anthropic" and not token:
            token = self.headers.get("x-api-key", "")
        if not hmac.compare_digest(token.encode(), key.encode()):
            how = "x-api-key: ... or Authorization: Bearer ..." if auth == "anthropic" else "Authorization: Bearer ..."
            raise ApiError(401, f"missing or wrong API key ({how})", code="invalid_api_key")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length is required")
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {length!r}") from None
        if n < 0:
            raise ApiError(400, f"invalid Content-Length {length!r}")
        limit = self.rt.config.max_body_bytes
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes exceeds the limit of {limit}", code="body_too_large")
        data = self.rfile.read(n)
        if len(data) < n:
            raise ClientGone()
        self.server.guard.check_body(data)
        return data

    # Writer (what Completions answers through)

    def send_json(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True
        self.wfile.write(body)
        self.wfile.flush()

    def start_stream(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # No length and no chunked framing: the stream ends when the connection closes.
        self.send_header("Connection", "close")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self._streaming = True
        self.close_connection = True
        self.wfile.flush()

    def send_event(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (TimeoutError, BrokenPipeError, ConnectionResetError, OSError):
            raise ClientGone() from None

    def client_gone(self) -> bool:
        """True once the peer has closed its side (checked while a request waits)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------ endpoints

    def _health(self) -> None:
        eng = self.rt.engine
        ok = eng.healthy
        body = {"status": "ok" if ok else "unavailable", "model": self.rt.registry.base_name,
                "queued": eng.queued, "active": eng.n_active,
                "device": msgspec.to_builtins(eng.device) if eng.device else None,
                "max_batch": eng.max_batch, "max_queue": eng.max_queue}
        self.send_json(200 if ok else 503, encode(body))

    def _metrics(self) -> None:
        body = self.rt.metrics.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _models(self) -> None:
        self.send_json(200, encode(self.rt.model_list()))

    def _model(self, model: str) -> None:
        card = next((c for c in self.rt.model_list().data if c.id == model), None)
        if card is None:
            raise ApiError(404, f"model {model!r} not found", code="model_not_found", param="model")
        self.send_json(200, encode(card))

    def _chat(self) -> None:
        req = decode(self._body(), ChatRequest)
        session = self.headers.get(SESSION_HEADER) or (req.metadata or {}).get("session_id")
        prepared = self.rt.completions.prepare(req, session, self.headers.get(TOOL_MODE_HEADER))
        self.rt.completions.run(prepared, self, {})

    def _responses(self) -> None:
        self.rt.responses.handle(self._body(), self.headers, self)

    def _messages(self) -> None:
        self.rt.messages.handle(self._body(), self.headers, self)

    def _count_tokens(self) -> None:
        self.rt.messages.count_tokens(self._body(), self)

    def _feedback(self, tid: str) -> None:
        if self.rt.recorder is None:
            raise ApiError(404, "trajectories are not recorded by this server (--no-record)")
        fb = decode(self._body(), FeedbackRequest)
        if fb.reward is None and fb.label is None:
            raise ApiError(400, "feedback needs a reward or a label")
        record = Feedback(
            trajectory_id=tid, reward=fb.reward, label=fb.label, step=fb.step, source=fb.source,
            comment=fb.comment, created_at=time.time(),
        )
        count = self.rt.recorder.feedback(tid, record).result()
        self.send_json(200, encode({"trajectory_id": tid, "feedback": count}))

    def _hindsight(self, tid: str) -> None:
        if self.rt.recorder is None:
            raise ApiError(404, "trajectories are not recorded by this server (--no-record)")
        req = decode(self._body(), HindsightRequest)
        prompts = self.rt.completions.prompts

        def render(traj) -> tuple[list[int], list[int]]:
            # The first request's prompt as the runtime built it: these tools, its tool mode.
            try:
                tools = msgspec.convert(traj.tools, list[Tool]) if traj.tools else None
            except msgspec.ValidationError as e:
                raise ApiError(409, f"the trajectory's tools cannot be rendered again: {e}", code="opening_mismatch") from None
            mode = traj.steps[0].tool_mode if traj.steps else "full"
            return tuple(prompts.encode(prompts.render(m, tools, mode)) for m in (req.original, req.messages))

        fb = Feedback(trajectory_id=tid, reward=req.reward, source=req.source, comment=req.comment, created_at=time.time())
        new_id = self.rt.recorder.hindsight(tid, render, fb).result()
        self.send_json(201, encode({"trajectory_id": new_id, "hindsight_of": tid}))

    def _adapters(self) -> None:
        self.send_json(200, encode(self.rt.adapters_state()))

    def _adapter_load(self) -> None:
        cmd = decode(self._body(), AdapterLoad)
        self.server.guard.check_adapter_path(cmd.path)
        result = self.rt.load_adapter(cmd.name, cmd.path, cmd.version, keep_previous=cmd.keep_previous)
        self.send_json(200, msgspec.json.encode(result))

    def _adapter_unload(self, model: str) -> None:
        name, _, version = model.partition("@")
        self.send_json(200, msgspec.json.encode(self.rt.unload_adapter(name, version or None)))
