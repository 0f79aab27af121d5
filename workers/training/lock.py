"""One training job per machine: an exclusive `flock` on a file in the cache directory.

Two trainings at once would fight for the same memory and cores and both crawl (or one
gets OOM-killed), so a second job waits for the first instead. `flock` is released by
the kernel when the holder dies, even by SIGKILL, so a crashed job never wedges the
machine. The holder's pid is written into the file for the "waiting for ..." message.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinygpt.runtime import paths

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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise LockBusy(f"a training job is already running (pid {holder}, lock {path})") from None
            if say:
                say(f"waiting for the running training job (pid {holder}) to finish; lock {path}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
