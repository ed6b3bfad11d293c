"""Where the notifier's digests go: a notice message, from notifications.from to
notifications.mailbox, through the queue like any other mail; and the notifier built (and
rebuilt on reload) from [notifications].
"""

from __future__ import annotations

from relayd.config.model import Config
from relayd.notices.notifier import NoticeKind, Notifier, NotifySettings, render_notice
from relayd.reports import outbox
from relayd.store.base import MessageIntake
from relayd.types import new_queue_id


class QueueNoticeSink:
    """A NoticeSink: the rendered notice, from notifications.from to notifications.mailbox,
    through the queue (via notifications.via when set)."""

    def __init__(self, config: Config) -> None:
        self.config = config  # replaced on reload (reconfigure_notices)
        self.store: MessageIntake | None = None  # set when the daemon has opened the store

    async def enqueue_notice(self, subject: str, body: str, now: float) -> None:
        notifications = self.config.notifications
        if notifications is None or self.store is None:
            raise RuntimeError("no notification mailbox or store")
        host = self.config.server.hostname
        sender = notifications.from_ or f"relayd@{host}"
        raw = render_notice(
            subject,
            body,
            from_addr=sender,
            to=notifications.mailbox,
            now=now,
            message_id=f"<relayd.notice.{new_queue_id(now)}@{host}>",
        )
        recipients = (notifications.mailbox,)
        await outbox.submit(
            self.config, self.store, raw, recipients, now, sender=sender, via=notifications.via
        )


def notify_settings(config: Config) -> NotifySettings:
    n = config.notifications
    if n is None:
        return NotifySettings(hostname=config.server.hostname)
    return NotifySettings(
        hostname=config.server.hostname,
        digest_interval=n.digest_interval,
        remind_after=n.remind_after,
        grace={NoticeKind.UPSTREAM_UNREACHABLE: n.unreachable_after},
    )


def make_notifier(config: Config) -> tuple[Notifier, QueueNoticeSink]:
    sink = QueueNoticeSink(config)
    return Notifier(sink, notify_settings(config)), sink


def reconfigure_notices(notifier: Notifier, sink: QueueNoticeSink, config: Config) -> None:
    """A reload: the next digest goes to the new mailbox (from, via) on the new timing; the
    same Notifier keeps the conditions already raised."""
    sink.config = config
    notifier.reconfigure(notify_settings(config))
