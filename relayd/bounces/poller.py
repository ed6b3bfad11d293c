"""The late-bounce poller: read new mail in the upstream account's IMAP inbox, recognise
bounce reports, match them to stored messages, forward them, move them out of the way.

Providers such as Gmail and Microsoft 365 accept a message and bounce it minutes later into
the sending account's inbox. Each poll logs in over TLS, SELECTs the folder, and reads the
messages whose UID is above the last one it finished (remembered with UIDVALIDITY through
BounceStore, so nothing is read twice or skipped across restarts). A bounce that matches a
stored message is forwarded to the bounce mailbox and then moved to `move_to`. Anything
else (replies, out-of-office notes, bounces about mail relayd did not send) is left exactly
as it was: read with BODY.PEEK, never flagged, never moved.

The first poll of a folder reads only the last `lookback` of it (an account's years of
history hold no bounces of relayd's); so does the first after UIDVALIDITY changes.

Order per message, for at-least-once: match, forward, move, then save the UID. A crash
before the save reads the message again (the store's match is idempotent; at worst the
report is forwarded twice); nothing is skipped. A store failure stops the poll at that
message; the next poll starts there again.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Protocol

from relayd.bounces.imap import ImapError, ImapSession, Mailbox
from relayd.clock import Clock
from relayd.config.reports import imap_problems
from relayd.dsn.parse import BounceParseError, ParsedDsn, might_be_bounce, parse_dsn
from relayd.logs import get_logger

log = get_logger("bounces")
_MAX_IDLE = 29 * 60.0  # RFC 2177 3: re-issue IDLE at least every 29 minutes


class BounceStore(Protocol):
    """What the poller needs from the queue store (bounces/store.py's QueueBounceStore)."""

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) saved for `account`, or None before the first poll."""

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        """Remember that every message of `account` up to `last_uid` has been handled."""

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> str | None:
        """Find the stored message the report is about (`parsed.queue_id`, else
        `parsed.original_message_id`); mark its recipients in `parsed.failed` bounced with
        their diagnostic; return its queue id, or None when no stored message matches.
        Idempotent: the same report matched twice changes nothing the second time."""

    async def forward_report(self, raw: bytes, queue_id: str, now: float) -> None:
        """Enqueue the report (`raw`, as received) to the bounce mailbox."""


@dataclass(frozen=True)
class ImapSettings:
    """[bounces.imap]: where the upstream account's inbox is. The password is never shown."""

    host: str
    username: str
    password: str = field(repr=False)
    port: int = 993
    folder: str = "INBOX"
    move_to: str = "relayd/bounces"
    tls: bool = True
    tls_ca_file: str | None = None  # trust this CA instead of the system's (tests)
    poll_interval: float = 300.0
    timeout: float = 30.0
    # The first poll of a folder (and the first after its UIDVALIDITY changed) reads only
    # mail from the last `lookback` seconds: years of an account's history are not bounces
    # of relayd's, and reading them one by one could take hours.
    lookback: float = 14 * 86400.0
    idle: bool = True  # run(): wait with IMAP IDLE between polls where the server has it

    def __post_init__(self) -> None:
        # The rules config_reports applies to [bounces.imap] at load, for callers that
        # build settings themselves (tests, tools): the daemon's never fail here.
        problems = imap_problems(self.host, self.tls, self.folder, self.move_to)
        if problems:
            key, message = problems[0]
            raise ValueError(f"{key}: {message}")

    @property
    def account(self) -> str:
        """The key the UID state is saved under: one per account and folder."""
        return f"{self.username}@{self.host}:{self.port}/{self.folder}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.tls_ca_file)


@dataclass
class PollResult:
    """What one poll did (also the `bounce_poll` log event's fields)."""

    uidvalidity: int = 0
    last_uid: int = 0
    seen: int = 0  # new messages looked at
    bounces: int = 0  # of them recognised as bounce reports
    matched: int = 0  # matched to a stored message, forwarded and moved
    unmatched: int = 0  # reports about mail relayd does not know: left alone
    unreadable: int = 0  # looked like a report, could not be read: left alone
    reset: bool = False  # UIDVALIDITY changed: read the folder from the start


class BouncePoller:
    """Polls one IMAP folder; `poll_once` for a scheduler job, `run` for a loop of its own."""

    def __init__(self, settings: ImapSettings, store: BounceStore, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._lock = asyncio.Lock()  # one poll at a time, whoever calls

    async def poll_once(self, now: float) -> PollResult:
        """One pass over the new messages. Raises ImapError when the server cannot be used
        and StoreError when the store cannot; what was finished before stays saved."""
        async with self._lock:
            session = await self._connect()
            async with session:
                return await self._poll(session, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set: where the server has IDLE, one session polls whenever
        it reports new mail and at least every `poll_interval`; elsewhere a new session
        polls every `poll_interval`. A failure is logged and retried after the interval;
        it never ends the loop. (Use this or poll_once from a scheduler, not both.)"""
        while not stop.is_set():
            try:
                await self._serve(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop outlives any one poll (STYLE: logged, retried)
                log.error(
                    "bounce_poll_failed",
                    account=self.settings.account,
                    error=f"{type(exc).__name__}: {exc}",
                )
            await self._pause(stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        """One session: poll, then IDLE (bounded by poll_interval, and by the 29 minutes
        after which servers drop an idle client) and poll again, until stopped; without
        IDLE a single poll."""
        async with self._lock:
            session = await self._connect()
            async with session:
                while not stop.is_set():
                    await self._poll(session, self.clock.now())
                    if not (self.settings.idle and session.has("IDLE")):
                        return
                    await session.idle(min(self.settings.poll_interval, _MAX_IDLE), stop)

    async def _connect(self) -> ImapSession:
        s = self.settings
        return await ImapSession.connect(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            ssl_context=s.ssl_context(),
            timeout=s.timeout,
        )

    async def _poll(self, session: ImapSession, now: float) -> PollResult:
        mailbox = await session.select(self.settings.folder)
        result = PollResult(uidvalidity=mailbox.uidvalidity)
        result.last_uid = await self._resume_point(session, mailbox, result, now)
        move_to: str | None = None  # the server's name for it, once it is known to exist
        for uid in await session.uids_after(result.last_uid):
            result.seen += 1
            if await self._process(session, uid, now, result):
                move_to = await self._move(session, uid, move_to)
            await self.store.save_imap_state(self.settings.account, mailbox.uidvalidity, uid)
            result.last_uid = uid
        level = log.info if result.seen or result.reset else log.debug
        level("bounce_poll", account=self.settings.account, **vars(result))
        return result

    async def _resume_point(
        self, session: ImapSession, mailbox: Mailbox, result: PollResult, now: float
    ) -> int:
        state = await self.store.imap_state(self.settings.account)
        if state is not None and state[0] == mailbox.uidvalidity:
            return state[1]
        if state is None:
            return await self._start_point(session, mailbox, now)
        # RFC 3501 2.3.1.1: a new UIDVALIDITY means the saved UID means nothing: read the
        # recent mail again (handled bounces were moved away; the rest is read, not touched).
        log.warning(
            "imap_uidvalidity_changed",
            account=self.settings.account,
            saved=state[0],
            server=mailbox.uidvalidity,
        )
        result.reset = True
        return await self._start_point(session, mailbox, now)

    async def _start_point(self, session: ImapSession, mailbox: Mailbox, now: float) -> int:
        """Where a folder without usable state starts: just before the oldest message of
        the last `lookback`, or after the newest message when none is that recent. Saved at
        once, so the next poll does not look at the history again."""
        recent = await session.uids_after(0, since=now - self.settings.lookback)
        if recent:
            start = recent[0] - 1
        else:
            every = await session.uids_after(0)
            start = every[-1] if every else 0
        await self.store.save_imap_state(self.settings.account, mailbox.uidvalidity, start)
        return start

    async def _process(
        self, session: ImapSession, uid: int, now: float, result: PollResult
    ) -> bool:
        """Read one message; True when it is a report about a stored message (forwarded
        now, to be moved). Anything else is counted and left alone."""
        headers, flags = await session.fetch_header(uid)
        if headers is None or "\\Deleted" in flags:
            return False  # gone, or deleted by its owner (or by a mover without UIDPLUS)
        if not might_be_bounce(headers):
            return False  # the body of ordinary mail is never downloaded
        raw = await session.fetch(uid)
        if raw is None:
            return False  # expunged meanwhile
        try:
            parsed = parse_dsn(raw)
        except BounceParseError as exc:
            result.unreadable += 1
            log.warning("bounce_unreadable", account=self.settings.account, uid=uid, error=str(exc))
            return False
        if parsed is None:
            return False
        result.bounces += 1
        return await self._handle(parsed, raw, uid, now, result)

    async def _handle(
        self, parsed: ParsedDsn, raw: bytes, uid: int, now: float, result: PollResult
    ) -> bool:
        """Match and forward one report; True when it is ours (and so is to be moved)."""
        fields = {
            "account": self.settings.account,
            "uid": uid,
            "format": parsed.kind,
            "original_message_id": parsed.original_message_id,
            "recipients": [r.final_recipient for r in parsed.recipients],
        }
        queue_id = await self.store.match_bounce(parsed, now)
        if queue_id is None:
            result.unmatched += 1
            log.info("bounce_unmatched", **fields)
            return False
        await self.store.forward_report(raw, queue_id, now)
        result.matched += 1
        log.info(
            "bounce_matched",
            queue_id=queue_id,
            statuses=[f"{r.final_recipient} {r.action} {r.status}" for r in parsed.recipients],
            **fields,
        )
        return True

    async def _move(self, session: ImapSession, uid: int, move_to: str | None) -> str | None:
        """Move one handled report; returns the target's server name for the next one.

        The report is forwarded already: a failed move leaves it in the folder (a person
        sees it) rather than failing the poll and forwarding it again at the next one.
        """
        try:
            move_to = move_to or await session.ensure_mailbox(self.settings.move_to)
            how = await session.move(uid, move_to)
        except ImapError as exc:
            log.warning(
                "bounce_move_failed", account=self.settings.account, uid=uid, error=str(exc)
            )
            return move_to
        if how == "flagged":  # no UIDPLUS: copied, flagged \Deleted, not expunged
            log.warning("bounce_flagged_deleted", account=self.settings.account, uid=uid)
        return move_to

    async def _pause(self, stop: asyncio.Event) -> None:
        """Sleep `poll_interval` on the injected clock, or less if `stop` is set."""
        sleeper = asyncio.ensure_future(self.clock.sleep(self.settings.poll_interval))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
