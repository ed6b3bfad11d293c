#!/usr/bin/env python3
"""What one message costs the store, in load-independent units, on SQLite and PostgreSQL.

Run by hand from the repository root (root, for --fsyncs: strace attaches to this process):

    .venv/bin/python bench/store_costs.py                       # both backends
    .venv/bin/python bench/store_costs.py --backend sqlite --size 102400 --fsyncs

Wall-clock throughput on a shared 2-core machine is noise; these counts are not. The
script drives the store verbs directly, as intake and a lane call them (no SMTP):

- intake: `--messages` enqueues from `--sessions` concurrent tasks (group commit shares
  a transaction between the concurrent ones, as with concurrent SMTP sessions);
- delivery: `--lanes` concurrent workers, each leasing up to 32 messages (the lane's
  BATCH), loading each body and recording a delivered outcome while it "sends" the next
  (the lane's overlap; a send takes `--send-ms`, 0 by default), until the queue is empty.
  The longer a send, the fewer outcomes arrive together to share a commit.

Per message and phase it prints: PostgreSQL round trips (every statement the pool's
connections ran, BEGIN and COMMIT included, counted by asyncpg's query logger) and the
statement mix; write transactions committed (each a WAL flush on PostgreSQL, an fsync on
SQLite unless only non-durable writes were in it); SQLite statements (the trace callback,
SAVEPOINTs included), the write lock's hold time and how many of the holds checkpointed;
fsync/fdatasync calls (with --fsyncs, by `strace -f -c`); CPU seconds of this process and,
for PostgreSQL, of its server backends (/proc/PID/stat). The CPU figures still move a
little with the machine's load; the counts do not.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relayd.store import open_store
from relayd.store.base import Store
from relayd.types import NewMessage, Recipient, RecipientOutcome, RecipientState

UPSTREAM = "bench"
LANE_BATCH = 32  # delivery/lane.py's BATCH
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# SQLite hands its trace callback each statement with its parameters expanded (a body as
# hex): with large bodies that costs more CPU than the statement, so --no-trace skips it
# for the CPU and lock-time figures.
TRACE_SQLITE = True


@dataclass
class Counts:
    """What the instrumented drivers saw during one phase."""

    statements: collections.Counter[str] = field(default_factory=collections.Counter)
    lock_holds: int = 0
    lock_seconds: float = 0.0
    lock_written: int = 0  # bytes the write threads wrote (they write only under the lock)

    def total(self) -> int:
        return sum(self.statements.values())


COUNTS = Counts()
WRITE_THREADS: set[int] = set()  # native ids of the threads that took the write lock


def _label(sql: str) -> str:
    """A short name for a statement: its first words, or the named query's first line."""
    sql = sql[:400]  # SQLite's trace expands parameters: a body's hex, 2 bytes per byte
    words = re.sub(r"\s+", " ", re.sub(r"--[^\n]*", "", sql)).strip()
    if words.upper().startswith("WITH "):
        match = re.search(r"\)\s*(INSERT|UPDATE|DELETE|SELECT)\b[^;]{0,40}", words, re.I)
        return f"WITH..{match.group(0)[1:].strip()[:40]}" if match else words[:48]
    return words[:48]


def instrument_sqlite() -> None:
    """Trace every statement of every connection, and time the queue's write lock."""
    from relayd.store.sqlite import db

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        if TRACE_SQLITE:
            conn.set_trace_callback(lambda sql: COUNTS.statements.update([_label(sql)]))
        return conn

    db.sqlite3.connect = connect  # type: ignore[assignment]
    try:  # the lock's own module; before it, a method of the Database (a before/after run)
        from relayd.store.sqlite.writelock import WriteLock

        owner, method = WriteLock, "held"
    except ImportError:
        owner, method = db.Database, "_write_lock"
    real_lock = getattr(owner, method)

    @contextlib.contextmanager
    def timed_lock(self: Any) -> Iterator[None]:
        with real_lock(self):
            WRITE_THREADS.add(threading.get_native_id())
            started = time.monotonic()
            try:
                yield
            finally:
                COUNTS.lock_holds += 1
                COUNTS.lock_seconds += time.monotonic() - started

    setattr(owner, method, timed_lock)


def instrument_postgres() -> None:
    """Count every statement the store's pool connections run."""
    import asyncpg

    from relayd.store.postgres import db

    real_create_pool = asyncpg.create_pool

    async def init(conn: Any) -> None:
        conn.add_query_logger(lambda logged: COUNTS.statements.update([_label(logged.query)]))

    def create_pool(*args: Any, **kwargs: Any) -> Any:
        return real_create_pool(*args, init=init, **kwargs)

    db.asyncpg.create_pool = create_pool  # type: ignore[attr-defined]


def message(index: int, size: int, now: float) -> NewMessage:
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: bench %d\r\n\r\n" % index + line * max(1, size // len(line))
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient(f"rcpt{index}@example.net"),),
        body=body,
        upstream=UPSTREAM,
        message_id=f"<{index}.{secrets.token_hex(4)}@bench>",
        received_at=now,
        client="127.0.0.1",
    )


async def intake(store: Store, messages: int, sessions: int, size: int) -> None:
    next_index = iter(range(messages))

    async def session() -> None:
        for index in next_index:
            await store.enqueue(message(index, size, time.time()))

    await asyncio.gather(*(session() for _ in range(sessions)))


async def deliver(store: Store, lanes: int, send_seconds: float) -> int:
    delivered = 0

    async def worker(name: str) -> None:
        nonlocal delivered
        while True:
            now = time.time()
            leases = await store.lease_due(UPSTREAM, now, LANE_BATCH, 300.0, name)
            if not leases:
                return
            writes = []
            for lease in leases:
                await store.load_body(lease.queue_id)
                await asyncio.sleep(send_seconds)  # the send
                outcomes = [
                    RecipientOutcome(r, RecipientState.DELIVERED, "250 2.0.0 ok")
                    for r in lease.addresses
                ]
                writes.append(asyncio.create_task(store.record_outcome(lease, outcomes, now)))
                delivered += 1
            await asyncio.gather(*writes)

    await asyncio.gather(*(worker(f"lane{i}") for i in range(lanes)))
    return delivered


async def backend_pids(admin: Any, schema: str) -> list[int]:
    """The server processes of the store's sessions (named after the schema)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    return [int(row["pid"]) for row in await admin.fetch(sql, schema)]


def written_bytes(threads: set[int]) -> int:
    """Bytes these threads of this process passed to write(2) and kin, so far."""
    total = 0
    for tid in threads:
        with contextlib.suppress(OSError):
            io = Path(f"/proc/self/task/{tid}/io").read_text()
            total += int(re.search(r"^wchar: (\d+)", io, re.M).group(1))  # type: ignore[union-attr]
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


class Fsyncs:
    """fsync/fdatasync calls of this process (every thread) during a phase, by strace -f -y
    (paths, so a sync of the database file itself, a checkpoint's, is told from the WAL's)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = Path()

    def start(self) -> None:
        if not self.enabled:
            return
        self.out = Path(tempfile.mkdtemp(prefix="relayd-strace-")) / "trace"
        command = ["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(self.out)]
        self.proc = subprocess.Popen([*command, "-p", str(os.getpid())], stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread

    def stop(self) -> tuple[int, int] | None:
        """(calls, calls on a database file rather than its -wal or a directory)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()
        calls = re.findall(r"f(?:data)?sync\(\d+<([^>]*)>", self.out.read_text())
        self.out.unlink()
        self.out.parent.rmdir()
        return len(calls), sum(1 for path in calls if path.endswith(".db"))


BASE_DSN = "postgresql://127.0.0.1/test"


async def run(backend: str, args: argparse.Namespace) -> None:
    schema = f"bench_costs_{secrets.token_hex(4)}"
    tmp = tempfile.TemporaryDirectory(prefix="relayd-costs-")
    dsn = None
    admin: Any = None
    instrument_sqlite() if backend == "sqlite" else instrument_postgres()
    if backend == "postgres":
        import asyncpg

        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        joiner = "&" if "?" in args.dsn else "?"
        dsn = f"{args.dsn}{joiner}search_path={schema}&application_name={schema}"
    store = open_store(backend, Path(tmp.name) / "queue.db", dsn=dsn)
    await store.open()
    fsyncs = Fsyncs(args.fsyncs)
    try:
        for phase in ("intake", "delivery"):
            COUNTS.__init__()  # type: ignore[misc]
            pids = await backend_pids(admin, schema) if backend == "postgres" else []
            commits = store.commits  # type: ignore[attr-defined]
            fsyncs.start()
            written = written_bytes(WRITE_THREADS)
            cpu, server_cpu, started = time.process_time(), cpu_seconds(pids), time.monotonic()
            if phase == "intake":
                await intake(store, args.messages, args.sessions, args.size)
                count = args.messages
            else:
                count = await deliver(store, args.lanes, args.send_ms / 1000)
            wall = time.monotonic() - started
            cpu = time.process_time() - cpu
            pids = await backend_pids(admin, schema) if backend == "postgres" else []
            server_cpu = cpu_seconds(pids) - server_cpu
            fsync_calls = fsyncs.stop()
            COUNTS.lock_written = written_bytes(WRITE_THREADS) - written
            report(
                backend, phase, count, store.commits - commits, cpu, server_cpu, wall, fsync_calls
            )  # type: ignore[attr-defined]
    finally:
        await store.close()
        tmp.cleanup()
        if backend == "postgres":
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()


def report(
    backend: str,
    phase: str,
    count: int,
    commits: int,
    cpu: float,
    server_cpu: float,
    wall: float,
    fsync_calls: tuple[int, int] | None,
) -> None:
    per = max(count, 1)
    print(f"\n{backend} {phase}: {count} messages in {wall:.2f}s (wall time: noise)")
    print(f"  statements/msg        {COUNTS.total() / per:8.2f}")
    print(f"  write commits/msg     {commits / per:8.3f}")
    if fsync_calls is not None:
        calls, on_db = fsync_calls
        print(f"  fsync+fdatasync/msg   {calls / per:8.3f}   ({on_db} of the database file)")
    print(f"  relayd CPU ms/msg     {cpu * 1000 / per:8.3f}")
    if backend == "postgres":
        print(f"  server CPU ms/msg     {server_cpu * 1000 / per:8.3f}")
    else:
        print(
            f"  write lock ms/msg     {COUNTS.lock_seconds * 1000 / per:8.3f}"
            f"   ({COUNTS.lock_holds} holds)"
        )
        print(
            f"  KiB written under it  {COUNTS.lock_written / 1024 / per:8.1f}"
            "   (by the write thread: the WAL, and the database file when it checkpoints)"
        )
    for label, n in COUNTS.statements.most_common(12):
        print(f"    {n / per:7.3f}  {label}")


def _shared_process(
    role: str, path: str, messages: int, args: argparse.Namespace, out: Any
) -> None:
    """One process of --shared: enqueue `messages`, or deliver until `messages` are done."""
    global TRACE_SQLITE
    TRACE_SQLITE = False
    instrument_sqlite()

    async def work() -> None:
        store = open_store("sqlite", Path(path))
        await store.open()
        done = 0
        if role == "intake":
            await intake(store, messages, args.sessions, args.size)
            done = messages
        while done < messages:
            delivered = await deliver(store, args.lanes, args.send_ms / 1000)
            done += delivered
            if not delivered:
                await asyncio.sleep(0.005)  # the lanes' wait for work
        await store.close()
        out.put((role, COUNTS.lock_seconds, store.commits))  # type: ignore[attr-defined]

    asyncio.run(work())


def shared(args: argparse.Namespace) -> None:
    """--shared N: N intake processes and one delivering process on one SQLite queue, all at
    once, as the daemon runs with server.workers = N: how busy the queue's write lock is."""
    import multiprocessing

    per_intake = args.messages // args.shared
    total = per_intake * args.shared
    with tempfile.TemporaryDirectory(prefix="relayd-costs-") as tmp:
        path = str(Path(tmp) / "queue.db")
        asyncio.run(_create(path))
        out: Any = multiprocessing.Queue()
        roles = [("intake", per_intake)] * args.shared + [("delivery", total)]
        procs = [
            multiprocessing.Process(target=_shared_process, args=(role, path, n, args, out))
            for role, n in roles
        ]
        started = time.monotonic()
        for proc in procs:
            proc.start()
        results = [out.get() for _ in procs]
        wall = time.monotonic() - started
        for proc in procs:
            proc.join()
    held = sum(seconds for _, seconds, _ in results)
    commits = sum(n for _, _, n in results)
    print(f"\nsqlite shared by {args.shared} intake processes and a delivering one:")
    print(f"  {total} messages enqueued and delivered in {wall:.2f}s (wall time: noise)")
    print(f"  write commits/msg     {commits / total:8.3f}   (all processes)")
    print(f"  write lock ms/msg     {held * 1000 / total:8.3f}   (held, all processes)")
    print(f"  write lock busy       {held / wall * 100:7.0f} %  (of the wall time)")


async def _create(path: str) -> None:
    store = open_store("sqlite", Path(path))
    await store.open()
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240, help="body bytes")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent enqueues")
    parser.add_argument("--lanes", type=int, default=4, help="concurrent lane workers")
    parser.add_argument(
        "--send-ms", type=float, default=0.0, help="how long each lane's send takes"
    )
    parser.add_argument("--dsn", default=BASE_DSN)
    parser.add_argument("--fsyncs", action="store_true", help="count fsyncs (strace, root)")
    parser.add_argument(
        "--no-trace", action="store_true", help="SQLite: no statement counts (CPU, lock time)"
    )
    parser.add_argument(
        "--shared",
        type=int,
        default=0,
        metavar="N",
        help="SQLite: N intake processes and a delivering one at once (lock busy %%)",
    )
    args = parser.parse_args()
    global TRACE_SQLITE  # a switch set once, before any connection
    TRACE_SQLITE = not args.no_trace
    if args.shared:
        shared(args)
        return
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    print(
        f"{args.messages} messages of {args.size} bytes, {args.sessions} concurrent "
        f"enqueues, {args.lanes} lane workers"
    )
    for backend in backends:
        asyncio.run(run(backend, args))


if __name__ == "__main__":
    main()
