"""OAuth2 access tokens for SMTP XOAUTH2 (Google, Microsoft): request, cache, refresh, rotate.

One `TokenSource` per upstream, shared by its connections. It asks the token endpoint for an
access token (RFC 6749: the refresh-token grant, section 6, or Microsoft's client-credentials
grant, section 4.4: a form POST, a JSON answer, section 5.1, or an error, section 5.2; httpx
does the HTTP), caches it and asks again REFRESH_MARGIN before it expires. A refresh token
the endpoint rotates (Microsoft does) is written back to refresh_token_file atomically
(temp file in the same directory, mode 0600, fsync, rename), and the time of each use is
kept beside it (`FILE.last-used`) for the idle-expiry warning.

A refusal (`invalid_grant`: the refresh token expired or was revoked; `invalid_client`: the
client secret is wrong) raises OAuthRefused, an UpstreamAuthError: delivery turns it into
a `535 5.7.8` for the dispatcher, which holds the upstream until an operator acts (the mail
stays queued). It is logged as `oauth_refresh_failed` and handed to the NoticeHook, the hook
operator notices (notices/notifier.py) implement. An endpoint that cannot be reached or answers 5xx
raises UpstreamUnavailable: the message is retried later.

Secrets never reach a log: the form is never logged, the error description is scrubbed of
them, and log fields avoid the names the redaction processor masks (`token`, `secret`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from relayd import metrics
from relayd.clock import Clock
from relayd.config.model import UpstreamConfig
from relayd.errors import UpstreamAuthError, UpstreamError, UpstreamUnavailable
from relayd.logs import get_logger
from relayd.policy.providers import PRESETS, Problem, hint_for
from relayd.types import Notice, NoticeHook
from relayd.units import format_duration

log = get_logger("oauth")

REFRESH_MARGIN = 300.0  # refresh this long before expiry (tokens usually last 3600 s)
DEFAULT_LIFETIME = 3600.0  # when the answer has no expires_in (RFC 6749 5.1: RECOMMENDED)
WARN_BEFORE_IDLE_EXPIRY = 10 * 86400.0  # Microsoft: warn at 80 of its 90 days unused
WATCH_INTERVAL = 6 * 3600.0
MAX_DESCRIPTION = 300
# RFC 6749 section 5.2 error codes that a retry will not cure; others (and 5xx) are transient.
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})

Flow = Literal["refresh_token", "client_credentials"]


class OAuthRefused(UpstreamAuthError):
    """The token endpoint refused relayd's OAuth2 grant; an operator must renew it."""

    def __init__(self, message: str, *, error: str) -> None:
        self.error = error
        super().__init__(message)


class _Silent:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    obtained_at: float
    expires_at: float


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a temp file (mode 0600) in the same directory,
    fsync, rename over, fsync the directory. A crash leaves the old file or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def problem_of(exc: BaseException) -> Problem:
    """Which hint a token failure calls for (policy/hints.py)."""
    if isinstance(exc, UpstreamUnavailable):
        return Problem.OAUTH_ENDPOINT
    error = exc.error if isinstance(exc, OAuthRefused) else None
    if error == "invalid_grant":
        return Problem.OAUTH_GRANT
    return Problem.OAUTH_CLIENT if error in _CLIENT_ERRORS else Problem.OAUTH_REFUSED


def xoauth2_b64(user: str, token: str) -> str:
    """The XOAUTH2 initial response as AUTH sends it (Google's "XOAUTH2 protocol" page):
    base64 of `user=USER^Aauth=Bearer TOKEN^A^A` (^A is 0x01)."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UpstreamAuthError(f"OAuth2: cannot read {key} {path}: {reason}") from exc
    if not value:
        raise UpstreamAuthError(f"OAuth2: {key} {path} is empty")
    return value


class TokenSource:
    """Access tokens for one xoauth2 upstream; `token()` is safe from several connections."""

    def __init__(
        self,
        upstream: UpstreamConfig,
        clock: Clock,
        notices: NoticeHook | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        quiet: bool = False,
    ) -> None:
        assert upstream.token_url is not None
        # quiet: for `relayd test-upstream`, which prints the outcome itself.
        self.log: Any = _Silent() if quiet else log
        self.upstream = upstream
        self.name = upstream.name
        self.url = upstream.token_url
        self.clock = clock
        self.notices = notices
        self.transport = transport
        self.flow: Flow = "refresh_token" if upstream.refresh_token_file else "client_credentials"
        self._cached: AccessToken | None = None
        self._unsaved_refresh: str | None = None  # a rotated token the file could not take
        self._lock = asyncio.Lock()

    @property
    def state_file(self) -> Path | None:
        path = self.upstream.refresh_token_file
        return path.with_name(path.name + ".last-used") if path is not None else None

    async def token(self, *, force: bool = False) -> AccessToken:
        """A valid access token: the cached one, or a new one from the endpoint."""
        async with self._lock:
            now = self.clock.now()
            cached = self._cached
            if not force and cached is not None:
                lifetime = cached.expires_at - cached.obtained_at
                if now < cached.expires_at - min(REFRESH_MARGIN, lifetime / 2):
                    return cached
            self._cached = await self._request(now)
            return self._cached

    def invalidate(self) -> None:
        """Forget the cached token (the SMTP server refused it)."""
        self._cached = None

    # -- the token request --------------------------------------------------------------

    def _form(self) -> tuple[dict[str, str], list[str]]:
        """The request body (RFC 6749 4.4.2 / 6) and the secrets in it."""
        up = self.upstream
        assert up.client_id is not None
        form = {"grant_type": self.flow, "client_id": up.client_id}
        if up.client_secret_file is not None:
            form["client_secret"] = _read_secret(up.client_secret_file, "client_secret_file")
        if up.refresh_token_file is not None:
            form["refresh_token"] = self._unsaved_refresh or _read_secret(
                up.refresh_token_file, "refresh_token_file"
            )
        if up.oauth_scope:
            form["scope"] = up.oauth_scope
        secrets = [form[key] for key in ("client_secret", "refresh_token") if key in form]
        return form, secrets

    async def _request(self, now: float) -> AccessToken:
        form, secrets = self._form()
        host = urllib.parse.urlsplit(self.url).netloc
        try:
            async with httpx.AsyncClient(
                timeout=self.upstream.timeout, transport=self.transport
            ) as client:
                response = await client.post(
                    self.url, data=form, headers={"Accept": "application/json"}
                )
        except httpx.HTTPError as exc:
            detail = f"OAuth2 token endpoint {host}: {type(exc).__name__} {exc}".rstrip()
            self.log.warning("oauth_endpoint_unreachable", upstream=self.name, error=detail)
            raise UpstreamUnavailable(detail) from exc
        payload = _json(response)
        error = payload.get("error")
        if response.status_code == 200 and isinstance(payload.get("access_token"), str):
            return await self._accepted(payload, form.get("refresh_token"), now)
        if response.is_client_error and isinstance(error, str) and error not in _TRANSIENT_ERRORS:
            raise self._refused(error, payload.get("error_description"), secrets)
        detail = f"OAuth2 token endpoint {host} answered HTTP {response.status_code}"
        self.log.warning("oauth_endpoint_unavailable", upstream=self.name, error=detail)
        raise UpstreamUnavailable(detail)

    def _refused(self, error: str, description: object, secrets: list[str]) -> OAuthRefused:
        text = str(description or "")[:MAX_DESCRIPTION]
        for secret in secrets:
            text = text.replace(secret, "********")
        host = urllib.parse.urlsplit(self.url).netloc
        message = f"OAuth2 token request refused by {host}: {error}"
        message += f" ({text})" if text else ""
        refused = OAuthRefused(message, error=error)
        self.log.error(
            "oauth_refresh_failed",
            upstream=self.name,
            error=error,
            description=text,
            endpoint=self.url,
            flow=self.flow,
        )
        action = hint_for(self.upstream.provider, None, problem_of(refused)) or ""
        self._notify(Notice("oauth_refresh_failed", self.name, message, action))
        return refused

    async def _accepted(
        self, payload: dict[str, Any], refresh_token: str | None, now: float
    ) -> AccessToken:
        token_type = str(payload.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise UpstreamAuthError(f"OAuth2: token_type {token_type!r} is not Bearer")
        expires_in = payload.get("expires_in", DEFAULT_LIFETIME)
        try:
            lifetime = max(float(expires_in), 1.0)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        if self.flow == "refresh_token":
            rotated = payload.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != refresh_token:
                await self._save_rotated(rotated)
            await self._save_last_used(now)
        self.log.info(
            "oauth_access_granted",
            upstream=self.name,
            flow=self.flow,
            valid_for=format_duration(lifetime),
        )
        metrics.oauth_token_expiry(self.name, now + lifetime)
        return AccessToken(str(payload["access_token"]), now, now + lifetime)

    async def _save_rotated(self, rotated: str) -> None:
        path = self.upstream.refresh_token_file
        assert path is not None
        try:
            await asyncio.to_thread(write_private, path, rotated + "\n")
        except OSError as exc:
            # The new token works and the old one may not for long: keep it in memory.
            self._unsaved_refresh = rotated
            self.log.error(
                "oauth_rotation_not_saved", upstream=self.name, file=str(path), error=str(exc)
            )
            self._notify(
                Notice(
                    "oauth_rotation_not_saved",
                    self.name,
                    f"the rotated OAuth2 refresh token could not be written to {path}: {exc}",
                    "make the directory writable by relayd (systemd: ReadWritePaths=); until "
                    "then the token lives in memory only and a restart loses it",
                )
            )
            return
        self._unsaved_refresh = None
        self.log.info("oauth_rotated", upstream=self.name, file=str(path))

    async def _save_last_used(self, now: float) -> None:
        path = self.state_file
        assert path is not None
        text = json.dumps({"last_used": now}) + "\n"
        try:
            await asyncio.to_thread(write_private, path, text)
        except OSError as exc:
            self.log.warning(
                "oauth_state_not_saved", upstream=self.name, file=str(path), error=str(exc)
            )

    # -- known expiries -----------------------------------------------------------------

    def last_used(self) -> float | None:
        """When the refresh token was last used (the state file, else the token file's age)."""
        state, path = self.state_file, self.upstream.refresh_token_file
        if state is None or path is None:
            return None
        try:
            value = json.loads(state.read_text(encoding="utf-8")).get("last_used")
            return float(value)
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        try:
            return path.stat().st_mtime
        except OSError:
            return None

    def expiry_notice(self, now: float) -> Notice | None:
        """A notice when the refresh token nears the provider's idle expiry, else None."""
        days = PRESETS[self.upstream.provider].refresh_token_idle_days
        last = self.last_used() if days and self.flow == "refresh_token" else None
        if days is None or last is None:
            return None
        expires = last + days * 86400.0
        if now < expires - WARN_BEFORE_IDLE_EXPIRY:
            return None
        summary = (
            f"the OAuth2 refresh token was last used {format_duration(now - last)} ago; "
            f"{self.upstream.provider} expires refresh tokens unused for {days} days "
            f"(this one in {format_duration(max(expires - now, 0.0))})"
        )
        action = "relayd renews it now by using it; if that fails, make a new one (README)"
        return Notice("oauth_token_expiring", self.name, summary, action)

    def _notify(self, notice: Notice) -> None:
        if self.notices is not None:
            self.notices(notice)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class TokenSources:
    """The token sources of a configuration's xoauth2 upstreams, and the expiry watch."""

    def __init__(
        self,
        upstreams: Iterable[UpstreamConfig],
        clock: Clock,
        notices: NoticeHook | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.clock = clock
        self.notices = notices
        self.transport = transport
        self._sources: dict[str, TokenSource] = {}
        for upstream in upstreams:
            self.get(upstream)

    def get(self, upstream: UpstreamConfig) -> TokenSource | None:
        """The source for `upstream` (a new one when its configuration changed)."""
        if upstream.auth != "xoauth2":
            return None
        source = self._sources.get(upstream.name)
        if source is None or source.upstream != upstream:
            source = TokenSource(upstream, self.clock, self.notices, transport=self.transport)
            self._sources[upstream.name] = source
        return source

    async def check_expiries(self) -> list[Notice]:
        """Warn about refresh tokens near their idle expiry, and renew them by using them."""
        notices = []
        for source in list(self._sources.values()):
            notice = await asyncio.to_thread(source.expiry_notice, self.clock.now())
            if notice is None:
                continue
            notices.append(notice)
            log.warning("oauth_token_expiring", upstream=source.name, summary=notice.summary)
            source._notify(notice)
            with contextlib.suppress(UpstreamError):  # logged (and noticed) by the source
                await source.token(force=True)
        return notices

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Check expiries every `interval` seconds, for ever (a daemon side task)."""
        while True:
            try:
                await self.check_expiries()
            except Exception:
                log.exception("oauth_watch_error")
            await self.clock.sleep(interval)
