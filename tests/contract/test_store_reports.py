"""The store's delivery-report verbs, for every backend: DSN parameters kept per
recipient (and carried by leases), the delay-warning flag, late-bounce matching and the
IMAP poller's place."""

from __future__ import annotations

import dataclasses

from relayd.dsn.parse import ParsedDsn, ParsedRecipient
from relayd.types import RcptDsn, Recipient, RecipientState

from .conftest import ContractStore
from .test_store import LEASE, T0, lease_one, message, outcome


async def test_report_info_keeps_dsn_parameters(store: ContractStore) -> None:
    rcpts = (
        Recipient("a@example.com", RcptDsn("NEVER")),
        Recipient("b@example.com", RcptDsn("FAILURE,DELAY", "rfc822;b@example.com")),
    )
    new = dataclasses.replace(message(), recipients=rcpts)
    queue_id = await store.enqueue(new)
    info = await store.report_info(queue_id)
    assert info is not None
    assert info.mail_from == "billing@example.org"
    assert not info.delay_warned
    assert [(r.address, r.dsn) for r in info.recipients] == [(r.address, r.dsn) for r in rcpts]
    assert await store.mark_delay_warned(queue_id)
    assert not await store.mark_delay_warned(queue_id)  # once
    info = await store.report_info(queue_id)
    assert info is not None and info.delay_warned


async def test_a_lease_carries_its_recipients_dsn_parameters(store: ContractStore) -> None:
    """Delivery forwards NOTIFY/ORCPT upstream from the lease: each leased recipient's own,
    in the lease's order, also when a retry leases only some of them."""
    rcpts = (
        Recipient("a@example.com", RcptDsn("SUCCESS,FAILURE", "rfc822;a+x@example.com")),
        Recipient("b@example.com"),
        Recipient("c@example.com", RcptDsn("NEVER", "utf-8;c@example.com")),
    )
    queue_id = await store.enqueue(dataclasses.replace(message(), recipients=rcpts))
    await store.enqueue(message("plain@example.com", "other@example.com", at=T0 + 1))

    first, plain = await store.lease_due("practice", T0 + 1, 10, LEASE, "worker-1")
    assert (first.queue_id, first.recipients) == (queue_id, rcpts)
    assert [r.dsn for r in plain.recipients] == [RcptDsn(), RcptDsn()]  # none given: empty
    await store.record_outcome(
        first,
        [
            outcome("a@example.com", RecipientState.DEFERRED, T0 + 10),
            outcome("b@example.com", RecipientState.DELIVERED),
            outcome("c@example.com", RecipientState.DEFERRED, T0 + 10),
        ],
        T0 + 1,
    )

    retry = await lease_one(store, T0 + 10)
    assert retry.recipients == (rcpts[0], rcpts[2])


async def test_match_bounce_by_message_id_marks_bounced_idempotently(
    store: ContractStore,
) -> None:
    queue_id = await store.enqueue(message("a@example.com", "b@example.com"))
    report = ParsedDsn(
        recipients=(ParsedRecipient("A@example.com", "failed", "5.1.1", "550 5.1.1 unknown"),),
        original_message_id=f"<{T0}@example.org>",
    )
    assert await store.match_bounce(report, T0 + 60) == queue_id
    assert await store.match_bounce(report, T0 + 120) == queue_id
    view = await store.show(queue_id)
    assert view is not None
    states = {r.address: (r.state, r.last_reply) for r in view.recipients}
    assert states["a@example.com"] == (RecipientState.BOUNCED, "550 5.1.1 unknown")
    assert states["b@example.com"][0] is RecipientState.QUEUED
    unknown = dataclasses.replace(report, original_message_id="<other@example.org>")
    assert await store.match_bounce(unknown, T0) is None


async def test_match_bounce_by_queue_id(store: ContractStore) -> None:
    queue_id = await store.enqueue(message())
    report = ParsedDsn(
        recipients=(ParsedRecipient("alice@example.com", "failed", "5.0.0"),),
        original_relayd_id=queue_id,
    )
    assert await store.match_bounce(report, T0) == queue_id


async def test_imap_state(store: ContractStore) -> None:
    assert await store.imap_state("acct") is None
    await store.save_imap_state("acct", 7, 12)
    await store.save_imap_state("acct", 7, 15)
    assert await store.imap_state("acct") == (7, 15)
