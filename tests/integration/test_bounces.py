"""The IMAP bounce poller against a real, private Dovecot (tests/support/dovecot.py) and the
real queue store: relayd.bounces.store.QueueBounceStore over SQLite, as the daemon wires it.

The inbox holds provider bounces (Gmail, Microsoft 365, Postfix, Exim, a delay warning)
among ordinary mail; the store holds the originals relayd sent, which the upstream accepted.
The poller must match each report to its original (by relayd's queue id in the Message-ID
or X-Relayd-ID, else by Message-ID), mark the reported recipients bounced with the
diagnostic, forward the report through the queue to bounces.mailbox, move it to `move_to`
(created when missing), leave everything else exactly as it was, remember where it stopped
across restarts (UIDVALIDITY and UID in the store), and start over when the server changes
UIDVALIDITY.
"""

from __future__ import annotations

import asyncio
import email
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioimaplib  # type: ignore[import-untyped]
import pytest
from structlog.testing import capture_logs

from relayd import metrics
from relayd.bounces.imap import ImapAuthError, ImapSession
from relayd.bounces.poller import BouncePoller, ImapSettings
from relayd.bounces.store import QueueBounceStore
from relayd.clock import SystemClock
from relayd.config.model import Config
from relayd.dsn.parse import ParsedDsn, parse_dsn
from relayd.errors import StoreUnavailable
from relayd.store import store_for
from relayd.store.base import Store
from relayd.types import (
    MessageView,
    NewMessage,
    QueueId,
    Recipient,
    RecipientOutcome,
    RecipientState,
    RecipientView,
)
from tests.conftest import ConfigFactory
from tests.support.dovecot import PASSWORD, Dovecot, private_dovecot

pytestmark = pytest.mark.imap

SAMPLES = Path(__file__).parent.parent / "support" / "dsn_samples"
NOW = 1_704_200_000.0
SENT_AT = NOW - 3600  # the originals were accepted by the upstream an hour earlier
MOVE_TO = "relayd/bounces"
BOUNCE_MAILBOX = "bounces@practice.example"
ACCEPTED = "250 2.0.0 OK queued as 7F3A2"
# fixture -> (Message-ID the original was sent with, its queue id, reported recipients)
BOUNCES = {
    "gmail_failure.eml": (
        "<relayd.238HJPJKCKJLFMR2K@relay.test>",
        "238HJPJKCKJLFMR2K",
        [("no-such-user@example.com", "failed", "5.1.1")],
    ),
    "microsoft365_ndr.eml": (
        "<inv-1042.20240102101500@erp.practice.example>",
        "238HJPJKD0B7W5XQ1",
        [("accounts@example.org", "failed", "5.1.10"), ("payroll@example.org", "failed", "5.2.2")],
    ),
    "postfix_bounce.eml": (
        "<relayd.238HJPJKF9N3CT6V8@relay.test>",
        "238HJPJKF9N3CT6V8",
        [("frank@example.net", "failed", "5.7.1")],
    ),
    "exim_bounce.eml": (
        "<relayd.238HJPJKGH2MZP4RB@relay.test>",
        "238HJPJKGH2MZP4RB",
        [("nobody@example.org", "failed", "5.1.1"), ("old.address@example.org", "failed", "5.0.0")],
    ),
    "postfix_delayed.eml": (
        "<relayd.238HJPJKHX7QD2L5C@relay.test>",
        "238HJPJKHX7QD2L5C",
        [("grace@example.com", "delayed", "4.4.1")],
    ),
}
# What each failed recipient's diagnostic says (stored as its last reply once bounced).
DIAGNOSTICS = {
    "no-such-user@example.com": "550 5.1.1 <no-such-user@example.com>: Recipient address "
    "rejected: User unknown in virtual mailbox table",
    "accounts@example.org": "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient "
    "accounts@example.org not found by SMTP address lookup",
    "payroll@example.org": "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:"
    "QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
    "frank@example.net": "550 5.7.1 <frank@example.net>: Recipient address rejected: Access denied",
    "nobody@example.org": "550 5.1.1 <nobody@example.org>: Recipient address rejected: "
    "User unknown in local recipient table",
    "old.address@example.org": "550 Mailbox disabled for this recipient",
}
# A recipient of the Microsoft 365 message that was delivered and is not in the report.
ALSO_DELIVERED = "reception@example.org"
ORDINARY = {  # name -> flags the owner gave it (must be exactly the same afterwards)
    "reply.eml": "",
    "out_of_office.eml": "\\Flagged",
    "newsletter": "\\Seen \\Answered",
}
NEWSLETTER = (
    b"From: news@example.com\nTo: office@practice.example\nSubject: Our spring offers\n"
    b"Message-ID: <spring-2024@news.example.com>\nDate: Tue, 2 Jan 2024 09:00:00 +0000\n\n"
    + b"A long ordinary message.\n"
    * 4000
)


def sample(name: str) -> bytes:
    return NEWSLETTER if name == "newsletter" else (SAMPLES / name).read_bytes()


def as_received(raw: bytes) -> bytes:
    """A message as the sample file has it (IMAP and the queue carry CRLF line ends)."""
    return raw.replace(b"\r\n", b"\n")


class ObservedStore(QueueBounceStore):
    """The production BounceStore over a real store, recording what the poller asked of it.

    Not a double: every call goes to QueueBounceStore and so to the SQLite store. The
    records keep the call-level assertions (the order of saved UIDs, the report handed to
    the match) that the store's final state cannot show, and `changed` lets a test wait for
    the poller's next save or forward without sleeping. `fail_forward` injects a
    StoreUnavailable for the named originals' reports, once each: a real store cannot be
    made to fail for one message only.
    """

    def __init__(self, config: Config, store: Store) -> None:
        super().__init__(config, store)
        self.queue = store  # the whole store, for the tests' own reads and setup
        self.saves: list[tuple[str, int, int]] = []
        self.matches: list[tuple[ParsedDsn, str | None]] = []
        self.forwarded: list[str] = []  # queue ids of the originals, in forwarding order
        self.fail_forward: set[str] = set()
        self.changed = asyncio.Event()

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        await super().save_imap_state(account, uidvalidity, last_uid)
        self.saves.append((account, uidvalidity, last_uid))
        self.changed.set()

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> str | None:
        queue_id = await super().match_bounce(parsed, now)
        self.matches.append((parsed, queue_id))
        return queue_id

    async def forward_report(self, raw: bytes, queue_id: str, now: float) -> None:
        if queue_id in self.fail_forward:
            self.fail_forward.discard(queue_id)
            raise StoreUnavailable("injected: the disk is full")
        await super().forward_report(raw, queue_id, now)
        self.forwarded.append(queue_id)
        self.changed.set()

    @property
    def matched(self) -> list[ParsedDsn]:
        return [parsed for parsed, queue_id in self.matches if queue_id is not None]

    async def wait_until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Wait for the poller's saves and forwards until `condition` holds (a bound, not a
        pace: it returns as soon as the poller has done it)."""
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


@pytest.fixture
def config(make_config: ConfigFactory) -> Config:
    """A queue in tmp_path; forwarded reports route to the one upstream, "main"."""
    return make_config(
        'provider = "directory"\npath = "outbox"',
        extra=f'[bounces]\nmailbox = "{BOUNCE_MAILBOX}"\n',
    )


@asynccontextmanager
async def opened(config: Config) -> AsyncIterator[ObservedStore]:
    """The store as the daemon opens it (store_for(config.queue)); closed on exit."""
    store = store_for(config.queue)
    await store.open()
    try:
        yield ObservedStore(config, store)
    finally:
        await store.close()


@pytest.fixture
async def relay(config: Config) -> AsyncIterator[ObservedStore]:
    async with opened(config) as observed:
        yield observed


async def send(
    store: Store, queue_id: str, message_id: str, recipients: list[str], at: float = SENT_AT
) -> None:
    """Enqueue an original and record the upstream's 250 for every recipient, as a delivery
    does (a late bounce is about mail the upstream accepted)."""
    body = (
        f"From: billing@practice.example\r\nTo: {', '.join(recipients)}\r\n"
        f"Subject: Invoice 1042\r\nMessage-ID: {message_id}\r\nX-Relayd-ID: {queue_id}\r\n"
        "\r\nPlease find your invoice attached.\r\n"
    ).encode()
    await store.enqueue(
        NewMessage(
            mail_from="billing@practice.example",
            recipients=tuple(Recipient(address) for address in recipients),
            body=body,
            upstream="main",
            message_id=message_id,
            received_at=at,
            queue_id=QueueId(queue_id),
        )
    )
    (lease,) = await store.lease_due("main", at, 1, 60, "test-worker")
    assert lease.queue_id == queue_id
    delivered = [RecipientOutcome(r, RecipientState.DELIVERED, ACCEPTED) for r in lease.addresses]
    await store.record_outcome(lease, delivered, at + 1)


async def send_originals(store: Store) -> None:
    for message_id, queue_id, reported in BOUNCES.values():
        recipients = [address for address, _, _ in reported]
        if queue_id == "238HJPJKD0B7W5XQ1":
            recipients.append(ALSO_DELIVERED)
        await send(store, queue_id, message_id, recipients)


async def recipients_of(store: Store, queue_id: str) -> dict[str, RecipientView]:
    view = await store.show(QueueId(queue_id))
    assert view is not None, queue_id
    return {r.address: r for r in view.recipients}


async def reports(store: Store) -> list[tuple[MessageView, bytes]]:
    """The reports forwarded to the bounce mailbox: queued messages from <>, with bodies."""
    found = []
    for view in await store.list_messages():
        if [r.address for r in view.recipients] == [BOUNCE_MAILBOX]:
            found.append((view, await store.load_body(view.queue_id)))
    return found


def fill(server: Dovecot) -> dict[str, int]:
    """Bounces and ordinary mail interleaved, as an inbox has them; name -> UID."""
    names = ["reply.eml", *list(BOUNCES)[:2], "out_of_office.eml", *list(BOUNCES)[2:]]
    names.insert(4, "newsletter")
    return {name: server.append(sample(name), flags=ORDINARY.get(name, "")) for name in names}


def poller(server: Dovecot, store: QueueBounceStore, **settings: object) -> BouncePoller:
    return BouncePoller(server.settings(**settings), store, SystemClock())


async def test_finds_matches_forwards_and_moves_the_bounces(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    await send_originals(relay.queue)
    uids = fill(dovecot)
    before = {m.uid: m.flags for m in dovecot.messages()}
    assert MOVE_TO not in dovecot.folders()

    result = await poller(dovecot, relay).poll_once(NOW)

    assert (result.seen, result.bounces, result.matched, result.unmatched) == (8, 5, 5, 0)
    assert result.last_uid == max(uids.values())
    by_queue_id = {p.queue_id: p for p in relay.matched}
    for message_id, queue_id, recipients in BOUNCES.values():
        report = by_queue_id[queue_id]
        assert report.original_message_id == message_id
        got = [(r.final_recipient, r.action, r.status) for r in report.recipients]
        assert got == recipients

    # The store: each reported failure is bounced with its diagnostic; nothing else changed.
    for _, queue_id, reported in BOUNCES.values():
        stored = await recipients_of(relay.queue, queue_id)
        for address, action, _ in reported:
            if action == "failed":
                assert stored[address].state is RecipientState.BOUNCED, address
                assert stored[address].last_reply == DIAGNOSTICS[address]
            else:  # a delay is reported, not a bounce
                assert stored[address].state is RecipientState.DELIVERED, address
                assert stored[address].last_reply == ACCEPTED
    also = (await recipients_of(relay.queue, "238HJPJKD0B7W5XQ1"))[ALSO_DELIVERED]
    assert (also.state, also.last_reply) == (RecipientState.DELIVERED, ACCEPTED)

    # Each report is forwarded once, as received, from <> to the bounce mailbox via "main".
    assert sorted(relay.forwarded) == sorted(queue_id for _, queue_id, _ in BOUNCES.values())
    forwarded = await reports(relay.queue)
    assert sorted(as_received(body) for _, body in forwarded) == sorted(map(sample, BOUNCES))
    for view, _ in forwarded:
        assert (view.mail_from, view.upstream) == ("", "main")
        assert [r.state for r in view.recipients] == [RecipientState.QUEUED]

    assert MOVE_TO in dovecot.folders()
    moved = dovecot.messages(MOVE_TO)
    assert sorted(m.message_id or "" for m in moved) == sorted(map(_message_id, BOUNCES))
    left = dovecot.messages()
    assert [m.uid for m in left] == [uids[name] for name in ORDINARY if name in uids]
    assert {m.uid: m.flags for m in left} == {m.uid: before[m.uid] for m in left}
    assert all("\\Seen" not in m.flags for m in left if m.uid != uids["newsletter"])


async def test_matched_failures_count_as_bounced_recipients_of_their_upstream(
    relay: ObservedStore,
) -> None:
    """/metrics: each failure a report names counts once under the original's upstream, as
    a bounced recipient and as a late bounce of kind failed; a delay report counts as a late
    bounce of kind delayed only."""
    await send_originals(relay.queue)

    def count(name: str, **labels: str) -> float:
        labels["upstream"] = "main"
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    def counts() -> tuple[float, float, float]:
        return (
            count("relayd_recipients_total", outcome="bounced"),
            count("relayd_late_bounces_total", kind="failed"),
            count("relayd_late_bounces_total", kind="delayed"),
        )

    before = counts()
    for name in BOUNCES:
        parsed = parse_dsn(sample(name))
        assert parsed is not None
        assert await relay.match_bounce(parsed, NOW) is not None

    reported = [action for _, _, recipients in BOUNCES.values() for _, action, _ in recipients]
    assert (reported.count("failed"), reported.count("delayed")) == (6, 1)
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [6, 6, 1]


async def test_unmatched_bounces_and_ordinary_mail_are_left_alone(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    fill(dovecot)
    before = dovecot.messages()
    # relayd sent none of these: only unrelated mail is in the store
    await send(relay.queue, "238HJPJKB0000000Z", "<relayd.238HJPJKB0000000Z@relay.test>", ["a@b.c"])

    result = await poller(dovecot, relay).poll_once(NOW)

    assert (result.bounces, result.matched, result.unmatched) == (5, 0, 5)
    assert len(relay.matches) == 5
    assert relay.forwarded == []
    assert [v.queue_id for v in await relay.queue.list_messages()] == ["238HJPJKB0000000Z"]
    assert (await relay.queue.counts())[RecipientState.BOUNCED] == 0
    assert dovecot.messages() == before  # same UIDs, same flags: no \Seen, nothing moved
    assert MOVE_TO not in dovecot.folders()


async def test_a_report_without_relayds_id_matches_by_message_id(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    """The app gave its own Message-ID and the report does not carry X-Relayd-ID: the
    original is found by that Message-ID (the newest message with it)."""
    message_id, _, _ = BOUNCES["microsoft365_ndr.eml"]
    raw = sample("microsoft365_ndr.eml")
    without_id = re.sub(rb"(?m)^X-Relayd-ID: .*\n", b"", raw)
    assert without_id != raw
    older, newer = "238HJPJK90000000B", "238HJPJKN0000000C"  # the app sent it twice
    await send(relay.queue, older, message_id, ["accounts@example.org"], at=SENT_AT - 600)
    await send(relay.queue, newer, message_id, ["accounts@example.org", "payroll@example.org"])
    dovecot.append(without_id)

    result = await poller(dovecot, relay).poll_once(NOW)

    assert result.matched == 1
    ((parsed, queue_id),) = relay.matches
    assert (parsed.queue_id, parsed.original_message_id, queue_id) == (None, message_id, newer)
    stored = await recipients_of(relay.queue, newer)
    assert {a: r.state for a, r in stored.items()} == {
        "accounts@example.org": RecipientState.BOUNCED,
        "payroll@example.org": RecipientState.BOUNCED,
    }
    untouched = (await recipients_of(relay.queue, older))["accounts@example.org"]
    assert untouched.state is RecipientState.DELIVERED
    ((_, body),) = await reports(relay.queue)
    assert as_received(body) == as_received(without_id)
    assert dovecot.messages() == []


async def test_no_reprocessing_after_a_restart(dovecot: Dovecot, config: Config) -> None:
    uids = fill(dovecot)
    async with opened(config) as relay:
        await send_originals(relay.queue)
        await poller(dovecot, relay).poll_once(NOW)
        # the start point (all of it is recent), then after each message
        assert [uid for _, _, uid in relay.saves] == [0, *sorted(uids.values())]
        assert len(relay.matched) == 5

    account = dovecot.settings().account
    async with opened(config) as relay:  # a restart: a new store connection, a new poller
        state = await relay.queue.imap_state(account)
        assert state is not None and state[1] == max(uids.values())
        again = await poller(dovecot, relay).poll_once(NOW + 300)
        assert (again.seen, again.bounces) == (0, 0)
        assert relay.matches == []
        assert len(await reports(relay.queue)) == 5  # none forwarded twice

        late_id = "238HJPJKCKJLFMR3B"
        await send(
            relay.queue, late_id, f"<relayd.{late_id}@relay.test>", ["no-such-user@example.com"]
        )
        late = dovecot.append(sample("gmail_failure.eml").replace(b"JKCKJLFMR2K", b"JKCKJLFMR3B"))
        third = await poller(dovecot, relay).poll_once(NOW + 600)
        assert (third.seen, third.matched, third.last_uid) == (1, 1, late)
        assert relay.matched[-1].queue_id == late_id
        bounced = (await recipients_of(relay.queue, late_id))["no-such-user@example.com"]
        assert bounced.state is RecipientState.BOUNCED
        assert len(await reports(relay.queue)) == 6
        assert await relay.queue.imap_state(account) == (third.uidvalidity, late)


async def test_a_new_uidvalidity_reads_the_folder_again(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    await send_originals(relay.queue)
    fill(dovecot)
    first = await poller(dovecot, relay).poll_once(NOW)
    bounced = await recipients_of(relay.queue, "238HJPJKF9N3CT6V8")
    dovecot.set_uidvalidity(first.uidvalidity + 1000)
    ordinary = dovecot.messages()
    late = dovecot.append(sample("postfix_bounce.eml"))

    with capture_logs() as logs:
        result = await poller(dovecot, relay).poll_once(NOW + 300)

    assert result.reset and result.uidvalidity == first.uidvalidity + 1000
    changed = [e for e in logs if e["event"] == "imap_uidvalidity_changed"]
    assert changed and changed[0]["log_level"] == "warning"
    assert changed[0]["saved"] == first.uidvalidity
    assert result.seen == len(ordinary) + 1  # everything still there is read again
    assert (result.matched, result.last_uid) == (1, late)
    account = dovecot.settings().account
    assert await relay.queue.imap_state(account) == (first.uidvalidity + 1000, late)
    assert dovecot.messages() == ordinary  # and still not touched
    # matched again, the bounce stays as it was first recorded (the match is idempotent)
    assert await recipients_of(relay.queue, "238HJPJKF9N3CT6V8") == bounced


async def test_the_first_poll_reads_only_recent_mail(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    await send_originals(relay.queue)
    long_ago = NOW - 60 * 86400  # older than the 14 days of `lookback`
    old = dovecot.append(sample("postfix_bounce.eml"), date=long_ago)
    recent = dovecot.append(sample("exim_bounce.eml"), date=NOW - 3600)
    also_old = dovecot.append(sample("reply.eml"), date=long_ago)  # after, by UID

    result = await poller(dovecot, relay).poll_once(NOW)

    assert relay.saves[0] == (dovecot.settings().account, result.uidvalidity, old)
    assert (result.seen, result.matched, result.last_uid) == (2, 1, also_old)
    assert [p.queue_id for p in relay.matched] == ["238HJPJKGH2MZP4RB"]
    not_read = (await recipients_of(relay.queue, "238HJPJKF9N3CT6V8"))["frank@example.net"]
    assert not_read.state is RecipientState.DELIVERED
    assert [m.uid for m in dovecot.messages()] == [old, also_old]
    assert recent not in [m.uid for m in dovecot.messages()]


async def test_a_first_poll_with_only_old_mail_starts_after_it(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    await send_originals(relay.queue)
    old = [
        dovecot.append(sample(n), date=NOW - 90 * 86400) for n in ("gmail_failure.eml", "reply.eml")
    ]

    first = await poller(dovecot, relay).poll_once(NOW)
    assert (first.seen, first.last_uid) == (0, old[-1])
    new = dovecot.append(sample("postfix_bounce.eml"))
    second = await poller(dovecot, relay).poll_once(NOW + 300)
    assert (second.seen, second.matched, second.last_uid) == (1, 1, new)
    assert [p.queue_id for p in relay.matched] == ["238HJPJKF9N3CT6V8"]
    not_read = (await recipients_of(relay.queue, "238HJPJKCKJLFMR2K"))["no-such-user@example.com"]
    assert not_read.state is RecipientState.DELIVERED


async def test_a_store_failure_stops_the_poll_at_that_message(
    dovecot: Dovecot, relay: ObservedStore
) -> None:
    """bounces/poller.py: match, forward, move, then save the UID. A store failure ends the poll
    at that message; the next poll starts there, and nothing is forwarded twice."""
    await send_originals(relay.queue)
    uids = fill(dovecot)
    relay.fail_forward = {"238HJPJKD0B7W5XQ1"}  # the second bounce in the inbox

    with pytest.raises(StoreUnavailable):
        await poller(dovecot, relay).poll_once(NOW)

    account = dovecot.settings().account
    failed_at = uids["microsoft365_ndr.eml"]
    state = await relay.queue.imap_state(account)
    assert state is not None and state[1] == failed_at - 1
    assert relay.forwarded == ["238HJPJKCKJLFMR2K"]
    assert failed_at in [m.uid for m in dovecot.messages()]  # not moved: not forwarded

    result = await poller(dovecot, relay).poll_once(NOW + 300)

    assert (result.seen, result.matched, result.last_uid) == (6, 4, max(uids.values()))
    assert sorted(relay.forwarded) == sorted(queue_id for _, queue_id, _ in BOUNCES.values())
    assert len(await reports(relay.queue)) == 5
    stored = await recipients_of(relay.queue, "238HJPJKD0B7W5XQ1")
    assert stored["payroll@example.org"].state is RecipientState.BOUNCED
    assert [m.uid for m in dovecot.messages()] == [uids[n] for n in ORDINARY]


@pytest.mark.parametrize(
    ("capability", "expunged"),
    [
        ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS", True),  # COPY, STORE, UID EXPUNGE
        ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE", False),  # COPY, STORE: flagged only
    ],
)
async def test_move_without_the_move_extension(
    relay: ObservedStore, capability: str, expunged: bool
) -> None:
    await send_originals(relay.queue)
    with private_dovecot(capability=capability) as server:
        mine = server.append(sample("reply.eml"), flags="\\Deleted")  # the owner's, not ours
        bounce = server.append(sample("postfix_bounce.eml"))

        with capture_logs() as logs:
            result = await poller(server, relay).poll_once(NOW)

        assert result.matched == 1
        assert relay.forwarded == ["238HJPJKF9N3CT6V8"]
        assert [m.message_id for m in server.messages(MOVE_TO)] == [
            "<4T3kQ21Xz9z9sWd@mail.example.net>"
        ]
        left = {m.uid: m.flags for m in server.messages()}
        if expunged:
            assert left == {mine: frozenset({"\\Deleted"})}  # only that UID was expunged
        else:
            assert left == {mine: frozenset({"\\Deleted"}), bounce: frozenset({"\\Deleted"})}
            assert any(e["event"] == "bounce_flagged_deleted" for e in logs)


class PauseSignallingClock(SystemClock):
    """The real clock; `paused` is set when the poll loop starts its wait between polls
    (run() waits only after a poll finished or failed and was logged)."""

    def __init__(self) -> None:
        self.paused = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.paused.set()
        await super().sleep(seconds)


async def test_a_refused_login_names_no_password(dovecot: Dovecot, relay: ObservedStore) -> None:
    wrong = poller(dovecot, relay, password="not-the-" + PASSWORD, poll_interval=60)
    with pytest.raises(ImapAuthError, match="LOGIN refused"):
        await wrong.poll_once(NOW)

    clock = PauseSignallingClock()
    looping = BouncePoller(wrong.settings, relay, clock)
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(looping.run(stop))
        # Dovecot slows down logins after a failure (auth penalty): a generous bound.
        async with asyncio.timeout(30):
            await clock.paused.wait()
        stop.set()  # the loop is sleeping its 60 s interval: the stop ends it now
        await asyncio.wait_for(task, 5)
    failures = [e for e in logs if e["event"] == "bounce_poll_failed"]
    assert failures and failures[0]["log_level"] == "error"
    assert "ImapAuthError" in failures[0]["error"]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(wrong.settings)
    assert relay.saves == []
    assert await relay.queue.imap_state(dovecot.settings().account) is None


async def test_run_polls_until_stopped(dovecot: Dovecot, relay: ObservedStore) -> None:
    await send_originals(relay.queue)
    runner = poller(dovecot, relay, poll_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        dovecot.append(sample("exim_bounce.eml"))
        await relay.wait_until(lambda: bool(relay.forwarded))
        assert relay.forwarded == ["238HJPJKGH2MZP4RB"]
        ((view, _),) = await reports(relay.queue)
        assert view.mail_from == ""
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def watch_idle(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once the server has acknowledged an IDLE ("+ idling"): from then on it
    pushes new mail to the poller. (aioimaplib's idle_start returns at that point.)"""
    acknowledged = asyncio.Event()
    original = aioimaplib.IMAP4.idle_start

    async def idle_start(client: Any, timeout: float) -> asyncio.Future[Any]:
        idle: asyncio.Future[Any] = await original(client, timeout=timeout)
        acknowledged.set()
        return idle

    monkeypatch.setattr(aioimaplib.IMAP4, "idle_start", idle_start)
    return acknowledged


@pytest.mark.parametrize("idle", [True, False])
async def test_idle_wakes_the_poller_when_mail_arrives(
    dovecot: Dovecot, relay: ObservedStore, monkeypatch: pytest.MonkeyPatch, idle: bool
) -> None:
    await send_originals(relay.queue)
    idling = watch_idle(monkeypatch)
    runner = poller(dovecot, relay, poll_interval=60 if idle else 0.2, idle=idle)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await relay.wait_until(lambda: bool(relay.saves))  # the first poll's start point
        if idle:  # and the IDLE after that poll is in place
            async with asyncio.timeout(10):
                await idling.wait()
        dovecot.append(sample("gmail_failure.eml"))
        # far less than the 60 s interval: only IDLE can have woken the poller in time
        await relay.wait_until(lambda: bool(relay.forwarded))
        assert relay.forwarded == ["238HJPJKCKJLFMR2K"]
        assert idling.is_set() is idle
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # a stop ends an IDLE at once


@pytest.mark.parametrize("moves", [True, False], ids=["then-moves", "then-reads-only"])
async def test_mail_that_arrives_during_a_poll_is_not_left_for_the_next_interval(
    dovecot: Dovecot, relay: ObservedStore, monkeypatch: pytest.MonkeyPatch, moves: bool
) -> None:
    """The race before IDLE: a message arrives after the poll's search, while the poll still
    reads (and moves) what that search found. The server says so (`* 2 EXISTS`) in its reply
    to one of those commands, where the poller did not look, and has nothing new to say
    when IDLE starts; the message must not wait the whole poll_interval (60 s here)."""
    await send_originals(relay.queue)
    first = "gmail_failure.eml" if moves else "reply.eml"  # a bounce is moved; a reply is not
    dovecot.append(sample(first))
    search = ImapSession.uids_after
    arrived: list[int] = []

    async def uids_after(session: ImapSession, last_uid: int, since: float | None = None) -> Any:
        uids = await search(session, last_uid, since)
        if since is None and uids and not arrived:  # the poll's search found the first one
            arrived.append(dovecot.append(sample("exim_bounce.eml")))  # just after it
        return uids

    monkeypatch.setattr(ImapSession, "uids_after", uids_after)
    runner = poller(dovecot, relay, poll_interval=60, idle=True)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        # far less than the 60 s interval: the poll after the announcement found it
        await relay.wait_until(lambda: bool(arrived) and relay.saves[-1][2] == arrived[0])
        expected = ["238HJPJKCKJLFMR2K"] if moves else []
        assert relay.forwarded == [*expected, "238HJPJKGH2MZP4RB"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_idle_waits_when_nothing_new_was_announced(dovecot: Dovecot) -> None:
    """The SELECT's own EXISTS is no announcement: with nothing new, IDLE waits out its
    timeout (no busy loop of polls); an arrival after the SELECT ends it at once."""
    dovecot.append(sample("reply.eml"))
    settings = dovecot.settings()
    session = await ImapSession.connect(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        ssl_context=settings.ssl_context(),
    )
    async with session:
        assert (await session.select("INBOX")).exists == 1
        assert await session.uids_after(0) == [1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await session.idle(0.5, asyncio.Event())
        assert loop.time() - started >= 0.4
        assert not session.new_mail_announced()

        await session.select("INBOX")
        dovecot.append(sample("exim_bounce.eml"))
        await session.uids_after(0)  # the server may say `* 2 EXISTS` here, or at IDLE
        started = loop.time()
        assert await session.idle(30, asyncio.Event())
        assert loop.time() - started < 5
        assert session.new_mail_announced()
        await session.select("INBOX")
        assert not session.new_mail_announced()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="clear"):
        ImapSettings(host="imap.example.com", username="u", password="p", tls=False)
    with pytest.raises(ValueError, match="mailbox name"):
        ImapSettings(host="imap.example.com", username="u", password="p", move_to="a*")
    settings = ImapSettings(host="127.0.0.1", username="u", password="p", tls=False)
    assert settings.ssl_context() is None
    assert "password" not in repr(settings)


def _message_id(name: str) -> str:
    """The bounce report's own Message-ID (what lands in move_to)."""
    value = email.message_from_bytes(sample(name)).get("Message-ID")
    assert value, name
    return " ".join(str(value).split())
