"""The SQLite store's delivery-report bodies: DSN inputs, late-bounce matching, IMAP state.

Plain functions of a sqlite3 connection, like sqlite/ops.py (whose named queries they use):
writes run inside the writer's batch transaction, reads on their own.
"""

from __future__ import annotations

import json
import sqlite3

from relayd.dsn.parse import ParsedDsn
from relayd.store.base import ReportInfo, ReportRecipient
from relayd.store.sqlite.ops import Q
from relayd.types import QueueId, RcptDsn, RecipientState


def report_info(conn: sqlite3.Connection, queue_id: QueueId) -> ReportInfo | None:
    row = conn.execute(Q["report_message"], {"queue_id": queue_id}).fetchone()
    if row is None:
        return None
    id_, upstream, mail_from, message_id, received_at, options, warned = row
    recipients = tuple(
        ReportRecipient(address, RecipientState(state), reply, RcptDsn(notify, orcpt))
        for address, state, reply, notify, orcpt in conn.execute(
            Q["report_recipients"], {"queue_id": queue_id}
        )
    )
    return ReportInfo(
        queue_id=QueueId(id_),
        upstream=upstream,
        mail_from=mail_from,
        message_id=message_id,
        received_at=received_at,
        mail_options=tuple(json.loads(options)),
        delay_warned=bool(warned),
        recipients=recipients,
    )


def mark_delay_warned(conn: sqlite3.Connection, queue_id: QueueId) -> bool:
    return conn.execute(Q["mark_delay_warned"], {"queue_id": queue_id}).rowcount > 0


def find_message(conn: sqlite3.Connection, parsed: ParsedDsn) -> QueueId | None:
    """The stored message a report is about: by queue id first, then by Message-ID."""
    if parsed.queue_id:
        row = conn.execute(Q["message_by_id"], {"queue_id": parsed.queue_id}).fetchone()
        if row is not None:
            return QueueId(row[0])
    if parsed.original_message_id:
        row = conn.execute(
            Q["message_by_message_id"], {"message_id": parsed.original_message_id}
        ).fetchone()
        if row is not None:
            return QueueId(row[0])
    return None


def match_bounce(conn: sqlite3.Connection, parsed: ParsedDsn, now: float) -> QueueId | None:
    queue_id = find_message(conn, parsed)
    if queue_id is None:
        return None
    for rcpt in parsed.failed:
        reply = rcpt.diagnostic or f"{rcpt.status} bounced (late report)"
        conn.execute(
            Q["bounce_recipient"],
            {"queue_id": queue_id, "address": rcpt.final_recipient, "reply": reply, "now": now},
        )
    conn.execute(Q["refresh_message"], {"queue_id": queue_id})
    conn.execute(Q["drop_finished_body"], {"queue_id": queue_id})
    return queue_id


def imap_state(conn: sqlite3.Connection, account: str) -> tuple[int, int] | None:
    row = conn.execute(Q["select_imap_state"], {"account": account}).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def save_imap_state(
    conn: sqlite3.Connection, account: str, uidvalidity: int, last_uid: int
) -> None:
    conn.execute(
        Q["upsert_imap_state"],
        {"account": account, "uidvalidity": uidvalidity, "last_uid": last_uid},
    )
