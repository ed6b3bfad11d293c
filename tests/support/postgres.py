"""PostgreSQL for tests: reachability, a private schema per test, and sync helpers.

Tests use the server at TEST_POSTGRES_DSN (default: the local one, trust auth, database
`test`). Each test gets a schema of its own (`relayd_t_<random>`) and a DSN whose
`search_path` points at it, so tests never see each other's tables; the schema is dropped
at teardown. When the server cannot be reached the test is skipped with the reason, except
under CI=true, where a missing service is a failure (README).

The sync helpers run asyncpg on a private event loop in a thread, for harness methods that
the contract suite calls synchronously (`with backend.locked():`) while its own loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest

T = TypeVar("T")

DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CONNECT_TIMEOUT = 5.0


class SyncPg:
    """A private event loop in a daemon thread; `run(coro)` blocks until it is done."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@functools.cache
def _sync() -> SyncPg:
    return SyncPg()


async def _connect(dsn: str = DSN) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)


async def _execute(sql: str, dsn: str = DSN) -> None:
    conn = await _connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@functools.cache
def unreachable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); asked once per session."""
    try:
        _sync().run(_execute("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {DSN} is unreachable: {exc!r}"
    return None


def require_postgres() -> None:
    """Skip the test when PostgreSQL is unreachable, or fail it under CI=true."""
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


def schema_dsn(schema: str, dsn: str = DSN) -> str:
    """`dsn` with search_path set to `schema` (asyncpg passes unknown query keys to the
    server as settings)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


def _quoted(schema: str) -> str:
    if not schema.replace("_", "").isalnum():
        raise ValueError(f"not a test schema name: {schema!r}")
    return f'"{schema}"'


@contextlib.contextmanager
def private_schema() -> Iterator[str]:
    """A new empty schema for one test: yields its DSN; dropped (with its tables) after."""
    require_postgres()
    schema = f"relayd_t_{secrets.token_hex(6)}"
    _sync().run(_execute(f"CREATE SCHEMA {_quoted(schema)}"))
    try:
        yield schema_dsn(schema)
    finally:
        _sync().run(_execute(f"DROP SCHEMA IF EXISTS {_quoted(schema)} CASCADE"))


@contextlib.contextmanager
def tables_locked(dsn: str, tables: tuple[str, ...]) -> Iterator[None]:
    """While entered, another session holds ACCESS EXCLUSIVE locks on `tables`."""
    sync = _sync()
    conn = sync.run(_connect(dsn))
    try:
        sync.run(conn.execute("BEGIN"))
        for table in tables:
            sync.run(conn.execute(f"LOCK TABLE {_quoted(table)} IN ACCESS EXCLUSIVE MODE"))
        yield
        sync.run(conn.execute("ROLLBACK"))
    finally:
        sync.run(conn.close())


def execute(dsn: str, sql: str) -> None:
    """Run `sql` (one or more statements, no parameters), synchronously."""
    _sync().run(_execute(sql, dsn))


def fetch(dsn: str, sql: str, *args: object) -> list[Any]:
    """The rows of one query, synchronously."""

    async def query() -> list[Any]:
        conn = await _connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return _sync().run(query())


def fetchval(dsn: str, sql: str, *args: object) -> Any:
    """One value from one query, synchronously."""

    async def query() -> Any:
        conn = await _connect(dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return _sync().run(query())
