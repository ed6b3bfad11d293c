"""The instance lock: one `relayd run` delivers from a SQLite queue at a time.

Only the delivering daemon leases, so the daemon that holds this lock knows that every
lease it finds at start was taken by an earlier run of itself (killed, or stopped while a
send was cancelled) and may release them all: a restart then delivers at once rather than
waiting out queue.lease_time. The lock is an flock(2) of `<queue>.instance`, dropped by the
kernel when the process dies, SIGKILL included. The queue tool, sendmail and intake worker
processes share the queue without it: they never lease.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from relayd.errors import StoreError, StoreUnavailable


class InstanceLock:
    """flock of `<queue>.instance`, held from acquire() to release() (or the process's end)."""

    def __init__(self, queue_path: Path) -> None:
        self.queue_path = queue_path
        self.path = Path(f"{queue_path}.instance")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once, or raise StoreError naming the process that holds it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"the queue {self.queue_path} is in use by another `relayd run` "
                f"(pid {holder}, which holds {self.path}); stop that daemon first, or give "
                "this one a queue.path of its own"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
