"""BounceStore (bounces/poller.py) over the real queue store: match, remember the IMAP place, and
forward a matched report to the bounce mailbox through the outbox (from `<>`, no loop: a
report is never reported on, reports/dsn_reports.py). A match counts the recipients it
bounced, and those reported delayed, in /metrics under their message's upstream."""

from __future__ import annotations

from typing import Protocol

from relayd import metrics
from relayd.config.model import Config
from relayd.dsn.parse import ParsedDsn
from relayd.logs import get_logger
from relayd.reports import outbox
from relayd.store.base import BounceMatching, MessageIntake, ReportSource
from relayd.types import QueueId, RecipientState

log = get_logger("bounce_store")


class BounceQueue(BounceMatching, ReportSource, MessageIntake, Protocol):
    """What QueueBounceStore needs of the queue store: matching and the IMAP place, what a
    matched message holds (to count its bounces), and
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
        queue_id = await self.store.match_bounce(parsed, now)
        if queue_id is not None:
            await self._count_bounced(parsed, queue_id)
        return queue_id

    async def _count_bounced(self, parsed: ParsedDsn, queue_id: QueueId) -> None:
        """Count the reported failures that are stored recipients of the message (the store
        marked them bounced), and the reported delays of its recipients, under the message's
        upstream. A report read again after a crash counts again (at least once)."""
        info = await self.store.report_info(queue_id)
        if info is None:
            return
        failed = {rcpt.final_recipient.lower() for rcpt in parsed.failed}
        delayed = {rcpt.final_recipient.lower() for rcpt in parsed.delayed}
        for rcpt in info.recipients:
            address = rcpt.address.lower()
            if rcpt.state is RecipientState.BOUNCED and address in failed:
                metrics.bounced(info.upstream, "failed")
            elif address in delayed:
                metrics.bounced(info.upstream, "delayed")

    async def forward_report(self, raw: bytes, queue_id: str, now: float) -> None:
        bounces = self.config.bounces
        if bounces is None:
            return
        forwarded = await outbox.submit(self.config, self.store, raw, (bounces.mailbox,), now)
        log.info("bounce_forwarded", queue_id=queue_id, forward_queue_id=forwarded)
