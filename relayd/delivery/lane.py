"""The delivery loop: per-upstream lanes that lease due mail and deliver it within limits.

A lane asks, in order: is the upstream held (throttled, auth failing)? is its send window open? did
the rate ledger last say "not before T"? is there due mail? may it send now (the store's rate
ledger reserves the slot atomically)? Then it delivers and records each recipient's outcome. Lanes
of different upstreams never wait on each other.

Oldest due first (the store leases by due time): fresh mail is due when it arrives, a retry
when its backoff ends, so neither starves the other. A message the ledger turns away keeps
its place; the lane sleeps until the ledger's time instead of leasing the next message.

Why a lane waits ("window closed until ...", "rate limit 200/hour until ...") is logged and
stored when it changes: one row per upstream, shown by the queue tool on every waiting
message, so a long wait costs one write however long the backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from relayd.clock import Clock
from relayd.config.model import Config, UpstreamConfig
from relayd.delivery import ledger, renewal
from relayd.delivery.holds import hold_upstream
from relayd.delivery.notices import UpstreamNotices
from relayd.delivery.senders import SenderHolds
from relayd.delivery.session import Session
from relayd.delivery.slots import SessionSlots
from relayd.delivery.watch import Watch
from relayd.errors import LeaseLost, StoreError, UpstreamUnavailable
from relayd.logs import get_logger
from relayd.policy.deadlines import FINAL_REPLY_WAIT
from relayd.policy.outcome import (
    Action,
    RecipientReply,
    classify_reply,
    is_expired,
    recipient_outcome,
)
from relayd.policy.waits import MAX_SLEEP, UNKNOWN, Wait, hold_wait, window_wait
from relayd.policy.windows import parse_window
from relayd.reports import dsn_reports
from relayd.store.base import DeliveryQueue, SendLedger, UpstreamHolds
from relayd.types import (
    Lease,
    Outgoing,
    RecipientOutcome,
    RecipientState,
    SendResult,
    SmtpReply,
)
from relayd.units import format_iso

log = get_logger("dispatch")

IDLE_CLOSE = 30.0  # close an idle upstream connection after this many seconds
BATCH = 32  # leases taken at once by an unthrottled lane
STORE_BACKOFF = 1.0  # seconds to wait after a store error before trying again
SHOW_MIN_WAIT = 1.0  # shorter waits (min_interval spacing) are neither logged nor stored

SessionFactory = Callable[[UpstreamConfig, str], Session]
Writes = list[asyncio.Task[None]]  # a batch's outcome writes, made while the next sends


class LaneStore(DeliveryQueue, SendLedger, UpstreamHolds, dsn_reports.ReportStore, Protocol):
    """What a lane does to the store: lease and record, reserve sends, hold its upstream and
    say why it waits, and the delivery reports an outcome calls for."""


class Lane:
    """Delivery for one upstream account, with `max_connections` workers."""

    def __init__(
        self,
        config: Config,
        upstream: UpstreamConfig,
        store: LaneStore,
        clock: Clock,
        worker: str,
        session_factory: SessionFactory,
        notices: UpstreamNotices | None = None,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.notices = notices or UpstreamNotices()  # operator notices (delivery/notices.py)
        self.name = upstream.name
        self.store = store
        self.clock = clock
        self.worker = worker
        self.session_factory = session_factory
        w = upstream.window
        self.window = parse_window(w.timezone, w.days, w.hours, w.closed_dates) if w else None
        self.stopping = False
        self.in_flight = 0
        self.throttled = False  # a hold was set by this lane and not yet cleared
        self.ledger_wait: Wait | None = None  # the rate ledger's last "not before"
        self._shown: Wait | None = UNKNOWN  # the wait this lane last wrote to the store
        self.senders = SenderHolds()  # senders the account may not send as (SendAsDenied)
        self.slots = SessionSlots(self.name, upstream.max_connections, clock)  # 432 4.3.2
        self.watch = Watch(store, clock)  # how idle workers wait, which ones new mail wakes

    async def start(self) -> None:
        """Lift an account hold left by an earlier run: a restart (after a configuration
        change) tries the account again; a throttle hold stays, the provider still counts."""
        try:
            hold = await self.store.upstream_hold(self.name)
            if hold is not None and hold.until is None:
                await self.store.release_upstream(self.name)
                log.info("upstream_released", upstream=self.name, reason=hold.reason, why="start")
        except StoreError as exc:
            log.error("store_error", upstream=self.name, error=str(exc))

    def stop(self) -> None:
        """Stop leasing; a worker sleeping for work wakes up and ends."""
        self.stopping = True
        self.watch.stop()

    async def run_worker(self, index: int = 0) -> None:
        session = self.session_factory(self.upstream, self.config.server.hostname)
        try:
            while not self.stopping:
                try:
                    if not self.slots.allows(index):  # the upstream wants fewer sessions
                        await session.close()
                        self.slots.closed(index)
                        await self.watch.idle(self.slots.regrow_in(), watch=False)
                        continue
                    await self._step(session)
                except Exception as exc:
                    # A locked or full store, or a bug, must not stop every upstream's mail:
                    # log it and go on; leases expire if need be.
                    event = "store_error" if isinstance(exc, StoreError) else "lane_error"
                    log.exception(event, upstream=self.name)
                    await self._sleep(STORE_BACKOFF, session)
        finally:
            await session.close()

    async def _step(self, session: Session) -> None:
        now = self.clock.now()
        wait = await self._gate(now)
        await self._show(wait, now)
        if wait is not None:
            await self._sleep(wait.seconds(now), session)
            return
        limit = 1 if self.upstream.rate_limits or self.upstream.min_interval else BATCH
        leases = await self.store.lease_due(
            self.name, now, limit, self.config.queue.lease_time, self.worker
        )
        if not leases:
            due = await self.store.next_due(self.name, now)
            await self._sleep((due - now) if due is not None else MAX_SLEEP, session)
            return
        if len(leases) == limit:  # a backlog: every idle worker may find work
            self.watch.wake_all()
        writes: Writes = []
        unsent = 0  # leases[unsent:] have no outcome on its way to the store
        try:
            for index, lease in enumerate(leases):
                unsent = index
                if self.stopping:
                    await self._put_back(leases[index:], "daemon stopping")
                    return
                wait = await self._attempt(session, lease, writes)
                unsent = index + 1
                if wait is not None:  # held or refused: the rest of the batch waits too
                    await self._put_back(leases[index + 1 :], wait.reason)
                    return
        except asyncio.CancelledError:  # shutdown_timeout or a reload's grace ran out
            await self._put_back(leases[unsent:], "delivery cancelled by a stop or reload")
            raise
        finally:
            await self._written(writes)

    async def _written(self, writes: Writes) -> None:
        """Wait for a batch's outcome writes: the next lease sees every outcome recorded."""
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, Exception):  # _record logs store errors itself
                log.error("lane_error", upstream=self.name, exc_info=result)

    async def _gate(self, now: float) -> Wait | None:
        """Why the upstream may not send now (hold, closed window, ledger), or None."""
        hold = await self.store.upstream_hold(self.name)
        if hold is not None:
            self.throttled = True  # a later success clears it, so the next backoff restarts
            if hold.until is None or hold.until > now:
                return hold_wait(hold)
        if self.window is not None and (closed := window_wait(self.window, now)) is not None:
            return closed
        wait = self.ledger_wait
        return wait if wait is not None and wait.seconds(now) > 0 else None

    async def _show(self, wait: Wait | None, now: float) -> None:
        """Log and store why the upstream waits, when that changes (one row, not one per
        message); short waits such as min_interval spacing count as not waiting."""
        if wait is not None and wait.seconds(now) < SHOW_MIN_WAIT:
            wait = None
        if wait == self._shown:
            return
        if wait is None:
            await self.store.set_upstream_wait(self.name, None, None)
        else:
            await self.store.set_upstream_wait(self.name, wait.reason, wait.until)
            until = format_iso(wait.until) if wait.until is not None else None
            log.info(wait.event, upstream=self.name, reason=wait.reason, until=until)
        self._shown = wait

    async def _sleep(self, seconds: float, session: Session) -> None:
        """Wait for new mail or `seconds`; close the upstream connection after IDLE_CLOSE."""
        seconds = min(max(seconds, 0.0), MAX_SLEEP)
        if seconds > IDLE_CLOSE:
            if await self.watch.idle(IDLE_CLOSE):
                return
            await session.close()
            seconds -= IDLE_CLOSE
        if seconds > 0:
            await self.watch.idle(seconds)

    async def _put_back(self, leases: list[Lease], reason: str, until: float = 0.0) -> None:
        """End leases unattempted; release() only delays, so each message keeps its place.
        A cancelled send's lease too: the mail is due again at once, no attempt counted."""
        for lease in leases:
            try:
                await self.store.release(lease, max(until, lease.received_at), reason)
            except LeaseLost:
                log.warning("lease_lost", queue_id=lease.queue_id, upstream=self.name)
            except StoreError as exc:  # its lease expires (or, on SQLite, the next start ends it)
                log.error("store_error", queue_id=lease.queue_id, error=str(exc))

    async def _raised(self, session: Session, lease: Lease, exc: Exception, writes: Writes) -> None:
        """An unforeseen error (an address aiosmtplib refuses, a bug) touches this message only."""
        log.exception("delivery_error", queue_id=lease.queue_id, upstream=self.name)
        await session.close()  # it may be mid-transaction: the next message starts afresh
        now = self.clock.now()
        reply = SmtpReply(0, f"unexpected error: {type(exc).__name__}: {exc}")
        replies = [RecipientReply(rcpt, Action.RETRY, reply) for rcpt in lease.addresses]
        outcomes = [self._outcome(lease, item, now) for item in replies]
        writes.append(asyncio.create_task(self._record(lease, outcomes, now)))

    def _outcome(
        self, lease: Lease, item: RecipientReply, now: float, held: Wait | None = None
    ) -> RecipientOutcome:
        queue = self.config.queue
        return recipient_outcome(item, lease, now, queue.retry, queue.max_lifetime, held)

    def _attempt_budget(self) -> float:
        """How long one attempt may take (connect, a few commands, DATA), at most half a lease."""
        attempt = self.upstream.connect_timeout + 3 * self.upstream.timeout
        return min(attempt, self.config.queue.lease_time / 2)

    async def _attempt(self, session: Session, lease: Lease, writes: Writes) -> Wait | None:
        """Deliver one leased message (or put it back: the ledger says "not yet"); returns
        the wait the ledger or a throttle reply imposed on the upstream, if any."""
        now = self.clock.now()
        if lease.lease_until - now < self._attempt_budget():
            # Fencing: the lease could run out mid-send and another worker take the message;
            # put it back rather than risk two nodes delivering it at once.
            await self._put_back([lease], "lease too short to attempt; leased again")
            return None
        if is_expired(lease.received_at, now, self.config.queue.max_lifetime):
            text = "4.4.7 expired: undelivered for longer than queue.max_lifetime"
            outcomes = [RecipientOutcome(r, RecipientState.FAILED, text) for r in lease.addresses]
            await self._record(lease, outcomes, now, event="expired")
            return None
        if (held := self.senders.held(lease.mail_from, now)) is not None:
            await self._put_back([lease], held.reason, held.until or now)
            return None
        reservation: int | None = None  # no limits: no ledger row, no store write
        if self.upstream.rate_limits or self.upstream.min_interval:
            weight = 1 if self.upstream.count == "messages" else len(lease.recipients)
            limits = self.upstream.rate_limits, self.upstream.min_interval, weight
            # A send whose node died counts as ended after a lease: its lease is over by then.
            slot = await self.store.reserve_send(
                self.name, now, *limits, self.config.queue.lease_time
            )
            if slot.reservation is None:
                reason = f"{slot.reason or 'rate limit'} until {format_iso(slot.at)}"
                self.ledger_wait = Wait(slot.at, reason, "rate_limited")
                await self._put_back([lease], reason)
                return self.ledger_wait
            reservation = slot.reservation
        self.in_flight += 1
        try:
            async with renewal.kept(self.store, lease, self.clock, self.config.queue, session):
                return await self._send(session, lease, reservation, writes)
            return None  # the lease was lost before DATA: the message is another node's now
        except StoreError:
            raise
        except Exception as exc:
            await self._raised(session, lease, exc, writes)
            return None
        finally:
            self.in_flight -= 1

    async def _send(
        self, session: Session, lease: Lease, reservation: int | None, writes: Writes
    ) -> Wait | None:
        body = await self.store.load_body(lease.queue_id)
        started = self.clock.monotonic()
        dot = FINAL_REPLY_WAIT  # RFC 5321 4.5.3.2.6; the lease is renewed meanwhile (renewal)
        log.info(
            "delivery_attempt",
            queue_id=lease.queue_id,
            message_id=lease.message_id,
            upstream=self.name,
            recipients=len(lease.recipients),
            attempt=lease.attempts + 1,
        )
        result = SendResult(reached_data=True)  # an unforeseen error: the upstream may have it
        try:
            outgoing = Outgoing(
                lease.mail_from,
                lease.addresses,
                body,
                name=lease.queue_id,
                mail_options=lease.mail_options,
                # NOTIFY/ORCPT per recipient (RFC 3461), for an upstream that offers DSN
                rcpt_dsn={r.address: r.dsn for r in lease.recipients},
                final_timeout=dot,
            )
            result = await session.send(outgoing)
        except UpstreamUnavailable as exc:
            result = SendResult(reached_data=exc.reached_data)
            reply = SmtpReply(0, str(exc))
            result.replies = {rcpt: reply for rcpt in lease.addresses}
        finally:  # later sends count this one from its final reply; none if it never arrived
            await ledger.finish_send(self.store, reservation, self.clock.now(), result.reached_data)
        elapsed = self.clock.monotonic() - started
        return await self._apply(lease, result, elapsed, writes)

    async def _apply(
        self, lease: Lease, result: SendResult, elapsed: float, writes: Writes
    ) -> Wait | None:
        now = self.clock.now()
        replies: list[RecipientReply] = []
        for rcpt in lease.addresses:
            reply = result.replies.get(rcpt, SmtpReply(0, "no reply from the upstream"))
            action = classify_reply(reply) if reply.code else Action.RETRY
            replies.append(RecipientReply(rcpt, action, reply, result.upstream_dsn))
        holds = (Action.THROTTLED, Action.AUTH_FAILED)
        held = next((r for r in replies if r.action in holds), None)
        wait = await hold_upstream(self.store, self.upstream, held, now) if held else None
        self.throttled = self.throttled or wait is not None
        outcomes = [self._outcome(lease, item, now, wait) for item in replies]
        self.notices.observe(self.upstream, replies, now, lease.mail_from)
        self.senders.observe(lease.mail_from, replies, outcomes)
        self.slots.observe(replies, elapsed)
        if wait is None and self.throttled and any(r.action is Action.DELIVERED for r in replies):
            self.throttled = False
            await self.store.release_upstream(self.name)
        # Recorded while the lane sends the next message (the lease fences the write); the
        # batch waits for its writes before it leases again (_step).
        writes.append(asyncio.create_task(self._record(lease, outcomes, now, elapsed=elapsed)))
        return wait

    async def _record(
        self,
        lease: Lease,
        outcomes: list[RecipientOutcome],
        now: float,
        *,
        elapsed: float | None = None,
        event: str | None = None,
    ) -> None:
        try:
            await dsn_reports.before_record(self.config, self.store, lease, outcomes, now)
            await self.store.record_outcome(lease, outcomes, now)
            self.notices.recorded(lease, outcomes, now)  # a report of relayd's own that failed
        except LeaseLost:
            log.warning("lease_lost", queue_id=lease.queue_id, upstream=self.name)
            return
        except StoreError as exc:
            # The lease expires and the message is tried again (at-least-once).
            log.error("store_error", queue_id=lease.queue_id, error=str(exc))
            return
        for outcome in outcomes:
            name = event or outcome.state.value
            fields: dict[str, object] = {
                "queue_id": lease.queue_id,
                "message_id": lease.message_id,
                "upstream": self.name,
                "recipient": outcome.recipient,
                "smtp_response": outcome.reply,
            }
            if elapsed is not None:
                fields["seconds"] = round(elapsed, 3)
            if outcome.next_attempt_at is not None:
                fields["next_attempt_at"] = format_iso(outcome.next_attempt_at)
                fields["wait_reason"] = outcome.wait_reason
            emit = log.info if outcome.state is RecipientState.DELIVERED else log.warning
            emit(name, **fields)
