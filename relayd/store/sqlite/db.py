"""Two SQLite connections on two threads; the write thread commits in groups.

sqlite3 blocks, so each connection lives on a dedicated thread and the event loop awaits
futures. Every write request goes into the write thread's queue. The thread takes the
first, then the queue's write lock (below), and only then every request that queued
meanwhile: it runs them all in ONE transaction (each inside a SAVEPOINT, so one failing
request fails only its own caller), commits once and answers every caller in one call to
the loop. With synchronous=FULL a commit is an fsync, so N concurrent enqueues cost one
fsync rather than N, and none is answered before it is durable; and the longer the lock
takes, the more requests share the commit that follows.

Only writes that decide a 250 need that fsync. The delivering side's (write(durable=False):
leases, releases, outcomes, the ledger) commit with synchronous=NORMAL: in WAL mode a
NORMAL commit survives a crash of the process, and a power cut loses only the commits since
the WAL's last fsync, so at worst a message whose outcome was lost is sent again (at least
once, as Postfix), never lost. Frames follow one another in the one WAL, so the next FULL
commit's fsync (any process's: intake workers, the queue tool, sendmail) makes the NORMAL
ones before it durable too; a checkpoint fsyncs the WAL before it copies frames.

Reads run on the second connection in autocommit mode: WAL lets them proceed while a write
waits for the lock or commits, and they always see committed state. The delivery loop's
small reads (read_now), and the delivering side's writes when nothing of this process is
queued for the write thread, run at once on a third connection on the event loop's own
thread, which never waits for a lock (sqlite/loopconn.py); what would wait goes to the
threads. So does an enqueue that no other could share a commit with (`alone`: the only
session an intake process serves), fsync and all: a group of one gains nothing from the
write thread, and the two hops to it and back, gone, gave a one-session client a fifth to a
quarter more (bench/README.md).

Between processes sharing the queue (intake workers, the queue tool) the writers take turns
on an flock(2) of `<queue>-writelock` before SQLite's own lock (sqlite/writelock.py): a
blocked process takes it the moment it is freed, where SQLite's busy handler sleeps in
steps of up to 100 ms. It waits at most `lock_timeout` (queue.lock_timeout), and not at all
once the store is closing: a process that keeps the lock (a stuck queue command, a backup)
costs a client a 451, never a hang, and holds up shutdown no longer than the writes in
flight wait. Every request waiting when the lock times out fails with it.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from relayd.errors import StoreError, StoreUnavailable
from relayd.store.batching import MAX_BATCH
from relayd.store.sqlite import ops as schema_ops
from relayd.store.sqlite.errors import translate, wrap
from relayd.store.sqlite.loopconn import SYNC_FULL, SYNC_NORMAL, LoopConnection, NotHere
from relayd.store.sqlite.writelock import WriteLock

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

IDLE_CHECK = 0.5  # seconds the idle write thread waits before it checks the loop is alive
DEFAULT_LOCK_TIMEOUT = 5.0


@dataclass
class _Request:
    op: Op
    future: asyncio.Future[Any]
    durable: bool = True


@dataclass
class _Result:
    value: Any = None
    error: Exception | None = None


class _BatchFailed(Exception):
    """The batch transaction as a whole was lost to `cause`; every request in it fails."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Database:
    """The connection, its thread and its writer; SqliteStore's only way to SQLite."""

    def __init__(
        self, path: Path, busy_timeout: float, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout  # SQLite's own lock, after the writer lock
        self.lock_timeout = lock_timeout  # the writer lock (module docstring)
        self.lock_path = Path(f"{path}-writelock")
        self.commits = 0  # committed write transactions (group commit makes this < writes)
        self._synchronous_full = True  # the schema's pragmas start with synchronous=FULL
        self._conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._writer: asyncio.Future[None] | None = None  # the write thread's loop
        self._closed = False
        self._closing = threading.Event()  # the write thread's lock wait gives up at once
        self._lock = WriteLock(self.lock_path, lock_timeout, self._closing)
        self._loop = LoopConnection(path, self.lock_path, self._closing)  # on the loop's thread

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None or self._closed:
            raise StoreError("the store was already opened")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayd-sqlite")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relayd-sqlite-read")
        try:
            await self._on_thread(self._connect)
            await self._on_thread(self._connect_reader, self._reader)
            self._loop.open()
        except BaseException:
            await self._shut_threads()
            self._closed = True
            raise
        loop = asyncio.get_running_loop()
        self._writer = loop.run_in_executor(self._executor, self._write_loop, loop)

    async def close(self) -> None:
        """Refuse new work, let the writer commit what is queued, close on the thread."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._writer is not None:
            self._requests.put(None)
            await self._writer
        await self._shut_threads()

    async def _shut_threads(self) -> None:
        self._loop.close()
        if self._reader is not None:
            await self._on_thread(self._disconnect_reader, self._reader)
            self._reader.shutdown(wait=True)
        if self._executor is not None:
            await self._on_thread(self._disconnect)
            self._executor.shutdown(wait=True)

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc}") from exc
        # isolation_level=None: the writer issues BEGIN/COMMIT itself.
        self._conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        self._lock.open()
        with self._lock.held():
            schema_ops.create_schema(self._conn)

    def _connect_reader(self) -> None:
        self._read_conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None
        )
        self._read_conn.execute("PRAGMA query_only = ON")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._lock.close()

    def _disconnect_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    async def _on_thread(
        self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None
    ) -> T:
        executor = executor or self._executor
        if executor is None:
            raise StoreError("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _reading(self) -> sqlite3.Connection:
        if self._read_conn is None:
            raise StoreError("the store is closed")
        return self._read_conn

    def _check_open(self) -> None:
        if self._closed or self._writer is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")

    # --- reads and writes -----------------------------------------------------------

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on the read connection (autocommit: it sees committed data)."""
        self._check_open()
        return await self._on_thread(lambda: op(self._reading()), self._reader)

    async def read_now(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a small indexed read `op` at once on the loop's thread (module docstring);
        on the read thread if SQLite would have to wait for a lock."""
        self._check_open()
        try:
            return self._loop.read(op)
        except NotHere:
            return await self.read(op)

    async def data_version(self) -> tuple[int, int]:
        """SQLite's data_version of the write connection and of the loop's: each changes
        when any other connection commits, this process's other one included, so another
        process committed only if both changed (see others_committed)."""
        pragma = "PRAGMA data_version"
        row = await self._queued(lambda conn: conn.execute(pragma).fetchone(), durable=False)
        try:  # this connection's own value: the read thread's would be another's
            here = self._loop.read(lambda conn: conn.execute(pragma).fetchone())
        except NotHere as exc:
            raise StoreUnavailable("sqlite: the database is busy; data_version next time") from exc
        return int(row[0]), int(here[0])

    @staticmethod
    def others_committed(before: tuple[int, int], now: tuple[int, int]) -> bool:
        """Whether another process committed between two data_version() calls (or this one
        through both of its connections: a wake-up too many, never one too few)."""
        return all(b != n for b, n in zip(before, now, strict=True))

    async def write(
        self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True, alone: bool = False
    ) -> T:
        """Run `op` in the writer's next batch; returns once that batch has committed.

        durable=False is for bookkeeping that may be lost to a power cut, never to a crash
        (leases, attempt outcomes: at worst a message is delivered twice): a batch of only
        such writes commits with synchronous=NORMAL, skipping the fsync. A batch with any
        durable write (an accepted message) fsyncs, and so makes everything before it
        durable too. alone=True: no other write of this process could join this one's
        commit, so a durable one too commits at once on the loop's connection when it
        need not wait for a lock (module docstring).
        """
        self._check_open()
        if (alone or not durable) and self._requests.empty():  # nothing of ours waits
            try:
                value = self._loop.write(op, durable=durable)
            except NotHere:
                pass
            else:
                self.commits += 1
                return value
        return await self._queued(op, durable)

    async def _queued(self, op: Callable[[sqlite3.Connection], T], durable: bool) -> T:
        """`op` in the write thread's next batch."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.put(_Request(op, future, durable))
        return cast(T, await future)

    def _write_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The write thread, until close()'s sentinel: a batch at a time (module docstring)."""
        stopping = False
        while not stopping:
            try:
                first = self._requests.get(timeout=IDLE_CHECK)
            except queue.Empty:
                if loop.is_closed():  # never closed (a failed start): let the process exit
                    return
                continue
            if first is None:
                return
            batch = [first]
            try:
                with self._lock.held():
                    stopping = self._take_waiting(batch)
                    results = self._run_batch(batch)
            except StoreUnavailable as exc:  # the lock: fail everyone who waited for it
                stopping = self._take_waiting(batch)
                results = [_Result(error=StoreUnavailable(str(exc))) for _ in batch]
            except Exception as exc:  # the writer must outlive any one batch
                results = [_Result(error=StoreError(f"write batch failed: {exc}")) for _ in batch]
            try:
                loop.call_soon_threadsafe(_answer, batch, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _take_waiting(self, batch: list[_Request]) -> bool:
        """Add the requests queued now to `batch`; True once close()'s sentinel is seen."""
        while len(batch) < MAX_BATCH:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return False
            if request is None:
                return True
            batch.append(request)
        return False

    def _run_batch(self, batch: list[_Request]) -> list[_Result]:
        """On the thread, holding the write lock: one transaction, one SAVEPOINT per op."""
        conn = self._connection()
        durable = any(request.durable for request in batch)
        if durable != self._synchronous_full:
            conn.execute(SYNC_FULL if durable else SYNC_NORMAL)
            self._synchronous_full = durable
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [self._run_one(conn, request.op) for request in batch]
            conn.execute("COMMIT")
        except (sqlite3.Error, _BatchFailed) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            cause = exc.cause if isinstance(exc, _BatchFailed) else exc
            # One exception object per caller: each raise gets its own traceback.
            return [_Result(error=wrap(cause)) for _ in batch]
        self.commits += 1
        return results

    @staticmethod
    def _run_one(conn: sqlite3.Connection, op: Op) -> _Result:
        conn.execute("SAVEPOINT request")
        try:
            value = op(conn)
        except Exception as exc:
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (I/O error, disk full): the
                # requests before this one are lost too.
                raise _BatchFailed(exc) from exc
            conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
            return _Result(error=wrap(exc))
        conn.execute("RELEASE request")
        return _Result(value=value)


def _answer(batch: list[_Request], results: list[_Result]) -> None:
    """On the loop: hand each caller its result (a cancelled caller has gone)."""
    for request, result in zip(batch, results, strict=True):
        if request.future.done():
            continue
        if result.error is not None:
            request.future.set_exception(result.error)
        else:
            request.future.set_result(result.value)
