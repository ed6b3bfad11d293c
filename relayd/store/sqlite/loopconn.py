"""The event loop's own SQLite connection: the delivery loop's small reads, its writes that
need no fsync, and an enqueue that no other could share a commit with, done at once on the
loop's thread whenever they need not wait for a lock.

Each hop to a store thread and back costs more than such a read or write, and while the
loop and a store thread both run Python they trade the GIL at every SQLite call: about 90
futex calls per delivered message with the reads on the read thread, 30 with the writes
still on the write thread. Here nothing waits: the connection's busy timeout is 0 and the
write lock is tried, not waited for. Whatever would wait raises NotHere, and the caller
(sqlite/db.py's Database) hands the work to its threads, which may wait, bounded.

Writes commit with synchronous=NORMAL, as every delivering-side write (db.py's docstring
says why that is safe), and this connection never checkpoints the WAL (a checkpoint
copies pages and fsyncs): one write in CHECKPOINT_EVERY goes to the write thread, whose
connection checkpoints as SQLite's auto-checkpoint asks, so the WAL stays bounded even when
the delivering process is the only writer (draining a backlog).

A durable write (an enqueue that db.py's Database was told no other could share: the only
session an intake process serves) commits with synchronous=FULL: its fsync is done on the
loop's thread. That blocks the loop for as long as the disk takes, and no other session:
there is none (with `workers = 1`, the delivery work of the process waits as long).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from relayd.errors import StoreError
from relayd.store.sqlite.errors import translate, would_wait, wrap
from relayd.store.sqlite.writelock import WriteLock

T = TypeVar("T")

CHECKPOINT_EVERY = 64  # one delivering-side write in this many goes to the write thread
SYNC_FULL = "PRAGMA synchronous = FULL"
SYNC_NORMAL = "PRAGMA synchronous = NORMAL"


class NotHere(Exception):
    """This read or write would wait (a lock held, a checkpoint due): a thread must do it."""


class LoopConnection:
    """A connection used only on the event loop's thread; it never waits for a lock."""

    def __init__(self, path: Path, lock_path: Path, closing: threading.Event) -> None:
        self.path = path
        self._lock = WriteLock(lock_path, 0.0, closing)  # only ever tried (take_now)
        self._conn: sqlite3.Connection | None = None
        self._writes = 0  # for CHECKPOINT_EVERY

    def open(self) -> None:
        self._lock.open()
        try:
            conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None)
            conn.execute(SYNC_NORMAL)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._lock.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op` on this connection in autocommit mode (it sees committed data)."""
        try:
            return op(self._connection())
        except sqlite3.Error as exc:
            if would_wait(exc):
                raise NotHere from exc
            raise translate(exc) from exc

    def write(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """`op` in a transaction of its own, committed with an fsync only if `durable`."""
        conn = self._connection()
        self._writes += 1
        if self._writes % CHECKPOINT_EVERY == 0:
            raise NotHere
        release = self._lock.take_now()
        if release is None:
            raise NotHere
        try:
            if not durable:
                return self._transaction(conn, op)
            conn.execute(SYNC_FULL)  # outside the transaction: SQLite refuses it inside
            try:
                return self._transaction(conn, op)
            finally:
                if not conn.in_transaction:
                    conn.execute(SYNC_NORMAL)
        finally:
            release()

    @staticmethod
    def _transaction(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if would_wait(exc):
                    raise NotHere from exc
                raise translate(exc) from exc
            try:
                value = op(conn)
                conn.execute("COMMIT")
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                error = wrap(exc)
                if error is exc:
                    raise
                raise error from exc
        except sqlite3.Error as exc:  # the ROLLBACK itself failed
            raise translate(exc) from exc
        return value
