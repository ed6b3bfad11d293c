"""Local SMTP AUTH policy: password hashes, failed-attempt limits, allowed senders; pure.

Passwords of [[server.users]] are stored as scrypt hashes (RFC 7914, stdlib hashlib) in the
modular-crypt form `$scrypt$ln=15,r=8,p=1$SALT$HASH` (base64 without padding), made by
`relayd hash-password`. N = 2**15, r = 8 takes about 32 MiB and 0.1 s per check: cheap for
an app that logs in once per connection, costly for anyone guessing.

`FailureLimiter` counts failed AUTH attempts per client address over a trailing window and
says until when a client is locked out; time is passed in. `sender_allowed` matches an
envelope sender against a user's `allowed_senders` patterns (the patterns config/values.py
accepts: "a@x.example", "*@x.example", "*").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

SCRYPT_LOG_N = 15  # N = 32768: about 32 MiB (128 * N * r bytes) and 0.1 s per hash
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAXMEM = 256 * 1024 * 1024  # allows hashes made with larger N than ours (up to ln=17, r=8)
_FORMAT = re.compile(
    r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,})\$([A-Za-z0-9+/]{32,})$"
)
HASH_HELP = 'not a password hash made by `relayd hash-password` ("$scrypt$ln=15,r=8,p=1$...")'


@dataclass(frozen=True)
class ScryptHash:
    """A parsed `$scrypt$...` string."""

    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def derive(self, password: bytes) -> bytes:
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=2**self.log_n,
            r=self.r,
            p=self.p,
            maxmem=_MAXMEM,
            dklen=len(self.digest),
        )

    def __str__(self) -> str:
        return (
            f"$scrypt$ln={self.log_n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_hash(text: str) -> ScryptHash:
    """Parse a stored hash; ValueError (with HASH_HELP) if it is not one relayd made."""
    match = _FORMAT.match(text.strip())
    if match is None:
        raise ValueError(HASH_HELP)
    log_n, r, p = (int(match[i]) for i in (1, 2, 3))
    if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"{HASH_HELP}: cost parameters out of range")
    if 128 * r * 2**log_n > _MAXMEM:
        raise ValueError(f"{HASH_HELP}: needs more than {_MAXMEM // 2**20} MiB")
    try:
        salt, digest = _unb64(match[4]), _unb64(match[5])
    except (binascii.Error, ValueError):
        raise ValueError(HASH_HELP) from None
    return ScryptHash(log_n, r, p, salt, digest)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The `$scrypt$...` string for `password` (a fresh random salt unless given)."""
    if not password:
        raise ValueError("the password is empty")
    salt = salt or secrets.token_bytes(SALT_BYTES)
    params = ScryptHash(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, salt, b"\0" * HASH_BYTES)
    return str(replace(params, digest=params.derive(password.encode("utf-8"))))


def verify_password(password: bytes, stored: ScryptHash) -> bool:
    """Whether `password` matches `stored` (constant-time comparison)."""
    return hmac.compare_digest(stored.derive(password), stored.digest)


# A hash no password matches, checked for unknown user names so that the time an answer
# takes does not tell which names exist.
DECOY = ScryptHash(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, b"relayd-decoy-salt", b"\0" * HASH_BYTES)


@dataclass
class FailureLimiter:
    """Failed AUTH attempts per client address in a trailing window of `period` seconds.

    After `max_failures` failures within `period`, the client is locked out until the oldest
    of them leaves the window; a success forgets the client's failures.
    """

    max_failures: int = 5
    period: float = 300.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - self.period:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times

    def locked_until(self, client: str, now: float) -> float | None:
        """When `client` may try again, or None if it may try now."""
        times = self._recent(client, now)
        if len(times) < self.max_failures:
            return None
        return times[-self.max_failures] + self.period

    def failed(self, client: str, now: float) -> int:
        """Record a failure; returns the client's failures within the window."""
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times
        # Bound memory: a client keeps only the failures that can still lock it out.
        while len(times) > self.max_failures:
            times.popleft()
        return len(times)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def sender_allowed(address: str, patterns: Iterable[str]) -> bool:
    """Whether envelope sender `address` matches one of `patterns` (no patterns: any).

    The null sender ("", bounces) matches only "*": a restricted user names who it sends as.
    """
    pattern_list = list(patterns)
    if not pattern_list:
        return True
    text = address.strip().strip("<>").lower()
    domain = "*@" + text.rpartition("@")[2] if "@" in text else None
    return any(p == "*" or (text and p in (text, domain)) for p in pattern_list)
