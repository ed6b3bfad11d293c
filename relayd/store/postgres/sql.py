"""postgres.sql's named blocks as asyncpg queries: `:name` placeholders become `$n`.

The SQL file names its parameters (`:queue_id`), as sqlite.sql does, so the queries read
the same in both backends; asyncpg binds positionally (`$1`). The translation happens once,
at import, on the reviewed SQL text only: a Query knows the order of its names and builds
the argument tuple from keywords, so nothing is ever formatted into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relayd.errors import StoreError
from relayd.store import sqlfile

# A placeholder is `:name` not preceded by another colon or a word character, so the
# `::type` casts and `a:b` inside words are left alone.
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_MIGRATION = re.compile(r"^migration_(\d+)$")

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
"""The connection every query of this backend runs on: a pool connection in a transaction."""


@dataclass(frozen=True)
class Query:
    """One named statement with positional parameters and the names they stand for."""

    name: str
    sql: str
    params: tuple[str, ...]

    def args(self, **values: object) -> tuple[object, ...]:
        """The positional arguments for `values`; every parameter must be given, no other."""
        if set(values) != set(self.params):
            missing = sorted(set(self.params) - set(values))
            extra = sorted(set(values) - set(self.params))
            raise StoreError(f"query {self.name}: missing {missing}, unexpected {extra}")
        return tuple(values[name] for name in self.params)


def compile_query(name: str, text: str) -> Query:
    """Replace each distinct `:name` by `$n` (the same name, the same n)."""
    params: list[str] = []

    def number(match: re.Match[str]) -> str:
        param = match.group(1)
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    return Query(name, _PLACEHOLDER.sub(number, text), tuple(params))


def load() -> tuple[dict[str, Query], list[tuple[int, str]]]:
    """The queries of postgres.sql, and its migrations as [(version, sql)] in order."""
    blocks = sqlfile.load(__package__ or "", "postgres.sql")
    queries: dict[str, Query] = {}
    migrations: list[tuple[int, str]] = []
    for name, text in blocks.items():
        match = _MIGRATION.match(name)
        if match:
            migrations.append((int(match.group(1)), text))
        else:
            queries[name] = compile_query(name, text)
    migrations.sort()
    versions = [version for version, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"postgres.sql migrations must be numbered 1..N, not {versions}")
    return queries, migrations


Q, MIGRATIONS = load()
SCHEMA_VERSION = len(MIGRATIONS)
