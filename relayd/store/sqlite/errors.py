"""SQLite's errors as the store's: StoreUnavailable when retrying later may work."""

from __future__ import annotations

import sqlite3

from relayd.errors import StoreError, StoreUnavailable

# Primary result codes that mean "cannot commit right now" rather than "bad request".
UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


# What a connection with a busy timeout would have waited out.
_WAITS = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def would_wait(exc: sqlite3.Error) -> bool:
    """Whether a connection with a busy timeout would have waited this error out."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in _WAITS


def translate(exc: sqlite3.Error) -> StoreError:
    """The StoreError for a driver error: StoreUnavailable when retrying later may work."""
    code = getattr(exc, "sqlite_errorcode", None)
    unavailable = code is not None and code & 0xFF in UNAVAILABLE
    error = (StoreUnavailable if unavailable else StoreError)(f"sqlite: {exc}")
    error.__cause__ = exc
    return error


def wrap(exc: Exception) -> Exception:
    return translate(exc) if isinstance(exc, sqlite3.Error) else exc
