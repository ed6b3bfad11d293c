"""Checks on the raw TOML tables before validation: keys a file may not set.

Keys the loader fills in itself, and secrets, which never go inline (config/secrets.py
reads them from their files or environment variables instead).
"""

from __future__ import annotations

from typing import Any

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
    admin = data.get("admin")
    if isinstance(admin, dict) and "token" in admin:
        found.append(("admin", "token"))
    for loc in found:
        message = "unknown key"
        if loc[-1] in ("password", "token"):
            where = "token_file" if loc[-1] == "token" else "password_file or password_env"
            message = f"secrets are not allowed inline; use {where}"
        raise locator.error(message, loc)
