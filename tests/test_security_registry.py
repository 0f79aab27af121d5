"""Attacks through registries, against real HTTP servers.

- A plain http:// registry on another host serves index, lock and files from one
  unauthenticated server: without a pinned sha256 (or the project's explicit opt-in) it
  is refused before any package file is fetched.
- A registry that streams a file without end, announces a huge one, or sends one of the
  right size but other bytes: the pull stops at the lock's size, keeps nothing.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from tests.registry_support import publish_fake
from tinygpt.runtime.contracts.project import ProjectPins, SpecialistPin
from tinygpt.runtime.registry.errors import IntegrityError
from tinygpt.runtime.registry.fetch import HttpSource, cached_dir, pull, source_for
from tinygpt.runtime.registry.index import read_index
from tinygpt.runtime.registry.resolve import open_registries, resolve_pin


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def registry(tmp_path):
    reg = tmp_path / "reg"
    publish_fake(reg, "mail", "1", tmp_path / "adapters", seed=1)
    return reg


def entry(reg, name, version):
    return next(e for e in read_index(reg).specialists if (e.name, e.version) == (name, version))


class Hostile(http.server.SimpleHTTPRequestHandler):
    """Serves the registry folder, except `adapters.safetensors`, which it serves as `mode` says."""

    mode = "endless"
    sent: list[int]
    requested: list[str]

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.requested.append(self.path)
        if not self.path.endswith("adapters.safetensors") or self.mode == "honest":
            return super().do_GET()
        real = Path(self.directory, self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        if self.mode == "announced":
            self.send_header("Content-Length", str(len(real) * 1000))
        elif self.mode == "same-size":
            self.send_header("Content-Length", str(len(real)))
        self.end_headers()
        try:
            if self.mode == "same-size":
                self.wfile.write(bytes(len(real)))
                self.sent.append(len(real))
                return
            n = 0
            while n < 1 << 30:  # "endless": far more than any cap in these tests
                self.wfile.write(b"\0" * 65536)
                n += 65536
                self.sent[0] = n
        except OSError:
            pass  # the client hung up: what it should do


@contextlib.contextmanager
def serve(root: Path, mode: str, host: str = "127.0.0.1"):
    sent, requested = [0], []
    handler = type("H", (Hostile,), {"mode": mode, "sent": sent, "requested": requested})
    server = http.server.ThreadingHTTPServer((host, 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], sent, requested
    finally:
        server.shutdown()
        server.server_close()


def leftovers(name: str) -> list[Path]:
    parent = cached_dir(name, "x").parent
    return [p for p in parent.rglob("*")] if parent.exists() else []


@pytest.mark.parametrize("mode", ["endless", "announced", "same-size"])
def test_a_download_stops_at_the_locked_size_and_keeps_nothing(registry, mode):
    e = entry(registry, "mail", "1")
    size = (registry / "mail" / "1" / "adapters.safetensors").stat().st_size
    with serve(registry, mode) as (port, sent, _):
        message = {"endless": "larger than the", "announced": "is announced as", "same-size": "has sha256"}[mode]
        with pytest.raises(IntegrityError, match=message):
            pull(HttpSource(f"http://127.0.0.1:{port}"), e)
    assert not leftovers("mail")  # no half-written file, no staging folder, nothing in the cache
    if mode == "endless":
        # The client stopped reading one byte past the cap: the server could push only what
        # the socket buffers held before its writes failed, never the gigabyte it meant to.
        assert sent[0] < size + (64 << 20)


def outward_address() -> str | None:
    """This machine's address on a non-loopback interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_a_plain_http_registry_on_another_host_needs_a_pin_or_an_opt_in(registry, tmp_path):
    addr = outward_address()
    if addr is None:
        pytest.skip("no non-loopback interface to reach a server as 'another host'")
    e = entry(registry, "mail", "1")
    with serve(registry, "honest", host="0.0.0.0") as (port, _, requested):
        url = f"http://{addr}:{port}"
        regs = open_registries(ProjectPins(name="p", registries=[url]), tmp_path)
        resolved = resolve_pin(SpecialistPin(name="mail", version="1"), regs)
        with pytest.raises(IntegrityError, match="plain http:// registry on another host"):
            pull(resolved.source, resolved.entry)
        assert not any("lock.json" in p or "safetensors" in p for p in requested)  # refused before fetching anything
        assert not leftovers("mail")
        # A pinned sha256 makes the content check meaningful again ...
        assert pull(resolved.source, resolved.entry, pin_sha256=e.digest).downloaded
        cached_dir("mail", "1").joinpath("lock.json").unlink()
        # ... as does the project's explicit opt-in.
        regs = open_registries(ProjectPins(name="p", registries=[url], allow_insecure_http=True), tmp_path)
        assert pull(regs[0].source, e).downloaded


def test_which_transports_are_trusted():
    assert not HttpSource("http://registry.example").authenticated
    assert not HttpSource("http://10.0.0.5:8080/reg").authenticated
    assert HttpSource("https://registry.example").authenticated
    assert HttpSource("http://127.0.0.1:9000").authenticated and HttpSource("http://localhost:9000").authenticated
    assert HttpSource("http://[::1]:9000").authenticated
    assert HttpSource("http://registry.example", allow_insecure_http=True).authenticated
    assert source_for("reg", Path("/tmp")).authenticated
