"""An exclusive lock across processes: `flock` on a file, created if missing.

The kernel drops an flock when its holder dies, even by SIGKILL, so a crashed process
never wedges the next one. One lock for the model cache, the registry's index and state,
the embedded redis-server's data dir and the one-per-machine queues.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class FileLock:
    """`with FileLock(path):` blocks until held; `acquire(timeout=...)` waits at most that long."""

    def __init__(self, path: str | os.PathLike, *, mode: int = 0o666):
        self.path = Path(path)
        # Permissions of a lock file we create (less the umask); 0o600 keeps others' processes out.
        self.mode = mode
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None, *, poll_s: float = 0.02) -> bool:
        """Take the lock: block (timeout None), try once (0), or poll up to `timeout` seconds.

        Returns whether it is held; a lock already held by this object is an error.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            return False
                        time.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
