"""Delivery reports relayd makes about its own queue: the DSN when a message has failed, and the
delay warning when it has waited `bounces.delay_warning`; both go out through reports/outbox.py.

delivery/lane.py calls `before_record` once per attempt, with the outcomes it is about to record.
The report is enqueued first and the outcome recorded after it: a crash in between sends the
report twice at worst (the message is tried again), never not at all; and the body a report
quotes is still stored (record_outcome drops it once every recipient is final).

One DSN per message: it is made when the message's last pending recipient becomes final, and
covers every recipient that failed, in this attempt or an earlier one. It goes from the null
sender `<>` to `bounces.mailbox` (and the envelope sender with `notify_sender`) through the
queue like any mail: durable, rate-limited, retried. Never a report about a report: not for
a message from `<>`, nor one whose headers say it is a report or an automatic reply
(dsn.is_dsn), nor for recipients whose NOTIFY excludes the event (RFC 3461 4.1).

A recipient whose NOTIFY includes SUCCESS and who was delivered to an upstream that does not
offer DSN (so it never got the NOTIFY) gets relayd's own "relayed" report (RFC 3461 6.2.1,
status 2.0.0), sent to the envelope sender, who asked for it; an upstream that offers DSN got
the NOTIFY and ORCPT and reports itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relayd.config.model import Config
from relayd.config.reports import BouncesConfig
from relayd.dsn.build import DsnRecipient, build_dsn, is_dsn, status_for
from relayd.dsn.params import mail_dsn
from relayd.errors import StoreError
from relayd.logs import get_logger
from relayd.policy.headers import header_block
from relayd.reports import outbox
from relayd.store.base import MessageIntake, ReportInfo, ReportRecipient, ReportSource
from relayd.types import Lease, QueueId, RecipientOutcome, RecipientState, SmtpReply

log = get_logger("bounce_reports")
_PENDING = (RecipientState.QUEUED, RecipientState.DEFERRED, RecipientState.HELD)


class ReportStore(ReportSource, MessageIntake, Protocol):
    """What making a report needs: the message as reported on, and enqueue for the report."""


async def before_record(
    config: Config,
    store: ReportStore,
    lease: Lease,
    outcomes: Sequence[RecipientOutcome],
    now: float,
) -> None:
    """Enqueue the DSN or delay warning these outcomes call for, if any (raises StoreError:
    the caller then records nothing and the lease expires, so the report is not lost).

    Any other failure is a report that cannot be made at all (a bug, or app data that
    slipped past header_text): trying again would fail the same way at every lease expiry
    and strand the message, so it is logged with the queue id and the outcome recorded."""
    try:
        await _before_record(config, store, lease, outcomes, now)
    except StoreError:
        raise
    except Exception:
        log.exception("dsn_failed", queue_id=lease.queue_id, message_id=lease.message_id)


async def _before_record(
    config: Config,
    store: ReportStore,
    lease: Lease,
    outcomes: Sequence[RecipientOutcome],
    now: float,
) -> None:
    await _relayed_report(config, store, lease, outcomes, now)
    bounces = config.bounces
    if bounces is None or not lease.mail_from:  # no bounce mailbox; or a report itself
        return
    failed = any(o.state is RecipientState.FAILED for o in outcomes)
    final = all(o.state.is_final for o in outcomes)
    warn_at = bounces.delay_warning
    deferred = [o for o in outcomes if o.state is RecipientState.DEFERRED]
    warn = bool(deferred) and warn_at is not None and now - lease.received_at >= warn_at
    if not (failed or warn or (final and lease.attempts > 0)):
        return  # nothing failed now, and nothing earlier can have (first attempt)
    info = await store.report_info(lease.queue_id)
    if info is None:
        return
    merged = _merge(info, outcomes)
    if not any(r.state in _PENDING for r in merged):
        await _failure_report(config, bounces, store, info, merged, now)
    elif warn and not info.delay_warned:
        await _delay_warning(config, bounces, store, info, merged, now)


async def _relayed_report(
    config: Config,
    store: ReportStore,
    lease: Lease,
    outcomes: Sequence[RecipientOutcome],
    now: float,
) -> None:
    """The "relayed" report (action relayed, 2.0.0) to the sender for each recipient that
    asked NOTIFY=SUCCESS and went to an upstream that cannot report; never for `<>`."""
    asked = {r.address: r.dsn for r in lease.recipients if r.dsn.wants("SUCCESS")}
    relayed = [o for o in outcomes if o.relayed and o.recipient in asked]
    if not relayed or not lease.mail_from:
        return
    original = await store.load_body(lease.queue_id)
    if is_dsn(header_block(original)):
        return
    upstream = config.upstreams.get(lease.upstream)
    remote = upstream.host if upstream is not None and upstream.host else None
    items = [
        DsnRecipient(
            address=o.recipient,
            action="relayed",
            status="2.0.0",
            diagnostic=o.reply or None,
            remote_mta=remote,
            original_recipient=asked[o.recipient].orcpt,
        )
        for o in relayed
    ]
    _, envid = mail_dsn(lease.mail_options)
    report = build_dsn(
        original,
        items,
        reporting_mta=config.server.hostname,
        arrival_date=lease.received_at,
        now=now,
        to=lease.mail_from,
        from_addr=config.bounces.from_ if config.bounces is not None else None,
        envelope_id=envid,
        queue_id=lease.queue_id,
    )
    queue_id = await outbox.submit(config, store, report, (lease.mail_from,), now)
    log.info(
        "dsn_queued",
        queue_id=lease.queue_id,
        dsn_queue_id=queue_id,
        action="relayed",
        recipients=[o.recipient for o in relayed],
        to=[lease.mail_from],
    )


def _merge(info: ReportInfo, outcomes: Sequence[RecipientOutcome]) -> list[ReportRecipient]:
    """The message's recipients as they will be once `outcomes` are recorded."""
    now_by_address = {o.recipient: o for o in outcomes}
    merged = []
    for r in info.recipients:
        o = now_by_address.get(r.address)
        merged.append(r if o is None else ReportRecipient(r.address, o.state, o.reply, r.dsn))
    return merged


async def _failure_report(
    config: Config,
    bounces: BouncesConfig,
    store: ReportStore,
    info: ReportInfo,
    merged: list[ReportRecipient],
    now: float,
) -> None:
    failed = [r for r in merged if r.state is RecipientState.FAILED]
    wanted = [r for r in failed if r.dsn.wants("FAILURE")]
    if not wanted:
        if failed:
            log.info("dsn_not_requested", queue_id=info.queue_id, recipients=len(failed))
        return
    await _report(config, bounces, store, info, wanted, "failed", now)


async def _delay_warning(
    config: Config,
    bounces: BouncesConfig,
    store: ReportStore,
    info: ReportInfo,
    merged: list[ReportRecipient],
    now: float,
) -> None:
    wanted = [r for r in merged if r.state is RecipientState.DEFERRED and r.dsn.wants("DELAY")]
    if wanted and await store.mark_delay_warned(info.queue_id):  # once, on any node
        await _report(config, bounces, store, info, wanted, "delayed", now)


async def _report(
    config: Config,
    bounces: BouncesConfig,
    store: ReportStore,
    info: ReportInfo,
    recipients: list[ReportRecipient],
    action: str,
    now: float,
) -> None:
    original = await store.load_body(info.queue_id)
    if is_dsn(header_block(original)):
        log.info("dsn_suppressed", queue_id=info.queue_id, reason="the message is a report")
        return
    upstream = config.upstreams.get(info.upstream)
    remote = upstream.host if upstream is not None else None
    until = info.received_at + config.queue.max_lifetime
    items = [_dsn_recipient(r, action, remote, until) for r in recipients]
    full, envid = mail_dsn(info.mail_options)
    hostname = config.server.hostname
    report = build_dsn(
        original,
        items,
        reporting_mta=hostname,
        arrival_date=info.received_at,
        now=now,
        to=bounces.mailbox,
        from_addr=bounces.from_,
        envelope_id=envid,
        return_full=full,
        queue_id=info.queue_id,
    )
    to = [bounces.mailbox]
    if bounces.notify_sender and info.mail_from and info.mail_from not in to:
        to.append(info.mail_from)
    queue_id = await outbox.submit(config, store, report, tuple(to), now)
    log.info(
        "dsn_queued",
        queue_id=info.queue_id,
        dsn_queue_id=queue_id,
        action=action,
        recipients=[r.address for r in recipients],
        to=to,
    )


def _dsn_recipient(
    r: ReportRecipient, action: str, remote: str | None, until: float
) -> DsnRecipient:
    reply = _reply(r.reply or "")
    return DsnRecipient(
        address=r.address,
        action="delayed" if action == "delayed" else "failed",
        status=status_for(reply.code, reply.enhanced, expired="expired" in reply.message),
        diagnostic=str(reply) if reply.code else None,
        remote_mta=remote if reply.code else None,
        original_recipient=r.dsn.orcpt,
        will_retry_until=until if action == "delayed" else None,
    )


def _reply(text: str) -> SmtpReply:
    """A stored reply ("550 5.1.1 No such user", or relayd's own text) as an SmtpReply."""
    code, _, rest = text.partition(" ")
    if len(code) == 3 and code.isdigit():
        return SmtpReply(int(code), rest)
    return SmtpReply(0, text)


DELETED = "5.0.0 deleted from the queue by an operator (relayd queue delete --dsn)"


async def deletion_report(
    config: Config, store: ReportStore, queue_id: QueueId, now: float
) -> bool:
    """`relayd queue delete ID --dsn`: a failure report for the recipients still pending.
    False when there is no report to make (no [bounces] mailbox, a report itself, none
    pending); the caller deletes the message either way only after this returned."""
    bounces = config.bounces
    info = await store.report_info(queue_id)
    if bounces is None or info is None or not info.mail_from:
        return False
    pending = [
        ReportRecipient(r.address, RecipientState.FAILED, DELETED, r.dsn)
        for r in info.recipients
        if r.state in _PENDING and r.dsn.wants("FAILURE")
    ]
    if not pending:
        return False
    await _report(config, bounces, store, info, pending, "failed", now)
    return True
