"""Provider presets: the defaults a `provider = "..."` line brings to an upstream; pure data.

Only `generic` and `directory` exist so far; the named providers (gmail, microsoft365, ...)
with their published limits and reply hints come with the providers work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Security = Literal["starttls", "tls", "none"]
AuthKind = Literal["password", "xoauth2", "none"]

DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True)
class Preset:
    """What a provider name fills in; None means "the user must say"."""

    name: str
    host: str | None = None
    security: Security | None = "starttls"
    auth: AuthKind = "password"
    rate_limits: tuple[str, ...] = ()
    delivers_to_directory: bool = False


PRESETS: dict[str, Preset] = {
    "generic": Preset(name="generic"),
    "directory": Preset(name="directory", security=None, auth="none", delivers_to_directory=True),
}


def default_port(security: Security) -> int:
    """starttls -> 587 (RFC 6409 submission), tls -> 465 (RFC 8314), none -> 25."""
    return DEFAULT_PORTS[security]
