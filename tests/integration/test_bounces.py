"""The IMAP bounce poller against a real, private Dovecot (tests/support/dovecot.py).

The inbox holds provider bounces (Gmail, Microsoft 365, Postfix, Exim, a delay warning)
among ordinary mail. The poller must hand each report to the store with the right original
and recipients, forward it, move it to `move_to` (created when missing), leave everything
else exactly as it was, remember where it stopped across restarts, and start over when the
server changes UIDVALIDITY.
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relayd.bounces import BouncePoller, BounceStore, ImapSettings
from relayd.clock import SystemClock
from relayd.imap import ImapAuthError
from tests.support.bounce_store import MemoryBounceStore
from tests.support.dovecot import PASSWORD, Dovecot, private_dovecot

pytestmark = pytest.mark.imap

SAMPLES = Path(__file__).parent.parent / "support" / "dsn_samples"
NOW = 1_704_200_000.0
MOVE_TO = "relayd/bounces"
# fixture -> (Message-ID the store knows the original by, queue id, reported recipients)
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


def known() -> dict[str, str]:
    return {message_id: queue_id for message_id, queue_id, _ in BOUNCES.values()}


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


def fill(server: Dovecot) -> dict[str, int]:
    """Bounces and ordinary mail interleaved, as an inbox has them; name -> UID."""
    names = ["reply.eml", *list(BOUNCES)[:2], "out_of_office.eml", *list(BOUNCES)[2:]]
    names.insert(4, "newsletter")
    return {name: server.append(sample(name), flags=ORDINARY.get(name, "")) for name in names}


def poller(server: Dovecot, store: BounceStore, **settings: object) -> BouncePoller:
    return BouncePoller(server.settings(**settings), store, SystemClock())


async def test_finds_matches_forwards_and_moves_the_bounces(dovecot: Dovecot) -> None:
    uids = fill(dovecot)
    store = MemoryBounceStore(known())
    before = {m.uid: m.flags for m in dovecot.messages()}
    assert MOVE_TO not in dovecot.folders()

    result = await poller(dovecot, store).poll_once(NOW)

    assert (result.seen, result.bounces, result.matched, result.unmatched) == (8, 5, 5, 0)
    assert result.last_uid == max(uids.values())
    by_queue_id = {p.queue_id: p for p in store.matches}
    for message_id, queue_id, recipients in BOUNCES.values():
        report = by_queue_id[queue_id]
        assert report.original_message_id == message_id
        got = [(r.final_recipient, r.action, r.status) for r in report.recipients]
        assert got == recipients
    assert store.bounced["238HJPJKD0B7W5XQ1"] == {"accounts@example.org", "payroll@example.org"}
    assert "238HJPJKHX7QD2L5C" not in store.bounced  # a delay is reported, not a bounce
    forwarded = {queue_id: raw for raw, queue_id, _ in store.forwarded}
    assert set(forwarded) == {queue_id for _, queue_id, _ in BOUNCES.values()}
    gmail_raw = forwarded["238HJPJKCKJLFMR2K"]
    assert gmail_raw.replace(b"\r\n", b"\n") == sample("gmail_failure.eml")  # as received

    assert MOVE_TO in dovecot.folders()
    moved = dovecot.messages(MOVE_TO)
    assert sorted(m.message_id or "" for m in moved) == sorted(map(_message_id, BOUNCES))
    left = dovecot.messages()
    assert [m.uid for m in left] == [uids[name] for name in ORDINARY if name in uids]
    assert {m.uid: m.flags for m in left} == {m.uid: before[m.uid] for m in left}
    assert all("\\Seen" not in m.flags for m in left if m.uid != uids["newsletter"])


async def test_unmatched_bounces_and_ordinary_mail_are_left_alone(dovecot: Dovecot) -> None:
    fill(dovecot)
    before = dovecot.messages()
    store = MemoryBounceStore()  # relayd sent none of these

    result = await poller(dovecot, store).poll_once(NOW)

    assert (result.bounces, result.matched, result.unmatched) == (5, 0, 5)
    assert len(store.matches) == 5
    assert store.forwarded == []
    assert dovecot.messages() == before  # same UIDs, same flags: no \Seen, nothing moved
    assert MOVE_TO not in dovecot.folders()


async def test_no_reprocessing_after_a_restart(dovecot: Dovecot) -> None:
    uids = fill(dovecot)
    store = MemoryBounceStore(known())
    await poller(dovecot, store).poll_once(NOW)
    # the start point (all of it is recent), then after each message
    assert [uid for _, _, uid in store.saves] == [0, *sorted(uids.values())]

    again = await poller(dovecot, store).poll_once(NOW + 300)  # a new poller: a restart
    assert (again.seen, again.bounces) == (0, 0)
    assert len(store.matches) == 5

    late = dovecot.append(sample("gmail_failure.eml").replace(b"JKCKJLFMR2K", b"JKCKJLFMR3B"))
    store.known["<relayd.238HJPJKCKJLFMR3B@relay.test>"] = "238HJPJKCKJLFMR3B"
    third = await poller(dovecot, store).poll_once(NOW + 600)
    assert (third.seen, third.matched, third.last_uid) == (1, 1, late)
    assert store.matches[-1].queue_id == "238HJPJKCKJLFMR3B"


async def test_a_new_uidvalidity_reads_the_folder_again(dovecot: Dovecot) -> None:
    fill(dovecot)
    store = MemoryBounceStore(known())
    first = await poller(dovecot, store).poll_once(NOW)
    dovecot.set_uidvalidity(first.uidvalidity + 1000)
    ordinary = dovecot.messages()
    late = dovecot.append(sample("postfix_bounce.eml"))

    with capture_logs() as logs:
        result = await poller(dovecot, store).poll_once(NOW + 300)

    assert result.reset and result.uidvalidity == first.uidvalidity + 1000
    changed = [e for e in logs if e["event"] == "imap_uidvalidity_changed"]
    assert changed and changed[0]["log_level"] == "warning"
    assert changed[0]["saved"] == first.uidvalidity
    assert result.seen == len(ordinary) + 1  # everything still there is read again
    assert (result.matched, result.last_uid) == (1, late)
    assert store.states[dovecot.settings().account] == (first.uidvalidity + 1000, late)
    assert dovecot.messages() == ordinary  # and still not touched


async def test_the_first_poll_reads_only_recent_mail(dovecot: Dovecot) -> None:
    long_ago = NOW - 60 * 86400  # older than the 14 days of `lookback`
    old = dovecot.append(sample("postfix_bounce.eml"), date=long_ago)
    recent = dovecot.append(sample("exim_bounce.eml"), date=NOW - 3600)
    also_old = dovecot.append(sample("reply.eml"), date=long_ago)  # after, by UID
    store = MemoryBounceStore(known())

    result = await poller(dovecot, store).poll_once(NOW)

    assert store.saves[0] == (dovecot.settings().account, result.uidvalidity, old)
    assert (result.seen, result.matched, result.last_uid) == (2, 1, also_old)
    assert [p.queue_id for p in store.matches] == ["238HJPJKGH2MZP4RB"]
    assert [m.uid for m in dovecot.messages()] == [old, also_old]
    assert recent not in [m.uid for m in dovecot.messages()]


async def test_a_first_poll_with_only_old_mail_starts_after_it(dovecot: Dovecot) -> None:
    old = [
        dovecot.append(sample(n), date=NOW - 90 * 86400) for n in ("gmail_failure.eml", "reply.eml")
    ]
    store = MemoryBounceStore(known())

    first = await poller(dovecot, store).poll_once(NOW)
    assert (first.seen, first.last_uid) == (0, old[-1])
    new = dovecot.append(sample("postfix_bounce.eml"))
    second = await poller(dovecot, store).poll_once(NOW + 300)
    assert (second.seen, second.matched, second.last_uid) == (1, 1, new)
    assert [p.queue_id for p in store.matches] == ["238HJPJKF9N3CT6V8"]


@pytest.mark.parametrize(
    ("capability", "expunged"),
    [
        ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS", True),  # COPY, STORE, UID EXPUNGE
        ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE", False),  # COPY, STORE: flagged only
    ],
)
async def test_move_without_the_move_extension(capability: str, expunged: bool) -> None:
    with private_dovecot(capability=capability) as server:
        mine = server.append(sample("reply.eml"), flags="\\Deleted")  # the owner's, not ours
        bounce = server.append(sample("postfix_bounce.eml"))
        store = MemoryBounceStore(known())

        with capture_logs() as logs:
            result = await poller(server, store).poll_once(NOW)

        assert result.matched == 1
        assert [m.message_id for m in server.messages(MOVE_TO)] == [
            "<4T3kQ21Xz9z9sWd@mail.example.net>"
        ]
        left = {m.uid: m.flags for m in server.messages()}
        if expunged:
            assert left == {mine: frozenset({"\\Deleted"})}  # only that UID was expunged
        else:
            assert left == {mine: frozenset({"\\Deleted"}), bounce: frozenset({"\\Deleted"})}
            assert any(e["event"] == "bounce_flagged_deleted" for e in logs)


async def test_a_refused_login_names_no_password(dovecot: Dovecot) -> None:
    store = MemoryBounceStore()
    wrong = poller(dovecot, store, password="not-the-" + PASSWORD, poll_interval=60)
    with pytest.raises(ImapAuthError, match="LOGIN refused"):
        await wrong.poll_once(NOW)

    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(wrong.run(stop))
        failures: list[MutableMapping[str, Any]] = []
        for _ in range(200):  # Dovecot slows down logins after a failure (auth penalty)
            failures = [e for e in logs if e["event"] == "bounce_poll_failed"]
            if failures:
                break
            await asyncio.sleep(0.05)
        stop.set()  # the loop is sleeping its 60 s interval: the stop ends it now
        await asyncio.wait_for(task, 5)
    assert failures and failures[0]["log_level"] == "error"
    assert "ImapAuthError" in failures[0]["error"]
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(wrong.settings)
    assert store.saves == []


async def test_run_polls_until_stopped(dovecot: Dovecot) -> None:
    store = MemoryBounceStore(known())
    runner = poller(dovecot, store, poll_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        dovecot.append(sample("exim_bounce.eml"))
        for _ in range(100):
            if store.forwarded:
                break
            await asyncio.sleep(0.05)
        assert [queue_id for _, queue_id, _ in store.forwarded] == ["238HJPJKGH2MZP4RB"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("idle", [True, False])
async def test_idle_wakes_the_poller_when_mail_arrives(dovecot: Dovecot, idle: bool) -> None:
    store = MemoryBounceStore(known())
    runner = poller(dovecot, store, poll_interval=60 if idle else 0.2, idle=idle)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(100):  # the first poll has saved its start point: now idle
            if store.saves:
                break
            await asyncio.sleep(0.05)
        dovecot.append(sample("gmail_failure.eml"))
        for _ in range(100):  # 5 s, far less than the 60 s interval
            if store.forwarded:
                break
            await asyncio.sleep(0.05)
        assert [queue_id for _, queue_id, _ in store.forwarded] == ["238HJPJKCKJLFMR2K"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)  # a stop ends an IDLE at once


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
