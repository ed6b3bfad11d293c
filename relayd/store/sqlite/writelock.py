"""The queue's write lock between processes: flock(2) on `<queue>-writelock`, taken the
moment another process frees it, given up after lock_timeout or at once when closing.

A writer that found the lock held used to poll it (LOCK_NB, sleeping 0.5 ms doubling to
5 ms), so the freed lock sat idle for up to a pause while a writer waited in another
process: intake processes and the delivering one take turns hundreds of times a second,
and every turn lost up to a pause. Now, when the lock is held, a helper thread blocks in
flock(LOCK_EX) on an open file of its own (flock locks belong to the open file, so the
two exclude each other as two processes do); the kernel wakes it when the holder lets go
and the writer, which waited for the helper at most lock_timeout, holds the lock through
it. A helper that gets the lock after its writer gave up lets it go at once.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from relayd.errors import StoreUnavailable

CLOSING_CHECK = 0.05  # seconds between a waiting writer's looks at `closing`


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreUnavailable(f"cannot open {path}: {exc}") from exc


class WriteLock:
    """The lock file at `path`; `held()` holds it for a block (one writer thread at a time)."""

    def __init__(self, path: Path, timeout: float, closing: threading.Event) -> None:
        self.path = path
        self.timeout = timeout  # queue.lock_timeout
        self._closing = closing  # set when the store closes: give up at once
        self._fd: int | None = None
        self._waiter: _Waiter | None = None  # started the first time the lock is found held

    def open(self) -> None:
        self._fd = _open(self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._waiter is not None:
            self._waiter.stop()
            self._waiter = None

    @contextmanager
    def held(self) -> Iterator[None]:
        release = self._take()
        try:
            yield
        finally:
            release()

    def take_now(self) -> Callable[[], None] | None:
        """The lock if it is free this moment (how to let it go), else None."""
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return partial(fcntl.flock, self._fd, fcntl.LOCK_UN)

    def _take(self) -> Callable[[], None]:
        """The lock within `timeout`, else StoreUnavailable naming the lock file; returns
        how to let it go."""
        release = self.take_now()
        if release is not None:
            return release
        if not self._closing.is_set():
            if self._waiter is None or self._waiter.stopped:
                self._waiter = _Waiter(_open(self.path))
            if self._waiter.acquire(time.monotonic() + self.timeout, self._closing):
                return self._waiter.release
        if self._closing.is_set():
            raise StoreUnavailable(f"closing while another process holds {self.path}")
        raise StoreUnavailable(
            f"another process has held the queue's write lock {self.path} for "
            f"over {self.timeout:g}s (queue.lock_timeout): a stuck `relayd queue` "
            f"command or a backup? `fuser -v {self.path}` names it"
        )


class _Waiter:
    """A thread that blocks in flock(LOCK_EX) on `fd` whenever a writer wants the lock."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._wanted = False  # a writer waits in acquire()
        self._granted = False  # the thread holds the lock for that writer
        self._stopped = False
        thread = threading.Thread(target=self._run, name="relayd-sqlite-writelock", daemon=True)
        thread.start()

    def acquire(self, deadline: float, closing: threading.Event) -> bool:
        """True once the lock is held (let go with release()); False at `deadline` or when
        `closing` is set."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()
            while not self._granted:
                remaining = deadline - time.monotonic()
                if closing.is_set() or remaining <= 0 or self._stopped:
                    self._wanted = False
                    return False
                self._cond.wait(min(remaining, CLOSING_CHECK))
            self._granted = False
            return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @property
    def stopped(self) -> bool:
        """stop() was called, or flock failed: the thread is gone or going."""
        return self._stopped

    def stop(self) -> None:
        """End the thread; one blocked in flock ends once it gets the lock (a daemon thread:
        it never holds up the process's exit, and the lock goes with the process)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._wanted and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks, without the GIL
                with self._cond:
                    if self._wanted and not self._stopped:
                        self._wanted = False
                        self._granted = True
                        self._cond.notify_all()
                        continue
                fcntl.flock(self._fd, fcntl.LOCK_UN)  # its writer gave up meanwhile
        except OSError:
            with self._cond:  # a writer waiting now gives up at its deadline
                self._stopped = True
                self._cond.notify_all()
        finally:
            os.close(self._fd)
