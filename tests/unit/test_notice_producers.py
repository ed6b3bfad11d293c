"""The notice producers outside notify.py: upstream_notices (what a lane saw) and
report_tasks.QueueWatch (backlog and bounce rate from the store's counts), in virtual time."""

from __future__ import annotations

from dataclasses import dataclass, field

from relayd.config_reports import NotificationsConfig
from relayd.notify import Notifier, NotifySettings
from relayd.outcome import Action
from relayd.report_tasks import QueueWatch
from relayd.types import MessageView, QueueId, RecipientState, SmtpReply
from relayd.upstream_notices import UpstreamNotices

T0 = 1_704_189_600.0


@dataclass
class Sink:
    sent: list[tuple[str, str, float]] = field(default_factory=list)

    async def enqueue_notice(self, subject: str, body: str, now: float) -> None:
        self.sent.append((subject, body, now))


@dataclass
class Upstream:
    name: str = "main"
    provider: str = "gmail"


@dataclass
class CountingStore:
    """store.counts() and list_messages(state, limit=1), as metrics.queue_depth reads them."""

    counts_: dict[RecipientState, int] = field(
        default_factory=lambda: dict.fromkeys(RecipientState, 0)
    )
    oldest: float | None = None

    async def counts(self) -> dict[RecipientState, int]:
        return dict(self.counts_)

    async def list_messages(
        self, state: RecipientState | None = None, upstream: str | None = None, limit: int = 1000
    ) -> list[MessageView]:
        if self.oldest is None or state is not RecipientState.QUEUED:
            return []
        return [MessageView(QueueId("Q"), "main", "a@b", "<m>", self.oldest, 1)]


def _kinds(notifier: Notifier) -> list[tuple[str, str]]:
    return [(kind, key) for kind, key, _ in notifier.active()]


async def test_auth_failure_raises_with_the_provider_hint_and_a_delivery_clears_it() -> None:
    sink = Sink()
    notifier = Notifier(sink, NotifySettings(hostname="h"))
    notices = UpstreamNotices(notifier)
    refused = SmtpReply(535, "5.7.8 Username and Password not accepted.")
    notices.observe(Upstream(), [("a@x", Action.AUTH_FAILED, refused)], T0)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("auth_failed", "main")]
    assert await notifier.flush(T0)
    assert "apppasswords" in " ".join(sink.sent[0][1].split())
    ok = SmtpReply(250, "2.0.0 OK")
    notices.observe(Upstream(), [("a@x", Action.DELIVERED, ok)], T0 + 5)  # type: ignore[arg-type]
    assert notifier.active() == []
    assert await notifier.flush(T0 + 1000)
    assert "RESOLVED" in sink.sent[1][1]


async def test_unreachable_is_reported_only_after_its_grace() -> None:
    sink = Sink()
    settings = NotifySettings(hostname="h", digest_interval=1.0, grace={})
    notifier = Notifier(sink, settings)
    notices = UpstreamNotices(notifier)
    dropped = SmtpReply(0, "connection refused")
    for second in range(3):
        notices.observe(Upstream(), [("a@x", Action.RETRY, dropped)], T0 + second)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("upstream_unreachable", "main")]
    assert not await notifier.flush(T0 + 3)  # the default grace (600 s) has not passed
    assert await notifier.flush(T0 + 601)
    assert "Affected:   3 messages" in sink.sent[0][1]
    # A 4xx reply is no outage: nothing is raised for it.
    other = Notifier(sink, settings)
    later = SmtpReply(451, "4.3.0 later")
    UpstreamNotices(other).observe(Upstream(), [("a@x", Action.RETRY, later)], T0)  # type: ignore[arg-type]
    assert other.active() == []


async def test_queue_watch_raises_backlog_and_bounce_rate_and_clears_them() -> None:
    notifier = Notifier(Sink(), NotifySettings(hostname="h"))
    n = NotificationsConfig.model_validate(
        {
            "mailbox": "ops@x.example",
            "backlog_age": 3600,
            "backlog_depth": 10,
            "bounce_rate": 5,
            "digest_interval": 60,
        }
    )
    watch = QueueWatch(notifier, n)
    store = CountingStore()
    await watch.check(store, T0)  # type: ignore[arg-type]
    assert notifier.active() == []
    store.counts_[RecipientState.QUEUED] = 11
    store.oldest = T0 - 7200
    store.counts_[RecipientState.FAILED] = 6
    await watch.check(store, T0 + 10)  # type: ignore[arg-type]
    kinds = sorted(kind for kind, _ in _kinds(notifier))
    assert kinds == ["bounce_rate", "queue_backlog", "queue_backlog"]
    store.counts_[RecipientState.QUEUED] = 1
    store.oldest = T0
    await watch.check(store, T0 + 100)  # type: ignore[arg-type]  # failures now older than 60 s
    assert notifier.active() == []


def test_a_throttle_raises_upstream_throttled_and_a_delivery_clears_it() -> None:
    notifier = Notifier(Sink(), NotifySettings(hostname="h"))
    notices = UpstreamNotices(notifier)
    quota = SmtpReply(550, "5.4.5 Daily user sending limit exceeded.")
    notices.observe(Upstream(), [("a@x", Action.THROTTLED, quota)], T0)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("upstream_throttled", "main")]
    ok = SmtpReply(250, "2.0.0 OK")
    notices.observe(Upstream(), [("a@x", Action.DELIVERED, ok)], T0 + 5)  # type: ignore[arg-type]
    assert notifier.active() == []
