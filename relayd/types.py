"""Domain types shared by every layer: frozen values, no behaviour beyond parsing."""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NewType

QueueId = NewType("QueueId", str)

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class RecipientState(enum.StrEnum):
    """Where one recipient of one message stands (DESIGN.md, message lifecycle)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    BOUNCED = "bounced"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({RecipientState.DELIVERED, RecipientState.FAILED, RecipientState.BOUNCED})
PENDING_STATES = (RecipientState.QUEUED, RecipientState.DEFERRED)


@dataclass(frozen=True)
class SmtpReply:
    """One SMTP reply: code and text (the text starts with the enhanced code when there is one)."""

    code: int
    message: str

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.message)
        return match.group(0) if match else None

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        """`code text`; a reply relayd made up for a transport error (code 0) is just text."""
        return f"{self.code} {self.message}".strip() if self.code else self.message


@dataclass(frozen=True)
class Ceiling:
    """`count` sends at most in any trailing window of `period` seconds ("200/hour")."""

    count: int
    period: float

    def __str__(self) -> str:
        names = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
        name = names.get(self.period)
        return f"{self.count}/{name}" if name else f"{self.count}/{self.period:g}s"


@dataclass(frozen=True)
class RcptDsn:
    """A recipient's RFC 3461 parameters: NOTIFY (upper case, "NEVER" or a comma list of
    SUCCESS/FAILURE/DELAY; None when not given) and ORCPT with its address decoded from
    xtext ("rfc822;bob+x@x.org" for `ORCPT=rfc822;bob+2Bx@x.org`; None when not given)."""

    notify: str | None = None
    orcpt: str | None = None

    def wants(self, event: str) -> bool:
        """Whether the app asked for a report on `event` ("FAILURE", "DELAY", "SUCCESS");
        without NOTIFY, failures are reported and delays are at the MTA's discretion."""
        if self.notify is None:
            return event in ("FAILURE", "DELAY")
        return event in self.notify.split(",")


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient: its address and the RFC 3461 parameters the app gave for it."""

    address: str
    dsn: RcptDsn = RcptDsn()


@dataclass(frozen=True)
class NewMessage:
    """What intake hands the store: envelope, route and the raw bytes to deliver."""

    mail_from: str
    recipients: tuple[Recipient, ...]
    body: bytes
    upstream: str
    message_id: str
    received_at: float
    client: str = ""
    auth_user: str | None = None
    mail_options: tuple[str, ...] = ()
    queue_id: QueueId | None = None


@dataclass(frozen=True)
class Lease:
    """A claim on one message's due recipients until `lease_until` (leases expire; no locks)."""

    queue_id: QueueId
    upstream: str
    mail_from: str
    recipients: tuple[Recipient, ...]  # the leased (due) ones, with their NOTIFY/ORCPT
    attempts: int
    message_id: str
    received_at: float
    size: int
    token: str
    lease_until: float
    mail_options: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients)


@dataclass(frozen=True)
class RecipientOutcome:
    """The result of one attempt for one recipient, as the store records it.

    `wait_reason` says why a deferred recipient waits ("retry 3 at ..."); final ones have none.
    `relayed`: delivered to an upstream that does not offer DSN, so a NOTIFY=SUCCESS is
    answered by relayd's own "relayed" report (RFC 3461 6.2.1); never stored.
    """

    recipient: str
    state: RecipientState
    reply: str
    next_attempt_at: float | None = None
    wait_reason: str | None = None
    relayed: bool = False


@dataclass(frozen=True)
class UpstreamHold:
    """An upstream that must wait (throttled, auth failing) until `until`; None = until released."""

    upstream: str
    until: float | None
    reason: str
    level: int = 0


@dataclass(frozen=True)
class RecipientView:
    address: str
    state: RecipientState
    attempts: int
    next_attempt_at: float | None
    last_reply: str | None
    wait_reason: str | None


@dataclass(frozen=True)
class MessageView:
    """A queued message as the queue tool shows it (no body)."""

    queue_id: QueueId
    upstream: str
    mail_from: str
    message_id: str
    received_at: float
    size: int
    recipients: tuple[RecipientView, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Notice:
    """Something only an operator can fix (a refused OAuth2 grant, a token about to expire).

    Producers call a NoticeHook with it; notices/notifier.py will turn notices into mail to the
    notification mailbox, with de-duplication. `kind` is the log event's name.
    """

    kind: str
    upstream: str
    summary: str
    action: str = ""  # what to do about it


NoticeHook = Callable[[Notice], None]


_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def new_queue_id(now: float, entropy: bytes | None = None) -> QueueId:
    """A short unique id that sorts by arrival: milliseconds then 40 random bits (the one
    generator: intake, the stores and reports all name messages the same way). The bits come
    from `random` (seeded from the OS, reseeded in a forked child): ids need uniqueness, not
    secrecy, and os.urandom is a getrandom(2) call that costs ~40 us on a VM."""
    millis = int(now * 1000)
    rand = int.from_bytes(entropy, "big") if entropy is not None else random.getrandbits(40)
    out = []
    for value, width in ((millis, 9), (rand, 8)):
        digits = []
        for _ in range(width):
            value, rem = divmod(value, len(_ID_ALPHABET))
            digits.append(_ID_ALPHABET[rem])
        out.append("".join(reversed(digits)))
    return QueueId("".join(out))


@dataclass(frozen=True)
class QueueDepth:
    """Recipients per state and the arrival time of the oldest pending message."""

    counts: dict[RecipientState, int]
    oldest_pending: float | None

    def oldest_age(self, now: float) -> float:
        return 0.0 if self.oldest_pending is None else max(0.0, now - self.oldest_pending)


@dataclass(frozen=True)
class Outgoing:
    """One message as a lane hands it to a session (delivery/session.py's Session)."""

    mail_from: str
    recipients: tuple[str, ...]
    body: bytes
    name: str  # the queue id: logs, the capture upstream's file names
    mail_options: tuple[str, ...] = ()
    rcpt_dsn: Mapping[str, RcptDsn] = field(default_factory=dict)  # RFC 3461, per recipient
    # How long from the send's start the final dot's reply may take (RFC 5321 4.5.3.2.6),
    # the connection and the commands before it included; None: the upstream's timeout.
    final_timeout: float | None = None


@dataclass
class SendResult:
    """Per-recipient replies of one attempt; `reached_data` says the upstream saw the message."""

    replies: dict[str, SmtpReply] = field(default_factory=dict)
    reached_data: bool = False
    upstream_dsn: bool = False  # the upstream offers DSN: it got NOTIFY/ORCPT and reports
