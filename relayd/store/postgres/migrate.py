"""Versioned schema migrations for the PostgreSQL store.

The migrations are postgres.sql's `migration_<N>` blocks. `migrate` applies the missing
ones in order inside the caller's transaction, after taking a transaction-scoped advisory
lock keyed on the schema: nodes that start together queue up behind the first, which
migrates; the others then find the schema current and do nothing. Each applied version is
recorded in `schema_version`. A database migrated by a newer relayd is refused rather than
used with a schema this version does not know.
"""

from __future__ import annotations

from relayd.errors import StoreError
from relayd.store.postgres.sql import MIGRATIONS, SCHEMA_VERSION, Conn, Q


async def migrate(conn: Conn) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION; returns (version before, version after).

    `conn` is an asyncpg connection inside a transaction (the lock is released at COMMIT).
    """
    await conn.execute(Q["migrate_lock"].sql)
    await conn.execute(Q["migrate_untimed"].sql)
    await conn.execute(Q["schema_version_create"].sql)
    before = int(await conn.fetchval(Q["schema_version_get"].sql))
    if before > SCHEMA_VERSION:
        raise StoreError(
            f"queue database schema {before} is newer than this relayd's {SCHEMA_VERSION}; "
            "upgrade relayd"
        )
    for version, sql in MIGRATIONS[before:]:
        await conn.execute(sql)
        record = Q["schema_version_set"]
        await conn.execute(record.sql, *record.args(version=version))
    return before, SCHEMA_VERSION
