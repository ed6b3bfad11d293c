"""The delivery loop: per-upstream lanes that lease due mail and deliver it within limits.

A lane asks, in order: is the upstream held (throttled, auth failing)? is its send window
open? is there due mail? may it send now (the store's rate ledger)? Then it delivers and
records each recipient's outcome. Lanes of different upstreams never wait on each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from relayd.clock import Clock
from relayd.config import Config, UpstreamConfig
from relayd.delivery import SendResult, Session, open_session
from relayd.errors import LeaseLost, StoreError, UpstreamUnavailable
from relayd.logs import get_logger
from relayd.outcome import Action, classify_reply, is_expired, next_attempt_at, throttle_until
from relayd.store.base import Store
from relayd.types import Lease, RecipientOutcome, RecipientState, SmtpReply, UpstreamHold
from relayd.units import format_duration
from relayd.windows import SendWindow, is_open, next_open, parse_window

log = get_logger("dispatch")

IDLE_CLOSE = 30.0  # close an idle upstream connection after this many seconds
MAX_SLEEP = 60.0  # re-check state at least this often (holds released by the queue tool)
BATCH = 32
STORE_BACKOFF = 1.0  # seconds to wait after a store error before trying again  # leases taken at once by an unthrottled lane

SessionFactory = Callable[[UpstreamConfig, str], Session]


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds")


class Dispatcher:
    """Runs one Lane per upstream; stop() stops leasing, in-flight sends finish."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        worker: str,
        session_factory: SessionFactory = open_session,
    ) -> None:
        self.lanes = [
            Lane(config, up, store, clock, worker, session_factory)
            for up in config.upstreams.values()
        ]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for lane in self.lanes:
                for index in range(lane.upstream.max_connections):
                    group.create_task(lane.run_worker(), name=f"lane-{lane.name}-{index}")

    def stop(self) -> None:
        for lane in self.lanes:
            lane.stop()

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in self.lanes)


class Lane:
    """Delivery for one upstream account, with `max_connections` workers."""

    def __init__(
        self,
        config: Config,
        upstream: UpstreamConfig,
        store: Store,
        clock: Clock,
        worker: str,
        session_factory: SessionFactory,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.name = upstream.name
        self.store = store
        self.clock = clock
        self.worker = worker
        self.session_factory = session_factory
        self.window: SendWindow | None = None
        if upstream.window is not None:
            w = upstream.window
            self.window = parse_window(w.timezone, w.days, w.hours, w.closed_dates)
        self.stopping = False
        self._stopped = asyncio.Event()
        self.in_flight = 0
        self.throttled = False  # a hold was set by this lane and not yet cleared

    def stop(self) -> None:
        """Stop leasing; a worker sleeping for work wakes up and ends."""
        self.stopping = True
        self._stopped.set()

    # -- the loop -------------------------------------------------------------------------

    async def run_worker(self) -> None:
        session = self.session_factory(self.upstream, self.config.server.hostname)
        try:
            while not self.stopping:
                try:
                    await self._step(session)
                except StoreError as exc:
                    # Locked or full disk: keep the lane alive; leases expire if need be.
                    log.error("store_error", upstream=self.name, error=str(exc))
                    await self._sleep(STORE_BACKOFF, session)
        finally:
            await session.close()

    async def _step(self, session: Session) -> None:
        now = self.clock.now()
        gate = await self._gate(now)
        if gate is not None:
            await self._sleep(gate - now, session)
            return
        limit = 1 if self.upstream.rate_limits or self.upstream.min_interval else BATCH
        leases = await self.store.lease_due(
            self.name, now, limit, self.config.queue.lease_time, self.worker
        )
        if not leases:
            due = await self.store.next_due(self.name, now)
            await self._sleep((due - now) if due is not None else MAX_SLEEP, session)
            return
        for index, lease in enumerate(leases):
            if self.stopping:
                await self._release_all(leases[index:], self.clock.now(), "daemon stopping")
                return
            wait_until = await self._attempt(session, lease)
            if wait_until is not None:
                await self._release_all(leases[index + 1 :], wait_until, "rate limit")
                return

    async def _gate(self, now: float) -> float | None:
        """When the upstream may send again if it may not send now (hold or closed window)."""
        hold = await self.store.upstream_hold(self.name)
        if hold is not None:
            self.throttled = True  # a later success clears it, so the next backoff restarts
            if hold.until is None or hold.until > now:
                return hold.until if hold.until is not None else now + MAX_SLEEP
        if self.window is not None and not is_open(self.window, now):
            opens = next_open(self.window, now)
            log.info("window_closed", upstream=self.name, until=iso(opens) if opens else None)
            return opens if opens is not None else now + MAX_SLEEP
        return None

    async def _sleep(self, seconds: float, session: Session) -> None:
        """Wait for new mail or `seconds`; close the upstream connection when idle."""
        seconds = min(max(seconds, 0.0), MAX_SLEEP)
        if seconds > IDLE_CLOSE:
            await session.close()
        if seconds <= 0:
            return
        work = asyncio.ensure_future(self.store.wait_for_work(seconds))
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()
            stop.cancel()

    async def _release_all(self, leases: list[Lease], not_before: float, reason: str) -> None:
        for lease in leases:
            try:
                await self.store.release(lease, not_before, f"{reason} until {iso(not_before)}")
            except LeaseLost:
                log.warning("lease_lost", queue_id=lease.queue_id, upstream=self.name)

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self, session: Session, lease: Lease) -> float | None:
        """Deliver one leased message; returns a time to wait until if the ledger said no."""
        now = self.clock.now()
        if is_expired(lease.received_at, now, self.config.queue.max_lifetime):
            reply = SmtpReply(0, "4.4.7 expired: undelivered for longer than queue.max_lifetime")
            outcomes = [
                RecipientOutcome(r, RecipientState.FAILED, str(reply)) for r in lease.recipients
            ]
            await self._record(lease, outcomes, now, event="expired")
            return None
        weight = 1 if self.upstream.count == "messages" else len(lease.recipients)
        reservation, allowed_at = await self.store.reserve_send(
            self.name, now, self.upstream.rate_limits, self.upstream.min_interval, weight
        )
        if reservation is None:
            reason = "rate limit"
            log.info(
                "rate_limited", upstream=self.name, queue_id=lease.queue_id, until=iso(allowed_at)
            )
            await self._release_all([lease], allowed_at, reason)
            return allowed_at
        self.in_flight += 1
        try:
            await self._send(session, lease, reservation)
        finally:
            self.in_flight -= 1
        return None

    async def _send(self, session: Session, lease: Lease, reservation: int) -> None:
        body = await self.store.load_body(lease.queue_id)
        started = self.clock.monotonic()
        log.info(
            "delivery_attempt",
            queue_id=lease.queue_id,
            message_id=lease.message_id,
            upstream=self.name,
            recipients=len(lease.recipients),
            attempt=lease.attempts + 1,
        )
        try:
            result = await session.send(
                lease.mail_from,
                lease.recipients,
                body,
                name=lease.queue_id,
                mail_options=lease.mail_options,
            )
        except UpstreamUnavailable as exc:
            result = SendResult(reached_data=exc.reached_data)
            reply = SmtpReply(0, str(exc))
            result.replies = {rcpt: reply for rcpt in lease.recipients}
        if not result.reached_data:
            # The upstream never saw the message: the slot goes back to the ledger.
            await self.store.cancel_send(reservation)
        elapsed = self.clock.monotonic() - started
        await self._apply(lease, result, elapsed)

    async def _apply(self, lease: Lease, result: SendResult, elapsed: float) -> None:
        now = self.clock.now()
        outcomes: list[RecipientOutcome] = []
        hold: tuple[Action, SmtpReply] | None = None
        for rcpt in lease.recipients:
            reply = result.replies.get(rcpt, SmtpReply(0, "no reply from the upstream"))
            action = classify_reply(reply) if reply.code else Action.RETRY
            if action in (Action.THROTTLED, Action.AUTH_FAILED):
                hold = hold or (action, reply)
            outcomes.append(self._outcome(lease, rcpt, action, reply, now))
        if hold is not None:
            until = await self._hold(hold[0], hold[1], now)
            outcomes = [
                RecipientOutcome(o.recipient, o.state, o.reply, until or o.next_attempt_at)
                if o.state is RecipientState.DEFERRED
                else o
                for o in outcomes
            ]
        elif self.throttled and any(o.state is RecipientState.DELIVERED for o in outcomes):
            self.throttled = False
            await self.store.release_upstream(self.name)
        await self._record(lease, outcomes, now, elapsed=elapsed)

    def _outcome(
        self, lease: Lease, rcpt: str, action: Action, reply: SmtpReply, now: float
    ) -> RecipientOutcome:
        text = str(reply)
        if action is Action.DELIVERED:
            return RecipientOutcome(rcpt, RecipientState.DELIVERED, text)
        if action is Action.FAILED:
            return RecipientOutcome(rcpt, RecipientState.FAILED, text)
        retry_at = next_attempt_at(lease.attempts + 1, now, self.config.queue.retry)
        if is_expired(lease.received_at, retry_at, self.config.queue.max_lifetime):
            # The next try would fall past max_lifetime: fail now, keeping the last error.
            return RecipientOutcome(rcpt, RecipientState.FAILED, text)
        return RecipientOutcome(rcpt, RecipientState.DEFERRED, text, retry_at)

    async def _hold(self, action: Action, reply: SmtpReply, now: float) -> float | None:
        """Pause the whole upstream: throttles back off, auth problems wait for an operator."""
        previous = await self.store.upstream_hold(self.name)
        level = previous.level + 1 if previous is not None else 0
        if action is Action.AUTH_FAILED:
            until = None
            log.error(
                "upstream_auth_failed",
                upstream=self.name,
                smtp_code=reply.code,
                smtp_response=reply.message,
            )
        else:
            until = throttle_until(level, now, self.upstream.throttle_backoff)
            log.warning(
                "upstream_throttled",
                upstream=self.name,
                smtp_code=reply.code,
                smtp_response=reply.message,
                resume_at=iso(until),
                pause=format_duration(until - now),
            )
        await self.store.hold_upstream(UpstreamHold(self.name, until, str(reply), level))
        self.throttled = True
        return until

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
            await self.store.record_outcome(lease, outcomes, now)
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
                fields["next_attempt_at"] = iso(outcome.next_attempt_at)
            if outcome.state is RecipientState.DELIVERED:
                log.info(name, **fields)
            else:
                log.warning(name, **fields)
