"""Operator notices: what only a person can fix, de-duplicated and batched into digests.

Producers (dispatch, oauth, bounces, reload, the disk check) call `Notifier.raise_` every
time they see a condition and `Notifier.clear` when it is gone; they need not remember
whether they already said so. A condition is one (kind, key) pair: a provider outage that
defers ten thousand messages is one condition whose counts grow, not ten thousand notices.

`flush(now)` (a scheduler job) turns everything new since the last digest into ONE message
through a NoticeSink, at most one per `digest_interval`: the conditions that started (what
happened, since when, how many messages, what to do), those that ended ("resolved"), and a
reminder for any still going after `remind_after`. A condition is logged at error level
when it starts, so the log has it even when no mail can go out. A digest that cannot be
enqueued is kept and sent with the next flush.

Pure logic apart from the sink: time is passed in, nothing here touches the store.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal, Protocol

from relayd.clock import Clock
from relayd.logs import get_logger
from relayd.policy.headers import encodable, header_text
from relayd.types import Notice, NoticeHook
from relayd.units import format_rfc5322, format_utc_minutes

log = get_logger("notify")


class NoticeKind(enum.StrEnum):
    AUTH_FAILED = "auth_failed"
    OAUTH_REFRESH_FAILED = "oauth_refresh_failed"
    OAUTH_TOKEN_EXPIRING = "oauth_token_expiring"  # noqa: S105 - an event name, raised by delivery/oauth.py
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_THROTTLED = "upstream_throttled"
    SEND_AS_DENIED = "send_as_denied"
    REPORT_UNDELIVERABLE = "report_undeliverable"
    QUEUE_BACKLOG = "queue_backlog"
    BOUNCE_RATE = "bounce_rate"
    CONFIG_RELOAD_FAILED = "config_reload_failed"
    DISK_LOW = "disk_low"


@dataclass(frozen=True)
class NoticeClass:
    """How a kind of notice reads and counts.

    `affected` says how repeated raises combine: "sum" for per-event counts (each deferred
    message raises with affected=1), "latest" for a gauge the caller measures (queue depth),
    "none" where no messages are counted (a disk, a configuration file): the digest then
    prints no "Affected" figure rather than a meaningless "0 messages".
    `grace` is how long the condition must last before it is reported at all.
    """

    title: str  # "{key}" is the condition's key (an upstream name, a path)
    action: str  # what to do, when the producer gives no more specific hint
    affected: Literal["sum", "latest", "none"] = "sum"
    grace: float = 0.0


CLASSES: dict[NoticeKind, NoticeClass] = {
    NoticeKind.AUTH_FAILED: NoticeClass(
        "Upstream {key} refuses relayd's credentials",
        "Check the upstream's username and password (or app password) and run "
        "`relayd test-upstream {key}`; mail for it waits in the queue until then.",
    ),
    # The OAuth2 notices come through the NoticeHook (delivery/oauth.py), which counts no messages.
    NoticeKind.OAUTH_REFRESH_FAILED: NoticeClass(
        "Upstream {key} cannot renew its OAuth2 token",
        "Grant relayd access again and replace the refresh token file; mail waits queued.",
        affected="none",
    ),
    NoticeKind.OAUTH_TOKEN_EXPIRING: NoticeClass(
        "Upstream {key}'s OAuth2 refresh token expires soon",
        "Send mail through the upstream (any use renews it) or grant relayd access again.",
        affected="none",
    ),
    NoticeKind.UPSTREAM_UNREACHABLE: NoticeClass(
        "Upstream {key} cannot be reached",
        "Check the network, DNS and firewall between this host and the provider, and "
        "the provider's status page; relayd keeps retrying.",
        grace=600.0,
    ),
    NoticeKind.UPSTREAM_THROTTLED: NoticeClass(
        "Upstream {key} is throttling relayd (sending quota reached)",
        "Lower rate_limits for the upstream to the provider's published limits; mail "
        "waits and is sent when the provider allows it.",
    ),
    # The key is "upstream: sender".
    NoticeKind.SEND_AS_DENIED: NoticeClass(
        "Upstream {key}: the account may not send as this sender",
        "Grant the upstream's account Send As permission on the sender's mailbox (Exchange "
        'admin center > Recipients > the mailbox > Delegation), or set from_policy = "rewrite" '
        "for the upstream. The sender's mail waits and fails at queue.max_lifetime.",
    ),
    # The key is the report's recipient: the bounce mailbox, or a sender given a report.
    NoticeKind.REPORT_UNDELIVERABLE: NoticeClass(
        "A delivery report relayd made could not be delivered to {key}",
        "Check that the address exists and accepts mail from the null sender <> ([bounces] "
        "mailbox); relayd never reports on a report, so this notice is the only word of it.",
    ),
    NoticeKind.QUEUE_BACKLOG: NoticeClass(
        "The queue is backing up ({key})",
        "Run `relayd queue list` to see what waits and why (window, rate limit, holds).",
        affected="latest",
    ),
    NoticeKind.BOUNCE_RATE: NoticeClass(
        "Many messages are failing ({key})",
        "Look at the bounce mailbox: a bad address list, or a provider rejecting the "
        "sender (SPF/DKIM/DMARC), shows there first.",
        affected="latest",
    ),
    NoticeKind.CONFIG_RELOAD_FAILED: NoticeClass(
        "The configuration could not be reloaded ({key})",
        "Run `relayd check-config`, fix the file and reload again; relayd keeps running "
        "with the previous configuration.",
        affected="none",
    ),
    # The key is the directory measured: the SQLite queue's or log.transcript_dir.
    NoticeKind.DISK_LOW: NoticeClass(
        "Disk space is low ({key})",
        "Free space on the file system holding {key}. If the queue is there, relayd "
        "refuses new mail with 451 while it is full (apps retry) and never loses queued "
        "mail; SMTP transcripts written there are lost while it is full.",
        affected="none",
    ),
}


class NoticeSink(Protocol):
    """Where a digest goes: one message to the notification mailbox, through the queue."""

    async def enqueue_notice(self, subject: str, body: str, now: float) -> None:
        """Enqueue one notice; raise when it cannot be stored."""


@dataclass(frozen=True)
class NotifySettings:
    hostname: str = "relayd"
    digest_interval: float = 900.0
    remind_after: float = 86400.0
    grace: dict[NoticeKind, float] = field(default_factory=dict)  # overrides, per kind


@dataclass
class _Condition:
    kind: NoticeKind
    key: str
    since: float
    detail: str
    hint: str | None
    affected: int
    raised: int = 1
    qualified: bool = False  # past its grace period: logged, and due to be reported
    reported_at: float | None = None  # when a digest carrying it was enqueued
    ended: float | None = None


class Notifier:
    """The operator notice service; one per daemon."""

    def __init__(self, sink: NoticeSink, settings: NotifySettings | None = None) -> None:
        self.sink = sink
        self.settings = settings or NotifySettings()
        self._conditions: dict[tuple[NoticeKind, str], _Condition] = {}
        self._resolved: list[_Condition] = []
        self._last_digest: float | None = None

    def reconfigure(self, settings: NotifySettings) -> None:
        """Take a reload's settings in place: the conditions raised so far stay, and one
        already reported is not reported again as new. A changed grace decides at the next
        raise or flush for conditions not yet past it; the next digest waits for the new
        digest_interval after the last one."""
        self.settings = settings

    def raise_(
        self,
        kind: NoticeKind | str,
        key: str,
        detail: str,
        *,
        affected: int = 0,
        hint: str | None = None,
        now: float,
    ) -> None:
        """Say that the condition (kind, key) holds now; `detail` is the latest evidence
        (the server's reply), `hint` the specific advice (providers.hint_for's text)."""
        kind = NoticeKind(kind)
        condition = self._conditions.get((kind, key))
        if condition is None:
            condition = _Condition(kind, key, now, detail, hint, affected, raised=0)
            self._conditions[(kind, key)] = condition
        elif CLASSES[kind].affected == "sum":
            condition.affected += affected
        else:
            condition.affected = affected
        condition.raised += 1
        condition.detail = detail
        condition.hint = hint or condition.hint
        self._qualify(condition, now)

    def clear(self, kind: NoticeKind | str, key: str, now: float) -> None:
        """Say that the condition (kind, key) is over; reported ones get a "resolved"."""
        condition = self._conditions.pop((NoticeKind(kind), key), None)
        if condition is None:
            return
        condition.ended = now
        if condition.qualified:
            log.info("notice_resolved", kind=condition.kind.value, key=key, since=condition.since)
            self._resolved.append(condition)

    def forget(self, kind: NoticeKind | str, key: str) -> None:
        """Drop the condition (kind, key) without saying it is over: this node no longer
        measures it (it lost the lead), so it knows nothing of its end."""
        self._conditions.pop((NoticeKind(kind), key), None)

    def hook(self, clock: Clock) -> NoticeHook:
        """A NoticeHook (types.py) for producers that hand over Notice values (OAuth2)."""

        def on_notice(notice: Notice) -> None:
            try:
                kind = NoticeKind(notice.kind)
            except ValueError:
                log.error("notice_unknown_kind", kind=notice.kind, summary=notice.summary)
                return
            now = clock.now()
            self.raise_(kind, notice.upstream, notice.summary, hint=notice.action, now=now)

        return on_notice

    def active(self) -> list[tuple[str, str, float]]:
        """(kind, key, since) of every condition that holds now, oldest first."""
        items = sorted(self._conditions.values(), key=lambda c: c.since)
        return [(c.kind.value, c.key, c.since) for c in items]

    async def flush(self, now: float) -> bool:
        """Enqueue one digest of what changed, unless the last one is younger than
        `digest_interval` or there is nothing to say; True when a digest was enqueued."""
        last = self._last_digest
        if last is not None and now < last + self.settings.digest_interval:
            return False
        for condition in self._conditions.values():
            self._qualify(condition, now)
        new, reminders = self._due(now)
        resolved = list(self._resolved)
        if not (new or reminders or resolved):
            return False
        subject, body = self._render(new, reminders, resolved, now)
        try:
            await self.sink.enqueue_notice(subject, body, now)
        except Exception as exc:  # the notice waits for the next flush; the log has it now
            log.error("notice_send_failed", subject=subject, error=f"{type(exc).__name__}: {exc}")
            return False
        for condition in (*new, *reminders):
            condition.reported_at = now
        self._resolved = [c for c in self._resolved if c not in resolved]
        self._last_digest = now
        log.info("notice_digest", subject=subject, new=len(new), resolved=len(resolved))
        return True

    def _qualify(self, condition: _Condition, now: float) -> None:
        grace = self.settings.grace.get(condition.kind, CLASSES[condition.kind].grace)
        if condition.qualified or now - condition.since < grace:
            return
        condition.qualified = True
        log.error(
            "notice",
            kind=condition.kind.value,
            key=condition.key,
            since=condition.since,
            affected=condition.affected,
            detail=condition.detail,
            hint=condition.hint,
        )

    def _due(self, now: float) -> tuple[list[_Condition], list[_Condition]]:
        new, reminders = [], []
        for condition in sorted(self._conditions.values(), key=lambda c: c.since):
            if not condition.qualified:
                continue
            if condition.reported_at is None:
                new.append(condition)
            elif now - condition.reported_at >= self.settings.remind_after:
                reminders.append(condition)
        return new, reminders

    def _render(
        self,
        new: list[_Condition],
        reminders: list[_Condition],
        resolved: list[_Condition],
        now: float,
    ) -> tuple[str, str]:
        host = self.settings.hostname
        problems = len(new) + len(reminders)
        if problems == 1 and not resolved:
            only = (new or reminders)[0]
            subject = f"[relayd {host}] {_title(only)}"
        else:
            parts = [f"{problems} problem{'s' * (problems != 1)}"] if problems else []
            parts += [f"{len(resolved)} resolved"] if resolved else []
            subject = f"[relayd {host}] {', '.join(parts)}"
        lines = [f"relayd on {host}, {format_utc_minutes(now)}.", ""]
        for condition in new:
            lines += _problem("PROBLEM", condition, now)
        for condition in reminders:
            lines += _problem("STILL A PROBLEM", condition, now)
        for condition in resolved:
            lines += _resolution(condition)
        lines.append("This is an automatic message from relayd; replies are not read.")
        return subject, "\n".join(lines) + "\n"


def render_notice(
    subject: str, body: str, *, from_addr: str, to: str, now: float, message_id: str
) -> bytes:
    """A notice as a message (for a NoticeSink): plain text, marked automatic (RFC 3834).
    Its text quotes upstream replies and names from outside: header_text keeps them from
    making a header the `email` package refuses."""
    message = EmailMessage()
    message["From"] = header_text(from_addr)
    message["To"] = header_text(to)
    message["Subject"] = header_text(subject)
    message["Date"] = format_rfc5322(now)
    message["Message-ID"] = header_text(message_id)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Relayd-Notice"] = "yes"
    message.set_content(encodable(body), charset="utf-8", cte="quoted-printable")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def _title(condition: _Condition) -> str:
    return CLASSES[condition.kind].title.format(key=condition.key)


def _problem(label: str, c: _Condition, now: float) -> list[str]:
    cls = CLASSES[c.kind]
    action = c.hint or cls.action.format(key=c.key)  # a producer's hint is used verbatim
    lines = [
        f"{label}: {_title(c)}  [{c.kind.value}]",
        f"  Since:      {format_utc_minutes(c.since)} ({_duration(now - c.since)})",
    ]
    if cls.affected != "none":
        counted = "" if cls.affected == "latest" else f" (seen {c.raised} times)"
        lines.append(f"  Affected:   {_messages(c.affected)}{counted}")
    return [*lines, f"  Detail:     {c.detail}", f"  What to do: {action}", ""]


def _resolution(c: _Condition) -> list[str]:
    ended = c.ended if c.ended is not None else c.since
    since, until = format_utc_minutes(c.since), format_utc_minutes(ended)
    span = f"From {since} to {until} ({_duration(ended - c.since)})"
    counted = CLASSES[c.kind].affected != "none"
    lines = [
        f"RESOLVED: {_title(c)}  [{c.kind.value}]",
        f"  {span}; {_messages(c.affected)} affected." if counted else f"  {span}.",
    ]
    if c.reported_at is None:  # it started and ended between two digests: say what it was
        lines.append(f"  Detail:     {c.detail}")
    return [*lines, ""]


def _messages(count: int) -> str:
    return f"{count} message{'s' * (count != 1)}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
