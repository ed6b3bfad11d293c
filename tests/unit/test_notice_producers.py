"""The notice producers outside notices/notifier.py: upstream_notices (what a lane saw) and
notices/watches.QueueWatch (backlog and bounce rate from the store's counts), in virtual time;
and notices/watches.NoticeRound on PostgreSQL nodes: queue checks only on the leader, every
node's own conditions mailed by that node under its hostname."""

from __future__ import annotations

from dataclasses import dataclass, field

from structlog.testing import capture_logs

from relayd.config.reports import NotificationsConfig
from relayd.delivery.notices import UpstreamNotices
from relayd.errors import StoreError
from relayd.notices.notifier import Notifier, NotifySettings
from relayd.notices.watches import NoticeRound, QueueWatch
from relayd.policy.outcome import Action, RecipientReply
from relayd.types import RecipientState, SmtpReply
from tests.support.fakes import T0, FakeClock, QueueStore, Sink


@dataclass
class Upstream:
    name: str = "main"
    provider: str = "gmail"


def _kinds(notifier: Notifier) -> list[tuple[str, str]]:
    return [(kind, key) for kind, key, _ in notifier.active()]


async def test_auth_failure_raises_with_the_provider_hint_and_a_delivery_clears_it() -> None:
    sink = Sink()
    notifier = Notifier(sink, NotifySettings(hostname="h"))
    notices = UpstreamNotices(notifier)
    refused = SmtpReply(535, "5.7.8 Username and Password not accepted.")
    notices.observe(Upstream(), [RecipientReply("a@x", Action.AUTH_FAILED, refused)], T0)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("auth_failed", "main")]
    assert await notifier.flush(T0)
    assert "apppasswords" in " ".join(sink.sent[0][1].split())
    ok = SmtpReply(250, "2.0.0 OK")
    notices.observe(Upstream(), [RecipientReply("a@x", Action.DELIVERED, ok)], T0 + 5)  # type: ignore[arg-type]
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
        notices.observe(Upstream(), [RecipientReply("a@x", Action.RETRY, dropped)], T0 + second)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("upstream_unreachable", "main")]
    assert not await notifier.flush(T0 + 3)  # the default grace (600 s) has not passed
    assert await notifier.flush(T0 + 601)
    assert "Affected:   3 messages" in sink.sent[0][1]
    # A 4xx reply is no outage: nothing is raised for it.
    other = Notifier(sink, settings)
    later = SmtpReply(451, "4.3.0 later")
    UpstreamNotices(other).observe(Upstream(), [RecipientReply("a@x", Action.RETRY, later)], T0)  # type: ignore[arg-type]
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
    store = QueueStore()
    await watch.check(store, T0)
    assert notifier.active() == []
    store.counts_[RecipientState.QUEUED] = 11
    store.oldest = T0 - 7200
    store.counts_[RecipientState.FAILED] = 6
    await watch.check(store, T0 + 10)
    kinds = sorted(kind for kind, _ in _kinds(notifier))
    assert kinds == ["bounce_rate", "queue_backlog", "queue_backlog"]
    store.counts_[RecipientState.QUEUED] = 1
    store.oldest = T0
    await watch.check(store, T0 + 100)  # failures now older than 60 s
    assert notifier.active() == []


def test_a_throttle_raises_upstream_throttled_and_a_delivery_clears_it() -> None:
    notifier = Notifier(Sink(), NotifySettings(hostname="h"))
    notices = UpstreamNotices(notifier)
    quota = SmtpReply(550, "5.4.5 Daily user sending limit exceeded.")
    notices.observe(Upstream(), [RecipientReply("a@x", Action.THROTTLED, quota)], T0)  # type: ignore[arg-type]
    assert _kinds(notifier) == [("upstream_throttled", "main")]
    ok = SmtpReply(250, "2.0.0 OK")
    notices.observe(Upstream(), [RecipientReply("a@x", Action.DELIVERED, ok)], T0 + 5)  # type: ignore[arg-type]
    assert notifier.active() == []


@dataclass
class NodeStore(QueueStore):
    """A PostgreSQL node's store as NoticeRound sees it: QueueStats, plus Leadership."""

    leading: bool = False
    asked: list[str] = field(default_factory=list)

    async def try_lead(self, name: str) -> bool:
        self.asked.append(name)
        return self.leading

    async def resign(self, name: str) -> None:
        self.leading = False


def _backlogged(leading: bool) -> NodeStore:
    store = NodeStore(leading=leading)
    store.counts_[RecipientState.QUEUED] = 11  # over backlog_depth below
    return store


NOTICES = NotificationsConfig.model_validate(
    {"mailbox": "ops@x.example", "backlog_depth": 10, "digest_interval": 60}
)


async def test_a_non_leader_node_mails_its_own_conditions_named_by_its_hostname() -> None:
    clock = FakeClock()
    sink = Sink()
    node2 = Notifier(sink, NotifySettings(hostname="node2.example", digest_interval=60))
    store = _backlogged(leading=False)
    notice_round = NoticeRound(node2, store, NOTICES)
    refused = SmtpReply(535, "5.7.8 Username and Password not accepted.")
    replies = [RecipientReply("a@x", Action.AUTH_FAILED, refused)]
    UpstreamNotices(node2).observe(Upstream(), replies, clock.now())  # type: ignore[arg-type]
    await notice_round(clock.now())
    assert store.asked == ["notices"]
    assert _kinds(node2) == [("auth_failed", "main")]  # the queue is the leader's to check
    (subject, body, when) = sink.sent[0]
    assert subject == "[relayd node2.example] Upstream main refuses relayd's credentials"
    assert body.startswith("relayd on node2.example, ")
    assert when == T0
    clock.at += 5
    await notice_round(clock.now())  # nothing new, and within digest_interval
    assert len(sink.sent) == 1


async def test_the_leader_checks_the_queue_and_a_node_that_loses_the_lead_says_nothing() -> None:
    """Issue 14: after a partition healed, the old leader mailed "1 resolved" while the
    backlog was still there. It knows nothing of the end: the new leader reports the queue."""
    clock = FakeClock()
    sink = Sink()
    node1 = Notifier(sink, NotifySettings(hostname="node1.example", digest_interval=60))
    store = _backlogged(leading=True)
    notice_round = NoticeRound(node1, store, NOTICES)
    await notice_round(clock.now())
    assert _kinds(node1) == [("queue_backlog", "more than 10 recipients waiting")]
    assert sink.sent[0][0] == (
        "[relayd node1.example] The queue is backing up (more than 10 recipients waiting)"
    )
    store.leading = False  # another node took the lead: it reports the queue from now on
    clock.at += 60
    await notice_round(clock.now())
    assert node1.active() == []
    assert len(sink.sent) == 1  # no "resolved"
    clock.at += 3600  # nor a reminder, ever
    await notice_round(clock.now())
    assert len(sink.sent) == 1


class LosesTheLead(NodeStore):
    """Leads at the round's first question, not at the second (frozen in between)."""

    async def try_lead(self, name: str) -> bool:
        self.asked.append(name)
        return len(self.asked) == 1


async def test_a_leader_that_lost_the_lead_mid_round_sends_no_queue_notice() -> None:
    sink = Sink()
    node = Notifier(sink, NotifySettings(hostname="node1.example"))
    store = LosesTheLead()
    store.counts_[RecipientState.QUEUED] = 11
    await NoticeRound(node, store, NOTICES)(T0)
    assert store.asked == ["notices", "notices"]  # asked again before the digest
    assert node.active() == []
    assert sink.sent == []


async def test_a_failing_queue_check_still_flushes_this_nodes_digest() -> None:
    sink = Sink()
    node = Notifier(sink, NotifySettings(hostname="node3.example"))

    class Broken(NodeStore):
        async def counts(self) -> dict[RecipientState, int]:
            raise StoreError("connection lost")

    notice_round = NoticeRound(node, Broken(leading=True), NOTICES)
    node.raise_("config_reload_failed", "relayd.toml", "line 3: unknown key", now=T0)
    with capture_logs() as logs:
        await notice_round(T0)
    assert [e["event"] for e in logs] == ["queue_check_failed", "notice_digest"]
    assert sink.sent[0][0].startswith("[relayd node3.example] The configuration could not")
