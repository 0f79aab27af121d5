"""Who may drive the runtime: the checks every request passes before its route runs.

The runtime listens on 127.0.0.1 without a key by default, so the owner's own browser
is the way in for an attacker: any web page can POST to http://127.0.0.1:8000 (a
`text/plain` form needs no CORS preflight), and a page on a domain that re-resolves to
127.0.0.1 (DNS rebinding) can even read the answers. Every recorded conversation feeds
training under `tinygpt up`, so such a page could poison specialists. Hence, for every
route (new ones included: `http.Handler._dispatch` calls `screen` before routing):

- `Host` must name this server: a localhost name, an IP literal, the bound host, or this
  machine's own name. A rebinding page's requests carry the attacker's domain.
- A browser `Origin` is refused unless listed (`--allow-origin`); listed origins get
  proper CORS (preflight answered, headers on every response). Clients that are not
  browsers send no Origin.
- POST, PUT and PATCH bodies must be `application/json` (415 otherwise): a page can send
  `text/plain` cross-origin without a preflight, never `application/json`.
- JSON nested deeper than `MAX_DEPTH` is a 400 before it is parsed (`check_body`).

Also here: the start-up rule that a server reachable from other machines needs an API
key (`check_bind`), and where the admin API may load adapters from (`check_adapter_path`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..contracts.nesting import MAX_DEPTH, json_depth
from ..hosts import LOCAL_NAMES, is_loopback
from .protocol import ApiError

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What a listed browser origin may send and read (CORS).
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, X-TinyGPT-Session"
CORS_EXPOSED_HEADERS = "X-TinyGPT-Trajectory, X-TinyGPT-Step, X-TinyGPT-Model, Retry-After"
CORS_MAX_AGE_S = 600


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve other machines without an API key, unless the owner says `--insecure`."""
    if not is_loopback(host) and not api_key and not insecure:
        raise ValueError(
            f"binding {host} makes the runtime reachable from other machines, and without --api-key anyone there "
            "could use it and write training data; set --api-key (or $TINYGPT_API_KEY), or pass --insecure"
        )


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]` in lower case, no path or trailing slash (how browsers send it)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--allow-origin {origin!r} is not an origin like https://app.example or http://localhost:3000")
    return f"{parts.scheme}://{parts.netloc}".lower()


def host_name(value: str) -> str:
    """The host part of a Host header (`name`, `name:port`, `[v6]:port`), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return name.rstrip(".") if sep and port.isdigit() and ":" not in name else value.rstrip(".")


class RequestGuard:
    """The per-request checks of one server (built from its ServerConfig)."""

    def __init__(self, host: str, allow_origins: list[str] = (), adapter_dirs: list[str] = ()):
        self.origins = frozenset(normalize_origin(o) for o in allow_origins)
        names = set(LOCAL_NAMES) | {host_name(host)}
        if not is_loopback(host):
            # Bound beyond loopback: clients may call this machine by its own name.
            for name in (socket.gethostname(), socket.getfqdn()):
                names.add(name.lower().rstrip("."))
        self.hosts = frozenset(n for n in names if n)
        self.adapter_dirs = [Path(d).expanduser() for d in adapter_dirs]

    # ------------------------------------------------------------ per request

    def screen(self, handler, method: str) -> bool:
        """Raise ApiError for a request this server must not serve; True when answered here (a preflight)."""
        headers = handler.headers
        host = headers.get("Host")
        if host is not None and not self.host_allowed(host):
            raise ApiError(403, f"Host {host!r} is not this server (a DNS-rebinding page?); "
                                f"use 127.0.0.1, localhost or the address it is bound to", code="host_not_allowed")
        origin = headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            raise ApiError(403, f"browser origin {origin!r} is not allowed; start the server with --allow-origin {origin} "
                                "to let that page use it", code="origin_not_allowed")
        if method == "OPTIONS":
            self._preflight(handler, origin)
            return True
        if method in BODY_METHODS:
            ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                raise ApiError(415, f"{method} bodies must be Content-Type: application/json (got {ctype or 'none'!r})",
                               code="unsupported_media_type")
        return False

    def host_allowed(self, value: str) -> bool:
        name = host_name(value)
        if name in self.hosts or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)  # an IP literal cannot be a rebinding attacker's domain
            return True
        except ValueError:
            return False

    def origin_allowed(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self.origins
        except ValueError:  # "null" (sandboxed frames, file://) and other junk
            return False

    def cors_headers(self, headers) -> dict[str, str]:
        """Headers that let a listed origin read the response (none for other requests)."""
        origin = headers.get("Origin") if headers is not None else None
        if origin is None or not self.origin_allowed(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS}

    def _preflight(self, handler, origin: str | None) -> None:
        if origin is None:
            raise ApiError(405, "OPTIONS is only answered as a CORS preflight (with an Origin header)")
        handler.send_response(204)
        handler.send_header("Access-Control-Allow-Methods", CORS_METHODS)
        # A listed origin is trusted: allow the headers it asks for (other routes' clients,
        # e.g. Anthropic's `x-api-key`), else the ones this API reads.
        asked = handler.headers.get("Access-Control-Request-Headers")
        handler.send_header("Access-Control-Allow-Headers", asked or CORS_REQUEST_HEADERS)
        handler.send_header("Access-Control-Max-Age", str(CORS_MAX_AGE_S))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def check_body(self, data: bytes) -> None:
        """A body nested deeper than MAX_DEPTH is a 400 (parsers and schema walkers recurse per level)."""
        depth = json_depth(data)
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request body is nested {depth} levels deep; the limit is {MAX_DEPTH}", code="too_deep")

    # ------------------------------------------------------------ admin

    def check_adapter_path(self, path: str) -> None:
        """The admin API loads adapters only from the specialist cache and the configured directories.

        Symlinks are resolved first, so a link inside an allowed directory cannot point out of it.
        """
        from .. import paths

        roots = [paths.subdir("specialists"), *self.adapter_dirs]
        real = Path(os.path.realpath(Path(path).expanduser()))
        for root in roots:
            if real.is_relative_to(os.path.realpath(root)):
                return
        allowed = ", ".join(str(r) for r in roots)
        raise ApiError(403, f"adapter path {path!r} is outside the directories the admin API may load from ({allowed}); "
                            "add one with --adapter-dir", code="path_not_allowed", param="path")
