"""The SQLite queue shared by several processes: writers take turns on `<queue>-writelock`,
and reads go on while a write waits for it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from relayd.errors import StoreUnavailable
from relayd.store.sqlite.db import Database
from relayd.store.sqlite.loopconn import CHECKPOINT_EVERY, NotHere
from relayd.store.sqlite.store import EXTERNAL_POLL, SqliteStore


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "queue.db", busy_timeout=5.0)
    await database.open()
    await database.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    yield database
    await database.close()


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """The writer lock as another process holds it (flock locks belong to the open file, so
    a second open() in this process contends like another process would)."""
    fd = os.open(f"{path}-writelock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def insert(conn: sqlite3.Connection, n: int) -> None:
    conn.execute("INSERT INTO t VALUES (?)", (n,))


async def test_a_write_waits_for_the_writer_lock_and_reads_go_on(
    db: Database, tmp_path: Path
) -> None:
    await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    with held_by_another_process(tmp_path / "queue.db"):
        pending = asyncio.ensure_future(
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        )
        await asyncio.sleep(0.2)  # time for the write to reach the lock, if it could
        assert not pending.done()
        assert await asyncio.wait_for(db.read(count), 5) == 1  # not queued behind it
    await asyncio.wait_for(pending, 5)
    assert await db.read(count) == 2


async def test_writes_queued_while_another_process_holds_the_lock_share_one_commit(
    db: Database, tmp_path: Path
) -> None:
    """The write thread takes the lock first and the waiting requests after: everything
    that queued behind another process's transaction commits together (one fsync)."""
    before = db.commits
    with held_by_another_process(tmp_path / "queue.db"):
        first = asyncio.ensure_future(
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (0)"))
        )
        await asyncio.sleep(0.1)  # the write thread now waits for the lock with it
        rest = [asyncio.ensure_future(db.write(partial(insert, n=n))) for n in range(1, 50)]
        await asyncio.sleep(0.1)
        assert not any(write.done() for write in [first, *rest])
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert db.commits - before == 1
    assert await db.read(count) == 50


async def test_two_writers_on_one_queue_never_see_busy(tmp_path: Path) -> None:
    """Two Database objects on one file stand for two processes: 200 interleaved writes
    each, no SQLITE_BUSY even with a busy timeout of zero, nothing lost."""
    first = Database(tmp_path / "queue.db", busy_timeout=0.0)
    second = Database(tmp_path / "queue.db", busy_timeout=0.0)
    await first.open()
    await second.open()
    try:
        await first.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))

        async def insert(db: Database, n: int) -> None:
            await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (n,)))

        await asyncio.gather(*(insert(db, n) for n in range(200) for db in (first, second)))
        assert await first.read(count) == await second.read(count) == 400
    finally:
        await first.close()
        await second.close()


async def test_data_version_changes_only_for_another_connections_commit(
    db: Database, tmp_path: Path
) -> None:
    """wait_for_work polls data_version to notice other processes: our own writes, and our
    own read connection, must not look like theirs."""
    insert = "INSERT INTO t VALUES (1)"
    version = await db.data_version()
    await db.write(lambda conn: conn.execute(insert))  # durable: on the write thread
    await db.read(count)
    assert not db.others_committed(version, await db.data_version())
    version = await db.data_version()
    await db.write(lambda conn: conn.execute(insert), durable=False)  # the loop's connection
    await db.read_now(count)
    assert not db.others_committed(version, await db.data_version())
    version = await db.data_version()
    other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    try:
        other.execute("INSERT INTO t VALUES (2)")
    finally:
        other.close()
    assert db.others_committed(version, await db.data_version())


async def test_reads_are_read_only(db: Database) -> None:
    with pytest.raises(Exception, match=r"attempt to write a readonly database"):
        await db.read(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))


async def test_a_commit_the_wakeup_socket_misses_still_wakes_the_waiter(tmp_path: Path) -> None:
    """The data_version poll is the fallback for a writer that does not poke the wake-up
    socket (an older relayd, a hand-run sqlite3): its commit wakes the dispatcher within
    about EXTERNAL_POLL seconds."""
    async with SqliteStore(tmp_path / "queue.db") as store:
        waiter = asyncio.create_task(store.wait_for_work(30))
        await asyncio.sleep(0.2)  # the poll has its baseline
        assert not waiter.done()
        other = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        try:
            other.execute("CREATE TABLE written_elsewhere (n INTEGER)")
        finally:
            other.close()
        await asyncio.wait_for(waiter, 5 * EXTERNAL_POLL)


async def test_a_dropped_body_is_not_zeroed_page_by_page(db: Database) -> None:
    """secure_delete = FAST on the write connection (Debian's SQLite defaults to ON, which
    rewrites every freed page of a delivered body with zeros inside the writer lock)."""
    (mode,) = await db.write(lambda conn: conn.execute("PRAGMA secure_delete").fetchone())
    assert mode == 2  # FAST


NEVER_CLOSED = """
import asyncio, sys
from pathlib import Path
from relayd.errors import StoreUnavailable
from relayd.store.sqlite.db import Database

async def main() -> None:
    db = Database(Path(sys.argv[1]), busy_timeout=5.0)
    await db.open()  # and never closed, as after a failed start

asyncio.run(main())
"""


def test_a_store_never_closed_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """The idle write thread notices that its event loop is gone and ends, so the
    interpreter can exit (a failed start must not hang the daemon)."""
    result = subprocess.run(
        [sys.executable, "-c", NEVER_CLOSED, str(tmp_path / "queue.db")],
        timeout=30,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


async def test_a_lock_held_past_lock_timeout_fails_every_waiting_write(tmp_path: Path) -> None:
    """Bounded: each write waiting for the lock gets StoreUnavailable (intake's 451) at
    lock_timeout, naming the lock file and the key; the lock freed, writes commit again."""
    db = Database(tmp_path / "queue.db", busy_timeout=5.0, lock_timeout=0.3)
    await db.open()
    try:
        with held_by_another_process(db.path):
            started = asyncio.get_running_loop().time()
            writes = [db.write(lambda conn: conn.execute("SELECT 1")) for _ in range(3)]
            failures = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 2)
            took = asyncio.get_running_loop().time() - started
        assert all(isinstance(failure, StoreUnavailable) for failure in failures), failures
        assert "queue.db-writelock" in str(failures[0]) and "queue.lock_timeout" in str(failures[0])
        assert 0.3 <= took < 1.0  # one wait for all of them, not one each
        await db.write(lambda conn: conn.execute("SELECT 1"))
    finally:
        await db.close()


async def test_close_does_not_wait_for_a_lock_another_process_holds(tmp_path: Path) -> None:
    db = Database(tmp_path / "queue.db", busy_timeout=5.0, lock_timeout=30.0)
    await db.open()
    with held_by_another_process(db.path):
        pending = asyncio.ensure_future(db.write(lambda conn: conn.execute("SELECT 1")))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(db.close(), 2)
        with pytest.raises(StoreUnavailable):
            await pending


async def test_a_waiting_writer_blocks_on_the_lock_rather_than_polling_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a polled lock sat free for up to a pause (5 ms) after its holder let go,
    while a writer in another process waited. The writer now sleeps in flock(LOCK_EX) and
    the kernel wakes it: a few calls however long the lock is held, not one per pause."""
    calls: list[int] = []
    flock = fcntl.flock

    def counted(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and threading.current_thread() is not threading.main_thread():
            calls.append(operation)
        flock(fd, operation)

    with held_by_another_process(tmp_path / "queue.db"):
        monkeypatch.setattr(fcntl, "flock", counted)
        pending = asyncio.ensure_future(db.write(partial(insert, n=1)))
        await asyncio.sleep(0.5)
        assert not pending.done()
    await asyncio.wait_for(pending, 5)
    assert await db.read(count) == 1
    assert 1 <= len(calls) <= 3, f"{len(calls)} tries of the lock in 0.5 s"


def _on_thread(threads: list[int]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        threads.append(threading.get_ident())
        conn.execute("INSERT INTO t VALUES (?)", (len(threads),))

    return op


async def test_a_delivering_side_write_runs_on_the_loops_thread_when_nothing_waits(
    db: Database,
) -> None:
    """No hop to the write thread for a lease or an outcome (durable=False) while the lock
    is free; an enqueue (durable) still goes to the write thread, which fsyncs."""
    threads: list[int] = []
    await db.write(_on_thread(threads), durable=False)
    await db.write(_on_thread(threads))
    assert threads[0] == threading.get_ident() != threads[1]
    assert await db.read_now(count) == 2


async def test_an_enqueue_no_other_could_share_commits_on_the_loops_thread(db: Database) -> None:
    """alone=True (intake's only session): a durable write too skips the hop to the write
    thread and back; without it, a durable write still goes there to share a commit."""
    threads: list[int] = []
    await db.write(_on_thread(threads), alone=True)
    await db.write(_on_thread(threads))
    assert threads[0] == threading.get_ident() != threads[1]
    assert await db.read_now(count) == 2


@pytest.mark.parametrize(
    "kind", [{"durable": False}, {"alone": True}], ids=["delivering side", "enqueue alone"]
)
async def test_a_write_that_may_run_on_the_loop_waits_for_the_lock_on_the_write_thread(
    db: Database, tmp_path: Path, kind: dict[str, bool]
) -> None:
    """With the lock held elsewhere a delivering-side write, or an enqueue alone, waits on
    the write thread (bounded by lock_timeout), never on the loop's: the loop goes on
    meanwhile (on the loop's connection a write waits only for its own fsync)."""
    threads: list[int] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick = asyncio.create_task(ticker())
    try:
        with held_by_another_process(tmp_path / "queue.db"):
            write = asyncio.create_task(db.write(_on_thread(threads), **kind))
            await asyncio.sleep(0.3)
            assert not write.done()
            assert ticks >= 10  # the loop was never blocked
        await asyncio.wait_for(write, 5)
    finally:
        tick.cancel()
    assert threads != [threading.get_ident()]
    assert await db.read_now(count) == 1


async def test_the_write_thread_takes_one_delivering_side_write_in_checkpoint_every(
    db: Database, tmp_path: Path
) -> None:
    """The loop's connection never checkpoints; the write thread's does, so the WAL stays
    bounded even when only the delivering side writes (a backlog drained)."""
    threads: list[int] = []
    blob = b"x" * 8192
    for _ in range(4 * CHECKPOINT_EVERY):
        await db.write(_on_thread(threads), durable=False)
    assert threads.count(threading.get_ident()) == 4 * CHECKPOINT_EVERY - 4
    insert = "INSERT INTO t VALUES (?)"
    for _ in range(20 * CHECKPOINT_EVERY):  # 10 MiB through the WAL
        await db.write(lambda conn: conn.execute(insert, (blob,)), durable=False)
    wal = (tmp_path / "queue.db-wal").stat().st_size
    assert wal < 7 * 1024 * 1024  # SQLite's auto-checkpoint at 1,000 pages, plus a little


async def test_data_version_is_unavailable_while_the_loops_connection_would_wait(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other-process poll skips a round on StoreError; the loop's connection finding the
    database busy must be one, not an exception that ends the poll for good."""

    def busy(op: object) -> object:
        raise NotHere

    monkeypatch.setattr(db._loop, "read", busy)
    with pytest.raises(StoreUnavailable, match="busy"):
        await db.data_version()
