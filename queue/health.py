"""What a running `tinygpt up` reports about its parts, for `tinygpt status`.

`up` rewrites `<home>/daemon.json` whenever something changes (Redis goes away or comes
back, a worker dies or restarts): `tinygpt status` runs in another process and must
tell an operator about a Redis outage even when it cannot reach Redis itself. A report
whose process is gone is stale and ignored. The Redis URL in it is already redacted.
"""

from __future__ import annotations

import os

import msgspec

from tinygpt.runtime import paths
from tinygpt.runtime.contracts.io import atomic_write_bytes

FILE_NAME = "daemon.json"


class WorkerHealth(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    queues: str
    pid: int | None
    state: str
    restarts: int = 0
    last_exit: str = ""


class RedisHealth(msgspec.Struct, forbid_unknown_fields=True):
    url: str  # redacted
    embedded: bool
    reachable: bool
    error: str = ""
    # Unix time the current outage began (0 while reachable).
    down_since: float = 0.0
    restarts: int = 0


class DaemonHealth(msgspec.Struct, forbid_unknown_fields=True):
    pid: int
    started_at: float
    updated_at: float
    redis: RedisHealth
    workers: list[WorkerHealth] = []
    # Where the workers' and the daemon's own logs go ("" when they go to the terminal).
    log_dir: str = ""
    # Sealed trajectory files put back on the pipeline since start (reconcile).
    reconciled: int = 0


def path():
    return paths.home() / FILE_NAME


def write(report: DaemonHealth) -> None:
    atomic_write_bytes(path(), msgspec.json.encode(report))


def clear(pid: int) -> None:
    """Remove the report of `pid` (a clean stop); another daemon's report stays."""
    current = read(check_alive=False)
    if current is not None and current.pid == pid:
        path().unlink(missing_ok=True)


def read(*, check_alive: bool = True) -> DaemonHealth | None:
    """The running daemon's report, or None (none written, unreadable, or its process is gone)."""
    try:
        report = msgspec.json.decode(path().read_bytes(), type=DaemonHealth)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if check_alive:
        try:
            os.kill(report.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, someone else's
    return report
