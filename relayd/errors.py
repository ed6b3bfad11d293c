"""The relayd exception hierarchy: callers branch on the class, never on the text.

Each class's docstring is its default message (procrastinate's habit).
"""

from __future__ import annotations


class RelaydError(Exception):
    """relayd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(RelaydError):
    """The configuration is invalid."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        self.key = key
        self.line = line
        text = f"{key}: {message}" if key else message
        if line is not None:
            text += f" (line {line})"
        super().__init__(text)


class StoreError(RelaydError):
    """The queue store failed."""


class StoreUnavailable(StoreError):
    """The queue store cannot commit right now (locked, disk full, I/O error)."""


class LeaseLost(StoreError):
    """Another worker owns this message now; its outcome was not recorded."""


class UpstreamError(RelaydError):
    """The upstream session failed."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or the session broke (refused, reset, timeout, TLS)."""

    def __init__(self, message: str, *, reached_data: bool = False) -> None:
        self.reached_data = reached_data
        super().__init__(message)


class UpstreamAuthError(UpstreamError):
    """The upstream account's credentials cannot be used; an operator must renew them.

    Raised by delivery/oauth.py when the token endpoint refuses the grant (`invalid_grant`: the
    refresh token expired or was revoked; `invalid_client`: a wrong client secret) or the
    token files cannot be read. Delivery turns it into a hold of the upstream, like a `535`.
    """
