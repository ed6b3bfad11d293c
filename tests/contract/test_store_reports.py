"""The store's delivery-report verbs, for every backend: DSN parameters kept per
recipient, the delay-warning flag, late-bounce matching and the IMAP poller's place."""

from __future__ import annotations

import dataclasses

from relayd.dsn_parse import ParsedDsn, ParsedRecipient
from relayd.types import RcptDsn, RecipientState

from .conftest import ContractStore
from .test_store import T0, message


async def test_report_info_keeps_dsn_parameters(store: ContractStore) -> None:
    new = dataclasses.replace(
        message("a@example.com", "b@example.com"),
        rcpt_dsn=(RcptDsn("NEVER"), RcptDsn("FAILURE,DELAY", "rfc822;b@example.com")),
    )
    queue_id = await store.enqueue(new)
    info = await store.report_info(queue_id)
    assert info is not None
    assert info.mail_from == "billing@example.org"
    assert not info.delay_warned
    assert [r.dsn for r in info.recipients] == list(new.rcpt_dsn)
    assert await store.mark_delay_warned(queue_id)
    assert not await store.mark_delay_warned(queue_id)  # once
    info = await store.report_info(queue_id)
    assert info is not None and info.delay_warned


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
