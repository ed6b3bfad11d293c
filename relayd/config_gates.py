"""Checks on the raw TOML tables before validation: keys a file may not set.

Two kinds: keys the loader fills in itself (or secrets, which never go inline), and keys
of the documented contract whose feature is not built yet.
"""

from __future__ import annotations

from typing import Any

from relayd.config_text import KeyLocator
from relayd.providers import PRESETS


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
    for loc in found:
        message = "unknown key"
        if loc[-1] == "password":
            message = "secrets are not allowed inline; use password_file or password_env"
        raise locator.error(message, loc)


# Keys of the documented contract whose feature is not built yet, with the value that is
# harmless. Accepting them silently would be worse than refusing: `require_auth = true`
# that does nothing is an open relay the admin believes is closed.
_UNBUILT: tuple[tuple[tuple[str, ...], object], ...] = (
    (("server", "require_auth"), False),
    (("server", "users"), []),
    (("server", "tls_cert"), None),
    (("server", "tls_key"), None),
    (("server", "workers"), 1),
    (("log", "transcript_dir"), None),
    (("admin", "listen"), None),
)
_UNBUILT_UPSTREAM: tuple[tuple[str, object], ...] = (
    ("auth", "xoauth2"),
    ("from_policy", "rewrite"),
    ("from_policy", "bare"),
)


def reject_unbuilt(data: dict[str, Any], locator: KeyLocator) -> None:
    """Refuse settings this version documents but cannot honour yet (see _UNBUILT)."""
    for loc, harmless in _UNBUILT:
        table = data.get(loc[0])
        if isinstance(table, dict) and loc[1] in table and table[loc[1]] != harmless:
            raise locator.error("is not available in this version of relayd yet", loc)
    upstreams = data.get("upstreams")
    for name, table in upstreams.items() if isinstance(upstreams, dict) else ():
        if isinstance(table, dict):
            _reject_unbuilt_upstream(name, table, locator)


def _reject_unbuilt_upstream(name: str, table: dict[str, Any], locator: KeyLocator) -> None:
    for key, value in _UNBUILT_UPSTREAM:
        if table.get(key) == value:
            raise locator.error(
                f'"{value}" is not available in this version of relayd yet',
                ("upstreams", name, key),
            )
    # A preset whose default is unbuilt (microsoft365: xoauth2) must not pass unnoticed.
    provider = table.get("provider", "generic")
    preset = PRESETS.get(provider) if isinstance(provider, str) else None
    if preset is not None and "auth" not in table and ("auth", preset.auth) in _UNBUILT_UPSTREAM:
        raise locator.error(
            f'provider "{provider}" defaults to auth = "{preset.auth}", which is not available '
            'in this version of relayd yet; set auth = "password" (with username and '
            "password_file) until it is",
            ("upstreams", name, "provider"),
        )
