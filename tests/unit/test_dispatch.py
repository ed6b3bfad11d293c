"""The dispatcher's decisions in virtual time: a FakeClock whose sleep advances time, the real
SQLite store in tmp_path, and a fake Session that records when each message went out.

Only the sending is faked: leases, the rate ledger, holds and wait reasons go through the real
store, so what is checked here is what the daemon does, minus the network and the waiting.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relayd.config.model import Config
from relayd.delivery.lanes import LaneSet
from relayd.policy.limits import next_permitted
from relayd.policy.windows import SendWindow, is_open, next_open, parse_window
from relayd.store.sqlite.store import SqliteStore
from relayd.types import (
    Ceiling,
    Lease,
    NewMessage,
    Outgoing,
    QueueId,
    RcptDsn,
    Recipient,
    RecipientOutcome,
    RecipientState,
    SendResult,
    SmtpReply,
    UpstreamHold,
)
from relayd.units import format_iso, parse_rate
from tests.conftest import ConfigFactory

UPSTREAM = 'provider = "generic"\nhost = "127.0.0.1"\nport = 2\nsecurity = "none"\nauth = "none"\n'


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


T0 = utc(2026, 3, 26, 12)  # a Thursday


class FakeClock:
    """Virtual time for one sleeper: sleep() moves the clock forward and returns at once.

    Only one task may sleep on it (a single-upstream dispatcher with max_connections = 1);
    `on_tick` runs after every move, so a test can stop the dispatcher at a moment.
    """

    def __init__(self, start: float) -> None:
        self.t = start
        self.on_tick: Callable[[], None] = lambda: None

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        self.on_tick()
        await asyncio.sleep(0)


@dataclass
class Sent:
    at: float
    queue_id: str
    recipients: tuple[str, ...]
    rcpt_dsn: dict[str, RcptDsn] = field(default_factory=dict)


class FakeSession:
    """Answers each message with the next scripted reply ("421 4.7.0 ..."), then 250."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.replies: collections.deque[str] = collections.deque()
        self.sent: list[Sent] = []
        self.on_send: Callable[[], None] = lambda: None
        # virtual seconds each send takes, one per send, then none: the message arrives at
        # the end (Sent.at), when its final reply comes back
        self.durations: collections.deque[float] = collections.deque()
        self._progress = asyncio.Event()  # set by every send, for wait_sent()

    async def send(self, message: Outgoing) -> SendResult:
        if self.durations:
            self.clock.t += self.durations.popleft()
        recipients = message.recipients
        self.sent.append(Sent(self.clock.now(), message.name, recipients, dict(message.rcpt_dsn)))
        code, _, text = (self.replies.popleft() if self.replies else "250 2.0.0 OK").partition(" ")
        self.on_send()
        self._progress.set()
        reply = SmtpReply(int(code), text)
        return SendResult({rcpt: reply for rcpt in recipients}, reached_data=True)

    async def wait_sent(self, count: int) -> None:
        while len(self.sent) < count:
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        pass


class Harness:
    """One upstream ("main"), the real store, virtual time; run() until a condition holds."""

    def __init__(self, config: Config, store: SqliteStore, start: float) -> None:
        self.config = config
        self.store = store
        self.clock = FakeClock(start)
        self.session = FakeSession(self.clock)

    async def enqueue(self, at: float, *recipients: str) -> QueueId:
        return await self.store.enqueue(
            NewMessage(
                mail_from="app@example.org",
                recipients=tuple(Recipient(a) for a in recipients or ("someone@example.net",)),
                body=b"Subject: hi\r\n\r\nhello\r\n",
                upstream="main",
                message_id=f"<{at}@example.org>",
                received_at=at,
            )
        )

    async def run(self, *, sends: int | None = None, until: float | None = None) -> list[Sent]:
        """Run the dispatcher until `sends` messages went out or the clock passed `until`."""
        dispatcher = LaneSet(
            self.config, self.store, self.clock, "worker", lambda _up, _host: self.session
        )

        def check() -> None:
            if (sends is not None and len(self.session.sent) >= sends) or (
                until is not None and self.clock.t >= until
            ):
                dispatcher.stop()

        self.clock.on_tick = self.session.on_send = check
        await self.store.wait_for_work(0)  # the enqueues' wake-up: consumed, not a clock jump
        await asyncio.wait_for(dispatcher.run(), 60)
        return self.session.sent

    async def reason(self, queue_id: QueueId) -> str | None:
        view = await self.store.show(queue_id)
        assert view is not None
        (recipient,) = view.recipients
        return recipient.wait_reason


def max_in_window(sends: Sequence[Sent], period: float, weigh: bool = False) -> int:
    """The largest count (or recipient total) in ANY trailing window (t - period, t]; the
    maxima are at the windows that end at a send."""
    times = [(s.at, len(s.recipients) if weigh else 1) for s in sends]
    return max(sum(w for s, w in times if t - period < s <= t) for t, _ in times)


def ideal(
    arrivals: Sequence[float],
    ceilings: Sequence[Ceiling],
    min_interval: float,
    window: SendWindow | None,
) -> list[float]:
    """Each message, oldest first, at the earliest instant the limits and the window allow."""
    sends: list[float] = []
    t = arrivals[0]
    for arrival in arrivals:
        t = max(t, arrival)
        while True:
            t = next_permitted([(s, 1) for s in sends], t, ceilings, min_interval)
            opens = t if window is None else next_open(window, t)
            assert opens is not None
            if opens == t:
                break
            t = opens
        sends.append(t)
    return sends


# --- throughput within the limits -------------------------------------------------------


@pytest.mark.slow
async def test_a_backlog_through_gmail_like_limits_and_a_window_goes_as_fast_as_allowed(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """150 messages at 09:00 on a Friday; the daily cap stops Friday at 100, the weekend (with
    Europe/London's spring-forward) is closed, and Monday 08:00 BST sends the rest: every
    send at exactly the earliest instant the ceilings and the window allow, so no trailing
    window ever exceeds its N and the allowance is fully used."""
    limits = ["3/minute", "30/hour", "100/day"]
    config = make_config(
        UPSTREAM + f"rate_limits = {limits!r}\n".replace("'", '"'),
        extra='[upstreams.main.window]\ntimezone = "Europe/London"\ndays = "mon-fri"\n'
        'hours = ["08:00-18:00"]\n',
    )
    start = utc(2026, 3, 27, 9)
    arrivals = [start + i * 0.001 for i in range(150)]
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, start)
        ids = [await h.enqueue(at) for at in arrivals]
        sent = await h.run(sends=150, until=start + 5 * 86400)

    ceilings = [parse_rate(text) for text in limits]
    window = parse_window("Europe/London", "mon-fri", ["08:00-18:00"])
    assert [s.queue_id for s in sent] == ids  # oldest first
    for ceiling in ceilings:
        assert max_in_window(sent, ceiling.period) <= ceiling.count, ceiling
    assert all(is_open(window, s.at) for s in sent)
    expected = ideal(arrivals, ceilings, 0.0, window)
    assert [s.at for s in sent] == pytest.approx(expected, abs=1e-3)
    assert sum(s.at < utc(2026, 3, 28) for s in sent) == 100  # the daily cap, all of it
    assert sent[100].at == pytest.approx(utc(2026, 3, 30, 7))  # Monday 08:00 BST


async def test_min_interval_spreads_sends_and_count_recipients_weighs_them(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(
        UPSTREAM + 'rate_limits = ["6/minute"]\nmin_interval = "5s"\ncount = "recipients"\n'
    )
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, T0)
        for i, size in enumerate([2, 2, 3, 1, 1, 4]):
            await h.enqueue(T0 + i * 0.001, *(f"r{n}@example.net" for n in range(size)))
        sent = await h.run(sends=6, until=T0 + 3600)
    assert max_in_window(sent, 60.0, weigh=True) <= 6
    assert min(b.at - a.at for a, b in itertools.pairwise(sent)) >= 5.0
    # 2+2 at 0 and 5 s; the 3 waits for both to leave (60 s), the 1 fits beside it at 65 s,
    # the next 1 at 70 s, and the 4 waits for the 3 to leave the minute (120 s).
    assert [round(s.at - T0) for s in sent] == [0, 5, 60, 65, 70, 120]


async def test_a_send_that_took_long_is_counted_from_its_final_reply(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """2/10s; the first send takes 5 s (a slow new connection), so it arrives at T0 + 5, and
    the second right after it. Counted from its reservation, the first would leave the window
    at T0 + 10 and a third would arrive 5 s after the other two: 3 in 10 s at the provider."""

    config = make_config(UPSTREAM + 'rate_limits = ["2/10s"]\n')
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, T0)
        h.session.durations.append(5.0)
        for i in range(5):
            await h.enqueue(T0 + i * 0.001)
        sent = await h.run(sends=5, until=T0 + 3600)
    assert max_in_window(sent, 10.0) <= 2
    # The allowance is still used: two sends every 10 s from the first one's final reply.
    assert [s.at - T0 for s in sent] == pytest.approx([5.0, 5.0, 15.0, 15.0, 25.0])


# --- order and fairness -----------------------------------------------------------------


async def test_order_is_by_due_time_so_retries_and_fresh_mail_never_starve_each_other(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Under a full ledger (1/minute while mail arrives every 30 s), each message goes in the
    order it became due: a retry due at T0+145 goes after fresh mail due before it and before
    fresh mail that arrives later, however much keeps arriving."""
    config = make_config(UPSTREAM + 'rate_limits = ["1/minute"]\n')
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, T0)
        retry = await h.enqueue(T0 - 3600)  # old mail, deferred earlier: due at T0 + 145
        (lease,) = await store.lease_due("main", T0 - 3600, 1, 60, "earlier-run")
        deferred = RecipientOutcome(
            "someone@example.net", RecipientState.DEFERRED, "451 4.3.0 later", T0 + 145
        )
        await store.record_outcome(lease, [deferred], T0 - 3600)
        due = {retry: T0 + 145}
        for i in range(20):
            due[await h.enqueue(T0 + 30 * i)] = T0 + 30 * i
        sent = await h.run(sends=21, until=T0 + 7200)

    assert [s.queue_id for s in sent] == sorted(due, key=lambda queue_id: due[queue_id])
    assert [s.queue_id for s in sent].index(retry) == 5  # after those due at 0, 30, ... 120
    assert [s.at - T0 for s in sent] == pytest.approx([60.0 * i for i in range(21)])


# --- why a message waits ----------------------------------------------------------------


async def test_a_closed_window_says_until_when_in_the_window_time_zone(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(
        UPSTREAM,
        extra='[upstreams.main.window]\ntimezone = "Europe/London"\ndays = "mon-fri"\n'
        'hours = ["08:00-18:00"]\n',
    )
    saturday = utc(2026, 11, 21, 12)
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, saturday)
        queue_id = await h.enqueue(saturday)
        assert await h.run(until=saturday + 3600) == []
        assert await h.reason(queue_id) == "window closed until 2026-11-23T08:00+00:00"
        (sent,) = await h.run(sends=1, until=saturday + 7 * 86400)
        assert sent.at == utc(2026, 11, 23, 8)
        view = await store.show(queue_id)
    assert view is not None
    assert view.recipients[0].state is RecipientState.DELIVERED
    assert view.recipients[0].wait_reason is None


async def test_a_full_ledger_names_the_binding_ceiling_and_when_it_frees(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(UPSTREAM + 'rate_limits = ["3/minute", "200/hour"]\n')
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, T0)
        ids = [await h.enqueue(T0 + i * 0.001) for i in range(5)]
        sent = await h.run(until=T0 + 30)
        assert len(sent) == 3
        expected = f"rate limit 3/minute until {format_iso(T0 + 60)}"
        assert [await h.reason(queue_id) for queue_id in ids[3:]] == [expected, expected]
        assert len(await h.run(sends=5, until=T0 + 3600)) == 5


async def test_a_deferred_recipient_says_which_retry_and_when(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(make_config(UPSTREAM), store, T0)
        h.session.replies.extend(["451 4.3.0 try later", "451 4.3.0 try later"])
        queue_id = await h.enqueue(T0)
        await h.run(sends=1)
        assert (
            await h.reason(queue_id) == f"retry 1 at {format_iso(T0 + 0.2)}"
        )  # retry = 200ms, 400ms
        await h.run(sends=2, until=T0 + 60)
        assert await h.reason(queue_id) == f"retry 2 at {format_iso(h.session.sent[1].at + 0.4)}"


async def test_each_attempt_hands_the_session_the_recipients_dsn_parameters(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """NOTIFY/ORCPT stored at intake reach Session.send with every lease, retries included
    (the session decides whether the upstream gets them)."""
    dsn = {
        "a@example.net": RcptDsn("SUCCESS,FAILURE", "rfc822;a+x@example.net"),
        "b@example.net": RcptDsn(),
        "c@example.net": RcptDsn("NEVER"),
    }
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(make_config(UPSTREAM), store, T0)
        h.session.replies.append("451 4.3.0 try later")
        rcpts = tuple(Recipient(address, params) for address, params in dsn.items())
        await store.enqueue(NewMessage("app@example.org", rcpts, b"x\r\n", "main", "<m@x>", T0))
        sent = await h.run(sends=2, until=T0 + 60)
    assert [s.recipients for s in sent] == [tuple(dsn)] * 2
    assert [s.rcpt_dsn for s in sent] == [dsn, dsn]


async def test_a_throttle_pauses_the_upstream_backs_off_and_resumes(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(UPSTREAM + 'throttle_backoff = ["1m", "5m"]\n')
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(config, store, T0)
        h.session.replies.extend(["421 4.7.0 Try again later", "421 4.7.0 Try again later"])
        first = await h.enqueue(T0)
        second = await h.enqueue(T0 + 1)
        await h.run(until=T0 + 30)
        held = f"upstream throttled until {format_iso(T0 + 60)}"
        assert [await h.reason(first), await h.reason(second)] == [held, held]
        sent = await h.run(sends=4, until=T0 + 3600)
        assert await store.upstream_hold("main") is None  # a delivery ended the hold
    # 421 at T0 (hold 1m); at T0+60 the oldest due goes first: `second` (due T0+1) before
    # `first` (deferred to T0+60); 421 again (hold 5m, the next step); at T0+360 both go,
    # `first` (due T0+60) before `second` (due T0+360).
    assert [(s.at - T0, s.queue_id) for s in sent] == [
        (0, first),
        (60, second),
        (360, first),
        (360, second),
    ]


async def test_an_account_hold_left_by_an_earlier_run_is_lifted_at_start(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    async with SqliteStore(tmp_path / "virtual.db") as store:
        h = Harness(make_config(UPSTREAM), store, T0)
        await store.hold_upstream(UpstreamHold("main", None, "535 5.7.8 bad credentials"))
        await h.enqueue(T0)
        assert len(await h.run(sends=1, until=T0 + 600)) == 1
        assert await store.upstream_hold("main") is None


class GatedStore(SqliteStore):
    """The real store, whose outcome writes wait until `gate` opens."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.recorded: list[str] = []

    async def record_outcome(
        self, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
    ) -> None:
        await self.gate.wait()
        await super().record_outcome(lease, outcomes, now)
        self.recorded.append(lease.queue_id)


async def test_a_lane_sends_the_next_message_while_the_last_outcome_is_written(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A delivery does not wait for its outcome's commit; the batch does, before it ends
    (so the next lease sees every outcome)."""
    async with GatedStore(tmp_path / "virtual.db") as store:
        h = Harness(make_config(UPSTREAM), store, T0)
        ids = [await h.enqueue(T0 - 3 + n) for n in range(3)]  # all due, oldest first
        run = asyncio.ensure_future(h.run(sends=3))
        await asyncio.wait_for(h.session.wait_sent(3), 10)
        assert [s.queue_id for s in h.session.sent] == ids  # all three went out ...
        assert store.recorded == []  # ... while the first outcome was still unwritten
        await asyncio.sleep(0.1)
        assert not run.done()  # the batch waits for its writes
        store.gate.set()
        await asyncio.wait_for(run, 10)
        assert sorted(store.recorded) == sorted(ids)
        for queue_id in ids:
            view = await store.show(queue_id)
            assert view is not None
            assert [r.state for r in view.recipients] == [RecipientState.DELIVERED]


class SlowHoldStore(SqliteStore):
    """The real store, whose upstream_hold (read by Lane.start) waits until `gate` opens."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()

    async def upstream_hold(self, upstream: str) -> UpstreamHold | None:
        self.asked.set()
        await self.gate.wait()
        return await super().upstream_hold(upstream)


async def test_a_stop_while_a_lane_starts_stops_that_lane_too(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """The daemon stops its LaneSet at once when startup fails right after it (say intake
    cannot bind): a lane still reading its hold must not start workers that nobody stops."""
    async with SlowHoldStore(tmp_path / "virtual.db") as store:
        clock = FakeClock(T0)
        session = FakeSession(clock)
        lanes = LaneSet(make_config(UPSTREAM), store, clock, "worker", lambda _u, _h: session)
        run = asyncio.ensure_future(lanes.run())
        await asyncio.wait_for(store.asked.wait(), 5)
        lanes.stop()
        store.gate.set()
        await asyncio.wait_for(run, 5)
        assert lanes.lanes == {}
