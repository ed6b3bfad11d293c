"""Who may do what on the status page: the admin token, browser sessions, CSRF, rate limits.

Anything that changes mail (send a test, retry, hold, release, delete) or reaches out with
an upstream's secret (test credentials) needs the admin token ([admin] token_file), even on
loopback, where every local user reaches the port. A script sends it as a bearer token; a
browser enters it once on /login and gets a session cookie (HttpOnly, SameSite=Strict, gone
when the browser closes or relayd restarts). Off loopback the page is readable only with it.

Every form carries a CSRF token: an HMAC, under a key made at start, of a random cookie the
browser got with the page. A cross-site form cannot read either. A bearer request needs none:
another site cannot make a browser send an Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable

from pydantic import SecretStr

from relayd.web.http import Request

SESSION_COOKIE = "relayd_session"
CSRF_COOKIE = "relayd_csrf"
_COOKIE_FLAGS = "Path=/; HttpOnly; SameSite=Strict"


class Guard:
    """The token (read per request: a reload may change it), the sessions it opened and the
    CSRF key; one per running page. A session is good only with the token that opened it."""

    def __init__(self, token: Callable[[], SecretStr | None]) -> None:
        self.token = token
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, str] = {}  # session id -> the token's HMAC when opened

    @property
    def enabled(self) -> bool:
        """Whether changes are possible at all (a token is configured)."""
        return self.token() is not None

    def _fingerprint(self) -> str | None:
        token = self.token()
        return None if token is None else self._sign(token.get_secret_value())

    def _matches(self, candidate: str) -> bool:
        token = self.token()
        if token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), token.get_secret_value().encode())

    def bearer(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self._matches(value.strip())

    def authorized(self, request: Request) -> bool:
        """The bearer token, or a session opened with it."""
        if self.bearer(request):
            return True
        opened_with = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        current = self._fingerprint()
        return None not in (opened_with, current) and opened_with == current

    def login(self, candidate: str) -> str | None:
        """A Set-Cookie value opening a session when `candidate` is the token, else None."""
        if not self._matches(candidate.strip()):
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = self._fingerprint() or ""
        return f"{SESSION_COOKIE}={session}; {_COOKIE_FLAGS}"

    def logout(self, request: Request) -> str:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        return f"{SESSION_COOKIE}=; Max-Age=0; {_COOKIE_FLAGS}"

    def csrf(self, request: Request) -> tuple[str, str | None]:
        """(the form token for this browser, a Set-Cookie value when it has no cookie yet)."""
        seed = request.cookies.get(CSRF_COOKIE, "")
        cookie = None
        if len(seed) < 32:
            seed = secrets.token_urlsafe(32)
            cookie = f"{CSRF_COOKIE}={seed}; {_COOKIE_FLAGS}"
        return self._sign(seed), cookie

    def csrf_ok(self, request: Request) -> bool:
        if self.bearer(request):
            return True
        seed = request.cookies.get(CSRF_COOKIE, "")
        given = request.form.get("csrf", "")
        return len(seed) >= 32 and hmac.compare_digest(given, self._sign(seed))

    def _sign(self, seed: str) -> str:
        return hmac.new(self._key, seed.encode(), hashlib.sha256).hexdigest()


class RateLimit:
    """At most `count` actions of one kind (per key) in `period` seconds, on a monotonic clock."""

    def __init__(self, count: int, period: float) -> None:
        self.count = count
        self.period = period
        self._times: dict[str, deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """0 and the action counted when allowed now; else how many seconds until it is."""
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.period:
            times.popleft()
        if len(times) >= self.count:
            return times[0] + self.period - now
        times.append(now)
        return 0.0
