"""Checks on the raw TOML tables before validation: keys a file may not set.

Two kinds: keys the loader fills in itself (or secrets, which never go inline), and keys
of the documented contract whose feature is not built yet. Plus the secret helpers the
queue's DSN needs: no password inline, the DSN read from dsn_file or dsn_env.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from relayd.config.text import KeyLocator


def reject_internal_keys(data: dict[str, Any], locator: KeyLocator) -> None:
    """Keys the models have but a file may not set: filled by the loader, or secrets."""
    found: list[tuple[str, ...]] = [("source",)] if "source" in data else []
    upstreams = data.get("upstreams")
    for name, table in upstreams.items() if isinstance(upstreams, dict) else ():
        if isinstance(table, dict):
            found += [
                ("upstreams", name, key)
                for key in ("name", "preset_fields", "password")
                if key in table
            ]
    bounces = data.get("bounces")
    imap = bounces.get("imap") if isinstance(bounces, dict) else None
    if isinstance(imap, dict) and "password" in imap:
        found.append(("bounces", "imap", "password"))
    for loc in found:
        message = "unknown key"
        if loc[-1] == "password":
            message = "secrets are not allowed inline; use password_file or password_env"
        raise locator.error(message, loc)


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
