"""The SQLite store's transaction bodies: plain functions of a sqlite3 connection.

They run on the store's database thread. Write functions run inside the writer's batch
transaction (each in its own SAVEPOINT, see sqlite/db.py) and never commit; read
functions run on their own. Keeping them synchronous and free of asyncio makes each
one a straight list of named queries from sqlite.sql.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from relayd.errors import LeaseLost, StoreError
from relayd.store import sqlfile
from relayd.types import (
    Lease,
    MessageView,
    NewMessage,
    QueueDepth,
    QueueId,
    RcptDsn,
    Recipient,
    RecipientOutcome,
    RecipientState,
    RecipientView,
    UpstreamHold,
    new_queue_id,
)

Q = sqlfile.load(__package__ or "", "sqlite.sql")
SCHEMA_VERSION = 3


def create_schema(conn: sqlite3.Connection) -> None:
    """Apply the pragmas and create (or check) the schema."""
    for pragma in Q["pragmas"].split(";"):
        if pragma.strip():
            conn.execute(pragma)
    (mode,) = conn.execute(Q["journal_mode"]).fetchone()
    if mode != "wal":
        raise StoreError(f"cannot use WAL for {mode!r} database; the queue needs a local file")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in Q["schema"].split(";"):
            if statement.strip():
                conn.execute(statement)
        (version,) = conn.execute(Q["schema_version_get"]).fetchone()
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"queue database schema {version} is newer than {SCHEMA_VERSION}")
        _migrate(conn, version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, version: int | None) -> None:
    """Bring a new (None) or older database to SCHEMA_VERSION: versions 2 and 3 ALTER tables."""
    for step in (2, 3):
        if version is None or version < step:
            for statement in Q[f"migration_{step}"].split(";"):
                if statement.strip():
                    conn.execute(statement)
    if version != SCHEMA_VERSION:
        conn.execute(Q["schema_version_set"], {"version": SCHEMA_VERSION})


# --- writes (inside the writer's batch transaction) -----------------------------------


def enqueue(conn: sqlite3.Connection, message: NewMessage) -> QueueId:
    if not message.recipients:
        raise StoreError("a message needs at least one recipient")
    queue_id = message.queue_id or new_queue_id(message.received_at)
    conn.execute(
        Q["insert_message"],
        {
            "id": queue_id,
            "upstream": message.upstream,
            "mail_from": message.mail_from,
            "message_id": message.message_id,
            "received_at": message.received_at,
            "size": len(message.body),
            "mail_options": json.dumps(list(message.mail_options)),
            "auth_user": message.auth_user,
            "client": message.client,
        },
    )
    conn.execute(Q["insert_body"], {"queue_id": queue_id, "body": message.body})
    conn.executemany(
        Q["insert_recipient"],
        (
            {
                "queue_id": queue_id,
                "idx": idx,
                "address": rcpt.address,
                "due": message.received_at,
                "notify": rcpt.dsn.notify,
                "orcpt": rcpt.dsn.orcpt,
            }
            for idx, rcpt in enumerate(message.recipients)
        ),
    )
    return queue_id


def lease_due(
    conn: sqlite3.Connection, upstream: str, now: float, limit: int, lease_for: float, worker: str
) -> list[Lease]:
    rows = conn.execute(
        Q["select_due_messages"], {"upstream": upstream, "now": now, "limit": max(0, limit)}
    ).fetchall()
    leases = []
    for queue_id, upstream_, mail_from, message_id, received_at, size, options in rows:
        due = conn.execute(
            Q["select_due_recipients"], {"queue_id": queue_id, "now": now}
        ).fetchall()
        if not due:  # next_attempt_at is kept exact, so this is only a safety net
            continue
        token = secrets.token_hex(16)
        conn.execute(
            Q["take_lease"],
            {
                "queue_id": queue_id,
                "worker": worker,
                "token": token,
                "lease_until": now + lease_for,
            },
        )
        leases.append(
            Lease(
                queue_id=QueueId(queue_id),
                upstream=upstream_,
                mail_from=mail_from,
                recipients=tuple(
                    Recipient(address, RcptDsn(notify, orcpt)) for address, _, notify, orcpt in due
                ),
                attempts=max(row[1] for row in due),
                message_id=message_id,
                received_at=received_at,
                size=size,
                token=token,
                lease_until=now + lease_for,
                mail_options=tuple(json.loads(options)),
            )
        )
    return leases


def _fence(conn: sqlite3.Connection, lease: Lease) -> None:
    """Raise LeaseLost unless `lease` is still the message's lease (before any write)."""
    row = conn.execute(Q["lease_token"], {"queue_id": lease.queue_id}).fetchone()
    if row is None or row[0] != lease.token:
        raise LeaseLost()


def record_outcome(
    conn: sqlite3.Connection, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
) -> None:
    _fence(conn, lease)
    for outcome in outcomes:
        if outcome.recipient not in lease.addresses:
            raise StoreError(f"outcome for {outcome.recipient!r}, which the lease does not cover")
        if outcome.state.is_final:
            next_attempt_at, wait_reason = None, None
        else:
            next_attempt_at = now if outcome.next_attempt_at is None else outcome.next_attempt_at
            wait_reason = outcome.wait_reason
        conn.execute(
            Q["record_recipient"],
            {
                "queue_id": lease.queue_id,
                "address": outcome.recipient,
                "state": outcome.state.value,
                "reply": outcome.reply,
                "next_attempt_at": next_attempt_at,
                "wait_reason": wait_reason,
                "now": now,
            },
        )
    conn.execute(Q["end_lease"], {"queue_id": lease.queue_id})
    conn.execute(Q["drop_finished_body"], {"queue_id": lease.queue_id})


def release(conn: sqlite3.Connection, lease: Lease, not_before: float, reason: str) -> None:
    _fence(conn, lease)
    conn.executemany(
        Q["delay_recipient"],
        (
            {
                "queue_id": lease.queue_id,
                "address": address,
                "not_before": not_before,
                "reason": reason,
            }
            for address in lease.addresses
        ),
    )
    conn.execute(Q["end_lease"], {"queue_id": lease.queue_id})


def release_all_leases(conn: sqlite3.Connection) -> int:
    """End every lease (the queue's owner starting: they are all an earlier run's)."""
    return conn.execute(Q["release_all_leases"]).rowcount


def probe_write(conn: sqlite3.Connection) -> None:
    conn.execute(Q["probe_insert"])
    conn.execute(Q["probe_delete"])


def hold_upstream(conn: sqlite3.Connection, hold: UpstreamHold) -> None:
    conn.execute(
        Q["upsert_hold"],
        {
            "upstream": hold.upstream,
            "until": hold.until,
            "reason": hold.reason,
            "level": hold.level,
        },
    )


def release_upstream(conn: sqlite3.Connection, upstream: str) -> None:
    conn.execute(Q["delete_hold"], {"upstream": upstream})


def set_upstream_wait(
    conn: sqlite3.Connection, upstream: str, reason: str | None, until: float | None
) -> None:
    if reason is None:
        conn.execute(Q["delete_wait"], {"upstream": upstream})
    else:
        conn.execute(Q["upsert_wait"], {"upstream": upstream, "reason": reason, "until": until})


def retry_now(conn: sqlite3.Connection, queue_id: QueueId | None, now: float) -> int:
    changed = conn.execute(Q["retry_now"], {"queue_id": queue_id, "now": now}).rowcount
    if queue_id is None:
        conn.execute(Q["refresh_pending_messages"])
    else:
        conn.execute(Q["refresh_message"], {"queue_id": queue_id})
    return changed


def hold_message(conn: sqlite3.Connection, queue_id: QueueId) -> int:
    changed = conn.execute(Q["hold_recipients"], {"queue_id": queue_id}).rowcount
    conn.execute(Q["refresh_message"], {"queue_id": queue_id})
    return changed


def release_message(conn: sqlite3.Connection, queue_id: QueueId, now: float) -> int:
    changed = conn.execute(Q["release_recipients"], {"queue_id": queue_id, "now": now}).rowcount
    conn.execute(Q["refresh_message"], {"queue_id": queue_id})
    return changed


def delete_message(conn: sqlite3.Connection, queue_id: QueueId) -> bool:
    return conn.execute(Q["delete_message"], {"queue_id": queue_id}).rowcount > 0


def purge_finished(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(Q["purge_finished"], {"before": before}).rowcount


# --- reads ------------------------------------------------------------------------------


def load_body(conn: sqlite3.Connection, queue_id: QueueId) -> bytes:
    row = conn.execute(Q["select_body"], {"queue_id": queue_id}).fetchone()
    if row is None:
        raise StoreError(f"no message {queue_id}")
    if row[0] is None:
        raise StoreError(f"message {queue_id} is finished; its body was dropped")
    return bytes(row[0])


def any_due(conn: sqlite3.Connection, upstream: str, now: float) -> bool:
    return conn.execute(Q["any_due"], {"upstream": upstream, "now": now}).fetchone() is not None


def next_due(conn: sqlite3.Connection, upstream: str, now: float) -> float | None:
    (due,) = conn.execute(Q["next_due"], {"upstream": upstream, "now": now}).fetchone()
    return None if due is None else float(due)


def upstream_hold(conn: sqlite3.Connection, upstream: str) -> UpstreamHold | None:
    row = conn.execute(Q["select_hold"], {"upstream": upstream}).fetchone()
    if row is None:
        return None
    name, until, reason, level = row
    return UpstreamHold(upstream=name, until=until, reason=reason, level=level)


def _views(conn: sqlite3.Connection, rows: list[Any]) -> list[MessageView]:
    """MessageViews for message rows (id, upstream, mail_from, message_id, received_at, size)."""
    recipients: dict[str, list[RecipientView]] = {row[0]: [] for row in rows}
    ids = json.dumps(list(recipients))
    for queue_id, address, state, attempts, due, reply, reason in conn.execute(
        Q["recipients_of"], {"ids": ids}
    ):
        recipients[queue_id].append(
            RecipientView(address, RecipientState(state), attempts, due, reply, reason)
        )
    return [
        MessageView(
            queue_id=QueueId(queue_id),
            upstream=upstream,
            mail_from=mail_from,
            message_id=message_id,
            received_at=received_at,
            size=size,
            recipients=tuple(recipients[queue_id]),
        )
        for queue_id, upstream, mail_from, message_id, received_at, size in rows
    ]


def _snapshot(conn: sqlite3.Connection, query: str, params: dict[str, object]) -> list[MessageView]:
    """Run a message query and its recipients query in one read transaction."""
    conn.execute("BEGIN")
    try:
        return _views(conn, conn.execute(query, params).fetchall())
    finally:
        conn.execute("COMMIT")


def list_messages(
    conn: sqlite3.Connection, state: RecipientState | None, upstream: str | None, limit: int
) -> list[MessageView]:
    params: dict[str, object] = {
        "state": None if state is None else state.value,
        "upstream": upstream,
        "limit": limit,
    }
    return _snapshot(conn, Q["list_messages"], params)


def show(conn: sqlite3.Connection, queue_id: QueueId) -> MessageView | None:
    views = _snapshot(conn, Q["show_message"], {"queue_id": queue_id})
    return views[0] if views else None


def counts(conn: sqlite3.Connection) -> dict[RecipientState, int]:
    result = dict.fromkeys(RecipientState, 0)
    for state, count in conn.execute(Q["counts"]):
        result[RecipientState(state)] = count
    return result


def depth(conn: sqlite3.Connection) -> QueueDepth:
    """counts() and the oldest pending arrival, in one read transaction."""
    conn.execute("BEGIN")
    try:
        (oldest,) = conn.execute(Q["oldest_pending"]).fetchone()
        return QueueDepth(counts(conn), oldest)
    finally:
        conn.execute("COMMIT")
