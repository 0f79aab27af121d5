"""Run the embedded redis-server in the foreground.

Its data (an append-only file, fsync every second) lives under the TinyGPT cache dir
($TINYGPT_HOME/redis unless --data-dir says otherwise); it listens on a unix socket
there, and also on 127.0.0.1 with --port. Ctrl-C or SIGTERM shuts it down cleanly, AOF
flushed. Without REDIS_URL, workers and the runtime find this server on their own (and
start it in the background when it is not running; --stop stops that one).
"""

from __future__ import annotations

import argparse
import shlex
import signal
from pathlib import Path

EXAMPLE = "tinygpt redis --port 6379"

# Signals that mean "stop": Ctrl-C, a service manager, a closed terminal.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=None, help="also listen on 127.0.0.1:PORT (0 = any free port)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where the AOF, config and log live (default: <cache>/redis)"
    )
    parser.add_argument(
        "--stop", action="store_true", help="stop the server running for the data dir (e.g. one started on demand)"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from tinygpt.queue.embedded import EmbeddedRedis, EmbeddedRedisError, find_running
    from tinygpt.runtime import paths

    out = Console(soft_wrap=True)  # URLs and paths must stay on one line to be copied
    err = Console(stderr=True, soft_wrap=True)
    data_dir = args.data_dir if args.data_dir is not None else paths.redis_dir()

    if args.stop:
        try:
            running = find_running(data_dir)
            if running is None:
                out.print(f"no embedded redis-server is running for {escape(str(data_dir))}")
                return 0
            pid = running.pid
            running.stop()
        except EmbeddedRedisError as e:
            err.print(f"[red]error:[/] {escape(str(e))}")
            return 1
        out.print(f"stopped redis-server pid {pid} ({escape(str(data_dir))}); AOF flushed")
        return 0

    try:
        server = EmbeddedRedis(data_dir, port=args.port)
    except ValueError as e:
        err.print(f"[red]error:[/] --port: {escape(str(e))}")
        return 2
    # From here a stop signal is a KeyboardInterrupt, handled below.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in _STOP_SIGNALS}
    try:
        try:
            server.start()
        except EmbeddedRedisError as e:
            err.print(f"[red]error:[/] {escape(str(e))}")
            return 1
        except KeyboardInterrupt:
            return 130  # start() stops a half-started server itself
        if server.reused:
            err.print(
                f"[red]error:[/] a redis-server (pid {server.pid}) already runs for {escape(str(server.data_dir))} "
                f"at {escape(server.url)}; use it as it is, or stop it with `tinygpt redis --stop`"
            )
            return 1
        try:
            _show(out, server, escape)
            code = server.wait()
        except KeyboardInterrupt:
            # A second Ctrl-C must not cut the shutdown short (stop() is bounded anyway).
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            out.print("stopping redis-server ...")
            server.stop()
            out.print(f"stopped; AOF flushed to {escape(str(server.aof_path))}" if server.appendonly else "stopped")
            return 0
        err.print(f"[red]error:[/] redis-server exited on its own with code {code}")
        err.print(escape(server.log_tail()))
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _show(out, server, escape) -> None:
    with server.client() as c:
        version = c.info("server").get("redis_version", "?")
    rows = [
        ("URL", server.url),
        ("TCP", server.tcp_url or "off (unix socket only; --port adds one)"),
        ("data dir", str(server.data_dir)),
        ("AOF", f"on, fsync every second: {server.aof_path}" if server.appendonly else "off"),
        ("log", str(server.log_path)),
        ("server", f"redis {version}, pid {server.pid}, {server.binary}"),
        ("started in", f"{server.startup_seconds * 1000:.0f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    out.print("[bold green]embedded redis-server running[/]")
    for key, value in rows:
        out.print(f"  [bold]{key.ljust(width)}[/]  {escape(value)}")
    export = f"export REDIS_URL={shlex.quote(server.url)}"  # quoted: `?` is a shell glob
    out.print(f"  other shells: [bold]{escape(export)}[/] (optional: tinygpt finds it on its own)")
    out.print("  Ctrl-C to stop")
    out.file.flush()  # a pipe (service log, test) sees the banner now, not at exit
