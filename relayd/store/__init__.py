"""The queue store: `open_store` is the only place that knows which backends exist.

Callers depend on the `Store` contract in store/base.py and on StoreError; the backend is
picked by name from configuration, passed in as plain values.
"""

from __future__ import annotations

from pathlib import Path

from relayd.errors import StoreError
from relayd.store.base import Store
from relayd.store.sqlite import SqliteStore

BACKENDS = ("sqlite",)


def open_store(backend: str, path: Path) -> Store:
    """An unopened store for `backend` (call `await store.open()`, or `async with`)."""
    if backend == "sqlite":
        return SqliteStore(path)
    raise StoreError(f"unknown queue backend {backend!r} (known: {', '.join(BACKENDS)})")
