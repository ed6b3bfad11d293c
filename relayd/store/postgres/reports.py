"""The PostgreSQL store's delivery-report bodies: DSN inputs, late-bounce matching, IMAP state.

Async functions of one pool connection inside the caller's transaction, as postgres/ops.py;
the semantics are sqlite/reports.py's. match_bounce locks the message row first, so two
nodes matching the same report (or a lease racing it) serialise.
"""

from __future__ import annotations

import json

from relayd.dsn.parse import ParsedDsn
from relayd.store.base import ReportInfo, ReportRecipient
from relayd.store.postgres.sql import Conn, Q
from relayd.types import QueueId, RcptDsn, RecipientState


async def report_info(conn: Conn, queue_id: QueueId) -> ReportInfo | None:
    query = Q["report_message"]
    row = await conn.fetchrow(query.sql, *query.args(queue_id=queue_id))
    if row is None:
        return None
    query = Q["report_recipients"]
    recipients = tuple(
        ReportRecipient(
            r["address"],
            RecipientState(r["state"]),
            r["last_reply"],
            RcptDsn(r["notify"], r["orcpt"]),
        )
        for r in await conn.fetch(query.sql, *query.args(queue_id=queue_id))
    )
    return ReportInfo(
        queue_id=QueueId(row["id"]),
        upstream=row["upstream"],
        mail_from=row["mail_from"],
        message_id=row["message_id"],
        received_at=row["received_at"],
        mail_options=tuple(json.loads(row["mail_options"])),
        delay_warned=bool(row["delay_warned"]),
        recipients=recipients,
    )


async def mark_delay_warned(conn: Conn, queue_id: QueueId) -> bool:
    query = Q["mark_delay_warned"]
    tag = await conn.execute(query.sql, *query.args(queue_id=queue_id))
    return tag.rpartition(" ")[2] not in ("", "0")


async def _find(conn: Conn, parsed: ParsedDsn) -> QueueId | None:
    if parsed.queue_id:
        query = Q["message_by_id"]
        found = await conn.fetchval(query.sql, *query.args(queue_id=parsed.queue_id))
        if found is not None:
            return QueueId(found)
    if parsed.original_message_id:
        query = Q["message_by_message_id"]
        found = await conn.fetchval(query.sql, *query.args(message_id=parsed.original_message_id))
        if found is not None:
            return QueueId(found)
    return None


async def match_bounce(conn: Conn, parsed: ParsedDsn, now: float) -> QueueId | None:
    queue_id = await _find(conn, parsed)
    if queue_id is None:
        return None
    lock = Q["lock_message"]
    await conn.fetchval(lock.sql, *lock.args(queue_id=queue_id))
    bounce = Q["bounce_recipient"]
    for rcpt in parsed.failed:
        reply = rcpt.diagnostic or f"{rcpt.status} bounced (late report)"
        args = bounce.args(queue_id=queue_id, address=rcpt.final_recipient, reply=reply, now=now)
        await conn.execute(bounce.sql, *args)
    for name in ("refresh_message", "drop_finished_body"):
        await conn.execute(Q[name].sql, *Q[name].args(queue_id=queue_id))
    return queue_id


async def imap_state(conn: Conn, account: str) -> tuple[int, int] | None:
    query = Q["select_imap_state"]
    row = await conn.fetchrow(query.sql, *query.args(account=account))
    return None if row is None else (int(row["uidvalidity"]), int(row["last_uid"]))


async def save_imap_state(conn: Conn, account: str, uidvalidity: int, last_uid: int) -> None:
    query = Q["upsert_imap_state"]
    args = query.args(account=account, uidvalidity=uidvalidity, last_uid=last_uid)
    await conn.execute(query.sql, *args)
