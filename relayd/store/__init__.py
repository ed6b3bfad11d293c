"""The queue store: `open_store` is the only place that knows which backends exist.

Callers depend on the `Store` contract in store/base.py and on StoreError; the backend is
picked by name from configuration, passed in as plain values (the store imports no
configuration module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from relayd.errors import StoreError
from relayd.store.base import Store
from relayd.store.sqlite.ops import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from relayd.store.sqlite.store import SqliteStore

BACKENDS = ("sqlite", "postgres")
DEFAULT_POOL_SIZE = 10  # as store/postgres/db.py's; the postgres modules load only when used
DEFAULT_LOCK_TIMEOUT = 5.0  # as the backends'
DEFAULT_NODE_TIMEOUT = 10.0  # as store/postgres/nodes.py's


class QueueSettings(Protocol):
    """What the store needs of the [queue] section (config.QueueConfig has it)."""

    @property
    def backend(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def dsn_text(self) -> str | None: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def lock_timeout(self) -> float: ...

    @property
    def node_timeout(self) -> float: ...


def store_for(queue: QueueSettings, node_id: str | None = None) -> Store:
    """An unopened store as the [queue] section says (the daemon, the queue tool); the
    daemon names its node (`node_id`, for a shared backend's claim_queue)."""
    return open_store(
        queue.backend,
        queue.path,
        dsn=queue.dsn_text,
        pool_size=queue.pool_size,
        lock_timeout=queue.lock_timeout,
        node_id=node_id,
        node_timeout=queue.node_timeout,
    )


def open_store(
    backend: str,
    path: Path,
    *,
    dsn: str | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    node_id: str | None = None,
    node_timeout: float = DEFAULT_NODE_TIMEOUT,
) -> Store:
    """An unopened store for `backend` (call `await store.open()`, or `async with`).

    sqlite uses `path`; postgres uses `dsn` and at most `pool_size` pooled connections, and
    names its node `node_id` (its heartbeat may lapse `node_timeout` seconds). A write waits
    at most `lock_timeout` seconds for a lock another process or node holds.
    """
    if backend == "sqlite":
        return SqliteStore(path, lock_timeout=lock_timeout)
    if backend == "postgres":
        if not dsn:
            raise StoreError("the postgres backend needs a DSN (queue.dsn)")
        # Imported here: asyncpg and the PostgreSQL modules cost a single-node SQLite
        # install (and every `relayd sendmail` run) 60 ms of start-up for nothing.
        from relayd.store.postgres.store import PostgresStore

        return PostgresStore(
            dsn,
            pool_size=pool_size,
            lock_timeout=lock_timeout,
            node_id=node_id,
            node_timeout=node_timeout,
        )
    raise StoreError(f"unknown queue backend {backend!r} (known: {', '.join(BACKENDS)})")


async def migrate_store(
    backend: str, path: Path, *, dsn: str | None = None
) -> tuple[int | None, int]:
    """Create or upgrade the schema, then close: (version before or None if unknown, after).

    `relayd migrate` runs this before starting upgraded nodes; each node's open() would
    do the same under the same lock.
    """
    store = open_store(backend, path, dsn=dsn, pool_size=1)
    await store.open()
    try:
        migrated: tuple[int, int] | None = getattr(store, "migrated", None)
        return migrated if migrated is not None else (None, SQLITE_SCHEMA_VERSION)
    finally:
        await store.close()
