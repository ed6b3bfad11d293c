"""BounceStore (bounces/poller.py) over the real queue store: match, remember the IMAP place, and
forward a matched report to the bounce mailbox through the outbox (from `<>`, no loop: a
report is never reported on, reports/dsn_reports.py)."""

from __future__ import annotations

from typing import Protocol

from relayd.config.model import Config
from relayd.dsn.parse import ParsedDsn
from relayd.logs import get_logger
from relayd.reports import outbox
from relayd.store.base import BounceMatching, MessageIntake

log = get_logger("bounce_store")


class BounceQueue(BounceMatching, MessageIntake, Protocol):
    """What QueueBounceStore needs of the queue store: matching and the IMAP place, and
    enqueue for the forwarded report."""


class QueueBounceStore:
    """The poller's store: `config` gives the bounce mailbox and the route."""

    def __init__(self, config: Config, store: BounceQueue) -> None:
        self.config = config
        self.store = store

    async def imap_state(self, account: str) -> tuple[int, int] | None:
        return await self.store.imap_state(account)

    async def save_imap_state(self, account: str, uidvalidity: int, last_uid: int) -> None:
        await self.store.save_imap_state(account, uidvalidity, last_uid)

    async def match_bounce(self, parsed: ParsedDsn, now: float) -> str | None:
        return await self.store.match_bounce(parsed, now)

    async def forward_report(self, raw: bytes, queue_id: str, now: float) -> None:
        bounces = self.config.bounces
        if bounces is None:
            return
        forwarded = await outbox.submit(self.config, self.store, raw, (bounces.mailbox,), now)
        log.info("bounce_forwarded", queue_id=queue_id, forward_queue_id=forwarded)
