"""What a dispatcher lane tells the operator: account holds, throttles and outages.

A lane calls `UpstreamNotices.observe` after every attempt with each recipient's reply.
An account problem (auth_failed, with the provider's hint) or a throttle raises its notice;
an attempt that never got an SMTP reply (UpstreamUnavailable: refused, timed out, dropped)
raises upstream_unreachable, which the Notifier reports only once it has lasted longer than
notifications.unreachable_after (its grace). A delivery through the upstream clears all
three ("resolved" in the next digest). A sender the account may not send as (SendAsDenied)
raises send_as_denied for that upstream and sender, cleared by its next delivery there.

`recorded` sees every recorded outcome: a report relayd made (from the null sender: a DSN,
a forwarded bounce) that fails for good raises report_undeliverable, the only word of it
since relayd never reports on a report. It is logged with or without a Notifier.
"""

from __future__ import annotations

from collections.abc import Sequence

from relayd.config.model import UpstreamConfig
from relayd.logs import get_logger
from relayd.notices.notifier import NoticeKind, Notifier
from relayd.policy.hints import hint_for
from relayd.policy.outcome import Action, RecipientReply
from relayd.types import Lease, RecipientOutcome, RecipientState

log = get_logger("dispatch")

UPSTREAM_KINDS = (
    NoticeKind.AUTH_FAILED,
    NoticeKind.UPSTREAM_THROTTLED,
    NoticeKind.UPSTREAM_UNREACHABLE,
)


class UpstreamNotices:
    """The lanes' side of the Notifier; one per daemon, shared by every lane."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.notifier = notifier

    def observe(
        self,
        upstream: UpstreamConfig,
        replies: Sequence[RecipientReply],
        now: float,
        sender: str = "",
    ) -> None:
        """One attempt (one message from `sender`) through `upstream`: raise or clear its
        conditions."""
        notifier = self.notifier
        if notifier is None or not replies:
            return
        name = upstream.name
        if any(r.action is Action.DELIVERED for r in replies):
            for kind in UPSTREAM_KINDS:
                notifier.clear(kind, name, now)
            notifier.clear(NoticeKind.SEND_AS_DENIED, f"{name}: {sender}", now)
            return
        denied = next((r for r in replies if r.action is Action.SENDER_DENIED), None)
        if denied is not None:
            key, hint = f"{name}: {sender}", hint_for(upstream.provider, denied.reply, None)
            detail, kind = str(denied.reply), NoticeKind.SEND_AS_DENIED
            notifier.raise_(kind, key, detail, affected=1, hint=hint, now=now)
            return
        held = next((r for r in replies if r.action in _HOLDS), None)
        if held is not None:
            kind = _HOLDS[held.action]
            hint = hint_for(upstream.provider, held.reply, None)
            notifier.raise_(kind, name, str(held.reply), affected=1, hint=hint, now=now)
        elif all(r.reply.code == 0 for r in replies):
            detail = str(replies[0].reply)
            notifier.raise_(NoticeKind.UPSTREAM_UNREACHABLE, name, detail, affected=1, now=now)

    def recorded(self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float) -> None:
        """Outcomes just recorded: a report of relayd's own (null sender) that failed for good."""
        if lease.mail_from:
            return
        for o in outcomes:
            if o.state is RecipientState.FAILED:
                log.error("report_undeliverable", queue_id=lease.queue_id, recipient=o.recipient)
                if self.notifier is not None:
                    kind = NoticeKind.REPORT_UNDELIVERABLE
                    self.notifier.raise_(kind, o.recipient, o.reply, affected=1, now=now)


_HOLDS = {
    Action.AUTH_FAILED: NoticeKind.AUTH_FAILED,
    Action.THROTTLED: NoticeKind.UPSTREAM_THROTTLED,
}
