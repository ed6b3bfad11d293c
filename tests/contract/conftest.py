"""Fixtures for the store contract suite: one `store` per backend, plus backend harnesses.

The suite in test_store.py is written once against the `Store` contract; each backend
adds a `Backend` harness here (how to build a store on a fresh database, how to make the
database refuse writes, how to look at the ledger from outside) and a name in BACKENDS.
PostgreSQL runs under the `postgres` marker, each test in a schema of its own
(tests/support/postgres.py); it is skipped with the reason when the server is unreachable,
and fails instead under CI=true.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

import pytest

from relayd.store.base import Store
from relayd.store.postgres.store import PostgresStore
from relayd.store.sqlite.store import SqliteStore
from tests.support import postgres

# Short, so that the "database is locked" test fails fast; nothing else contends.
BUSY_TIMEOUT = 0.2


class ContractStore(Store, Protocol):
    """What the suite needs beyond base.py: `async with` and the commit counter."""

    @property
    def commits(self) -> int: ...

    async def __aenter__(self) -> ContractStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Backend(Protocol):
    name: str

    def make(self) -> ContractStore:
        """A new, unopened store on this test's database (the same database every call)."""

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """While entered, another client holds the database so that writes cannot commit."""

    def ledger_rows(self, upstream: str) -> int:
        """How many send-ledger rows the database holds for `upstream`."""


class SqliteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "queue" / "queue.db"

    def make(self) -> SqliteStore:
        return SqliteStore(self.path, lock_timeout=BUSY_TIMEOUT)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def ledger_rows(self, upstream: str) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM send_ledger WHERE upstream = ?", (upstream,)
            ).fetchone()
        return int(count)


class PostgresBackend:
    name = "postgres"
    TABLES = ("messages", "bodies", "recipients")

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def make(self) -> PostgresStore:
        # Short lock wait, so that the "database is locked" test fails fast.
        return PostgresStore(self.dsn, pool_size=4, lock_timeout=BUSY_TIMEOUT)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return postgres.tables_locked(self.dsn, self.TABLES)

    def ledger_rows(self, upstream: str) -> int:
        sql = "SELECT count(*) FROM send_ledger WHERE upstream = $1"
        return int(postgres.fetchval(self.dsn, sql, upstream))


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path)
    elif request.param == "postgres":
        with postgres.private_schema() as dsn:
            yield PostgresBackend(dsn)
    else:
        raise AssertionError(f"no harness for {request.param}")


class StoreFactory:
    """Builds stores on the backend's database and closes every one it built."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.made: list[ContractStore] = []

    async def open(self) -> ContractStore:
        store = self.backend.make()
        self.made.append(store)
        await store.open()
        return store

    async def close_all(self) -> None:
        for store in self.made:
            await store.close()


@pytest.fixture
async def store_factory(backend: Backend) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend)
    yield factory
    await factory.close_all()


@pytest.fixture
async def store(store_factory: StoreFactory) -> ContractStore:
    return await store_factory.open()
