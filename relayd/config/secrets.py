"""Secrets never sit in the file: each is read from its *_file (trailing newline dropped)
or *_env at load, into a SecretStr; a PostgreSQL DSN with a password inline is refused.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from relayd.config.text import KeyLocator


def dsn_has_password(dsn: str) -> bool:
    """Whether a PostgreSQL DSN carries a password: `user:pw@` in a URL, or a `password`
    parameter (URL query or key=value form). Such a DSN goes in dsn_file or dsn_env."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        return parts.password is not None or "password" in query
    return re.search(r"(^|\s)password\s*=", dsn) is not None


def read_secret(
    path: Path | None,
    env: str | None,
    loc: tuple[str, ...],
    locator: KeyLocator,
    environ: Mapping[str, str],
) -> SecretStr:
    """A secret from its file (trailing newline dropped) or environment variable; a
    ConfigError naming `loc` when it is missing, unreadable or empty."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise locator.error(f"cannot read {path}: {reason}", loc) from exc
    elif env is not None and env in environ:
        value = environ[env]
    else:
        raise locator.error(f"environment variable {env} is not set", loc)
    if not value:
        raise locator.error("the secret is empty", loc)
    return SecretStr(value)
