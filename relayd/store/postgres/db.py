"""The PostgreSQL connection pool, transactions on it, and the driver's errors translated.

asyncpg (not psycopg 3): it is asyncio-native end to end (no libpq, no thread), speaks the
binary protocol with a per-connection prepared-statement cache, and brings its own pool and
LISTEN support, so the backend needs one dependency and no adapter layer. Every operation
borrows a pool connection for one transaction and gives it back; nothing holds a pool
connection across an upstream send.

Timeouts: no wait on the server is unbounded. Every session relayd opens gets the
settings in `Database.server_settings` (lock, statement and idle-in-transaction timeouts,
TCP keepalives), so the server ends what a frozen or vanished node left behind; every
connect, pool wait and statement has a client-side timeout too.

Errors: a driver error never leaves this module unwrapped. Connection trouble, a full disk,
a server shutting down, lock or statement timeouts and serialisation failures become
StoreUnavailable ("try again later": intake answers 451, a lane backs off); anything else
is StoreError.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from relayd.errors import StoreError, StoreUnavailable
from relayd.store.postgres.migrate import migrate
from relayd.store.postgres.sql import Conn, Q

T = TypeVar("T")
Op = Callable[[Conn], Awaitable[T]]

DEFAULT_POOL_SIZE = 10
DEFAULT_LOCK_TIMEOUT = 5.0  # seconds a statement waits for a lock (cf. sqlite busy_timeout)
DEFAULT_COMMAND_TIMEOUT = 30.0  # seconds for one statement (client and server side)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection, or to wait for a pool's
# A session idle this long inside a transaction is ended by the server, and its locks with
# it: a node frozen or cut off mid-transaction blocks the others for seconds, not hours.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0
# The server's TCP keepalives per session (idle, interval, count): the session of a host
# that vanished ends after 5 + 2 * 3 = 11 s instead of the kernel's ~2 h 11 min.
TCP_KEEPALIVES = (5, 2, 3)

# SQLSTATE classes and codes after which the same request may well succeed later.
_UNAVAILABLE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: shutdown, statement timeout, cannot connect now
        "58",  # system error: I/O error
    }
)
# lock_not_available, read_only (standby), idle_in_transaction_session_timeout
_UNAVAILABLE_CODES = frozenset({"55P03", "25006", "25P03"})


def translate(exc: BaseException) -> StoreError:
    """The StoreError for a driver or socket error: StoreUnavailable when a retry may work."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        unavailable = state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_CODES
    else:  # refused, reset, DNS, connect or command timeout, a connection lost mid-query
        unavailable = isinstance(
            exc, OSError | TimeoutError | asyncpg.exceptions.ConnectionDoesNotExistError
        )
    error = (StoreUnavailable if unavailable else StoreError)(f"postgres: {exc}")
    error.__cause__ = exc
    return error


_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise driver errors as StoreError; StoreErrors (LeaseLost...) pass unchanged."""
    try:
        yield
    except StoreError:
        raise
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


class Database:
    """The pool and its transactions; PostgresStore's only way to PostgreSQL."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.lock_timeout = lock_timeout
        self.command_timeout = command_timeout
        self.commits = 0  # committed write transactions (group commit makes this < writes)
        self.schema = ""  # current_schema() of the pool's connections, known after open()
        self.migrated = (0, 0)  # schema version before and after open()
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closed = False

    @property
    def server_settings(self) -> dict[str, str]:
        """Per-session settings of every connection relayd opens. The DSN may add more, and
        name the sessions itself (`?application_name=relayd-node2`); else "relayd"."""
        idle, interval, count = TCP_KEEPALIVES
        settings = {
            "lock_timeout": _ms(self.lock_timeout),
            "statement_timeout": _ms(self.command_timeout),
            "idle_in_transaction_session_timeout": _ms(IDLE_IN_TRANSACTION_TIMEOUT),
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(count),
        }
        if "application_name" not in urllib.parse.parse_qs(urllib.parse.urlsplit(self.dsn).query):
            settings["application_name"] = "relayd"
        return settings

    async def connect(self) -> asyncpg.Connection[asyncpg.Record]:
        """A dedicated connection outside the pool (the listener, the node's heartbeat)."""
        async with translated():
            return await asyncpg.connect(
                self.dsn,
                server_settings=self.server_settings,
                timeout=CONNECT_TIMEOUT,
                command_timeout=self.command_timeout,
            )

    async def open(self) -> None:
        """Create the pool, apply pending migrations (under an advisory lock), learn the
        schema name; StoreUnavailable when the server cannot be reached."""
        if self._pool is not None or self._closed:
            raise StoreError("the store was already opened")
        async with translated():
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                command_timeout=self.command_timeout,
                timeout=CONNECT_TIMEOUT,
                server_settings=self.server_settings,
                reset=_keep_session,
            )
        try:
            self.migrated = await self.run(migrate, write=True)
            self.schema = await self.run(_current_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.command_timeout)
            except (*_DRIVER_ERRORS, TimeoutError):
                pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pool connection for the block (errors translated)."""
        if self._pool is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        async with translated(), self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
            yield conn

    async def run(self, op: Op[T], *, write: bool = False, snapshot: bool = False) -> T:
        """`op` on a pool connection: in one transaction (counted as a commit) if `write`,
        in one REPEATABLE READ read-only snapshot if `snapshot` (a message list and its
        recipients), else as it comes (a single-statement read needs no BEGIN/COMMIT)."""
        async with self.connection() as conn:
            if write:
                async with conn.transaction():
                    result = await op(conn)
                self.commits += 1
                return result
            if snapshot:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await op(conn)
            return await op(conn)


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset of a released connection, after asyncpg's own ROLLBACK of a
    transaction left open: nothing more. asyncpg's default adds a round trip per release
    (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): two of every delivered message's
    eight. relayd sets no session state on a pool connection (SET LOCAL, transaction-level
    advisory locks; LISTEN and leadership have connections of their own), so there is none
    to reset; a session-level SET, LISTEN or advisory lock on one would be a bug."""


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


async def _current_schema(conn: Conn) -> str:
    return str(await conn.fetchval(Q["current_schema"].sql))
