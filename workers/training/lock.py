"""One training job per machine: an exclusive file lock (`runtime/filelock.py`) in the cache directory.

Two trainings at once would fight for the same memory and cores and both crawl (or one
gets OOM-killed), so a second job waits for the first instead. `flock` is released by
the kernel when the holder dies, even by SIGKILL, so a crashed job never wedges the
machine. The holder's pid is written into the file for the "waiting for ..." message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinygpt.runtime import paths
from tinygpt.runtime.filelock import FileLock

LOCK_NAME = "training.lock"


def lock_path() -> Path:
    # Per card when the process is pinned to one (runtime/device_plan.py): each GPU trains one job.
    from tinygpt.runtime.device_plan import lock_scope

    scope = lock_scope()
    return paths.subdir("locks") / (LOCK_NAME.replace(".lock", f"{scope}.lock") if scope else LOCK_NAME)


class LockBusy(RuntimeError):
    """Raised by `training_lock(wait=False)` when another process holds the lock."""


@contextmanager
def training_lock(*, wait: bool = True, say: Callable[[str], None] | None = None, path: Path | None = None) -> Iterator[None]:
    """Hold the machine-wide training lock; blocks (or raises LockBusy) while another job has it."""
    path = Path(path or lock_path())
    lock = FileLock(path)
    if not lock.acquire(timeout=0):
        try:
            holder = path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        if not wait:
            raise LockBusy(f"a training job is already running (pid {holder}, lock {path})")
        if say:
            say(f"waiting for the running training job (pid {holder}) to finish; lock {path}")
        lock.acquire()
    try:
        path.write_text(str(os.getpid()))
        yield
    finally:
        try:
            path.write_text("")
        finally:
            lock.release()
