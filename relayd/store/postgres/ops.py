"""The PostgreSQL store's transaction bodies: async functions of one pool connection.

Each runs inside the transaction Database.run (or the group committer) opened around it
and never commits itself, so each is a straight list of named queries from postgres.sql;
the semantics are sqlite/ops.py's, statement for statement, with row locks where several
nodes may race: SKIP LOCKED when leasing, FOR UPDATE on the message when fencing; the send
ledger (postgres/ledger.py) is reserved optimistically, so no lock outlives a statement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from relayd.errors import LeaseLost, StoreError
from relayd.store.postgres.sql import Conn, Q, Query
from relayd.types import (
    Lease,
    MessageView,
    NewMessage,
    QueueDepth,
    QueueId,
    RecipientOutcome,
    RecipientState,
    RecipientView,
    UpstreamHold,
    new_queue_id,
)


async def _execute(conn: Conn, query: Query, **values: object) -> int:
    """Run a statement; returns the rows it changed (from the command tag, "UPDATE 3")."""
    tag = await conn.execute(query.sql, *query.args(**values))
    count = tag.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0


async def _fetch(conn: Conn, query: Query, **values: object) -> list[Any]:
    return list(await conn.fetch(query.sql, *query.args(**values)))


async def _fetchval(conn: Conn, query: Query, **values: object) -> Any:
    return await conn.fetchval(query.sql, *query.args(**values))


# --- enqueue (inside the group commit's transaction) ----------------------------------


def with_queue_id(message: NewMessage) -> NewMessage:
    """The message with its queue id decided (given, or a new one that sorts by arrival)."""
    if not message.recipients:
        raise StoreError("a message needs at least one recipient")
    if message.queue_id is not None:
        return message
    return dataclasses.replace(message, queue_id=new_queue_id(message.received_at))


async def notify_work(conn: Conn, channel: str, payload: str) -> None:
    await _fetchval(conn, Q["notify_work"], channel=channel, payload=payload)


# --- fencing (claims, renewal and node liveness: postgres/leases.py) ---------------


async def _fence(conn: Conn, lease: Lease) -> None:
    """Raise LeaseLost unless `lease` is still the message's lease; the row stays locked
    until COMMIT, so no other node can lease it before this transaction's writes land."""
    token = await _fetchval(conn, Q["lock_lease"], queue_id=lease.queue_id)
    if token is None or token != lease.token:
        raise LeaseLost()


async def record_outcome(
    conn: Conn, lease: Lease, outcomes: Sequence[RecipientOutcome], now: float
) -> None:
    for outcome in outcomes:
        if outcome.recipient not in lease.addresses:
            raise StoreError(f"outcome for {outcome.recipient!r}, which the lease does not cover")
    await _fence(conn, lease)
    pending = [not outcome.state.is_final for outcome in outcomes]
    await _execute(
        conn,
        Q["record_recipients"],
        queue_id=lease.queue_id,
        now=float(now),
        addresses=[o.recipient for o in outcomes],
        states=[o.state.value for o in outcomes],
        replies=[o.reply for o in outcomes],
        next=[
            (float(now) if o.next_attempt_at is None else float(o.next_attempt_at)) if p else None
            for o, p in zip(outcomes, pending, strict=True)
        ],
        reasons=[o.wait_reason if p else None for o, p in zip(outcomes, pending, strict=True)],
    )
    await _execute(conn, Q["end_lease_and_drop_finished_body"], queue_id=lease.queue_id)


async def release(conn: Conn, lease: Lease, not_before: float, reason: str) -> None:
    await _fence(conn, lease)
    await _execute(
        conn,
        Q["delay_recipients"],
        queue_id=lease.queue_id,
        addresses=list(lease.addresses),
        not_before=float(not_before),
        reason=reason,
    )
    await _execute(conn, Q["end_lease"], queue_id=lease.queue_id)


async def load_body(conn: Conn, queue_id: QueueId) -> bytes:
    row = await conn.fetchrow(Q["select_body"].sql, *Q["select_body"].args(queue_id=queue_id))
    if row is None:
        raise StoreError(f"no message {queue_id}")
    if row["body"] is None:
        raise StoreError(f"message {queue_id} is finished; its body was dropped")
    return bytes(row["body"])


async def probe_write(conn: Conn) -> None:
    await conn.execute(Q["probe_lock"].sql)
    await conn.fetchval(Q["probe_write"].sql)


# --- upstream holds and waits ----------------------------------------------------------


async def hold_upstream(conn: Conn, hold: UpstreamHold) -> None:
    await _execute(
        conn,
        Q["upsert_hold"],
        upstream=hold.upstream,
        until=None if hold.until is None else float(hold.until),
        reason=hold.reason,
        level=hold.level,
    )


async def release_upstream(conn: Conn, upstream: str) -> None:
    await _execute(conn, Q["delete_hold"], upstream=upstream)


async def upstream_hold(conn: Conn, upstream: str) -> UpstreamHold | None:
    row = await conn.fetchrow(Q["select_hold"].sql, *Q["select_hold"].args(upstream=upstream))
    if row is None:
        return None
    return UpstreamHold(
        upstream=row["upstream"], until=row["until"], reason=row["reason"], level=row["level"]
    )


async def set_upstream_wait(
    conn: Conn, upstream: str, reason: str | None, until: float | None
) -> None:
    if reason is None:
        await _execute(conn, Q["delete_wait"], upstream=upstream)
        return
    await _execute(
        conn,
        Q["upsert_wait"],
        upstream=upstream,
        reason=reason,
        until=None if until is None else float(until),
    )


# --- the queue tool ----------------------------------------------------------------------


async def retry_now(conn: Conn, queue_id: QueueId | None, now: float) -> int:
    changed = await _execute(conn, Q["retry_now"], queue_id=queue_id, now=float(now))
    if queue_id is None:
        await _execute(conn, Q["refresh_pending_messages"])
    else:
        await _execute(conn, Q["refresh_message"], queue_id=queue_id)
    return changed


async def hold_message(conn: Conn, queue_id: QueueId) -> int:
    changed = await _execute(conn, Q["hold_recipients"], queue_id=queue_id)
    await _execute(conn, Q["refresh_message"], queue_id=queue_id)
    return changed


async def release_message(conn: Conn, queue_id: QueueId, now: float) -> int:
    changed = await _execute(conn, Q["release_recipients"], queue_id=queue_id, now=float(now))
    await _execute(conn, Q["refresh_message"], queue_id=queue_id)
    return changed


async def delete_message(conn: Conn, queue_id: QueueId) -> bool:
    return await _execute(conn, Q["delete_message"], queue_id=queue_id) > 0


async def purge_finished(conn: Conn, before: float) -> int:
    return await _execute(conn, Q["purge_finished"], before=float(before))


async def _views(conn: Conn, rows: list[Any]) -> list[MessageView]:
    """MessageViews for message rows (id, upstream, mail_from, message_id, received_at, size)."""
    recipients: dict[str, list[RecipientView]] = {row["id"]: [] for row in rows}
    for r in await _fetch(conn, Q["recipients_of"], ids=list(recipients)):
        recipients[r["queue_id"]].append(
            RecipientView(
                r["address"],
                RecipientState(r["state"]),
                r["attempts"],
                r["next_attempt_at"],
                r["last_reply"],
                r["wait_reason"],
            )
        )
    return [
        MessageView(
            queue_id=QueueId(row["id"]),
            upstream=row["upstream"],
            mail_from=row["mail_from"],
            message_id=row["message_id"],
            received_at=row["received_at"],
            size=row["size"],
            recipients=tuple(recipients[row["id"]]),
        )
        for row in rows
    ]


async def list_messages(
    conn: Conn, state: RecipientState | None, upstream: str | None, limit: int
) -> list[MessageView]:
    rows = await _fetch(
        conn,
        Q["list_messages"],
        state=None if state is None else state.value,
        upstream=upstream,
        limit=limit,
    )
    return await _views(conn, rows)


async def show(conn: Conn, queue_id: QueueId) -> MessageView | None:
    views = await _views(conn, await _fetch(conn, Q["show_message"], queue_id=queue_id))
    return views[0] if views else None


async def counts(conn: Conn) -> dict[RecipientState, int]:
    result = dict.fromkeys(RecipientState, 0)
    for row in await _fetch(conn, Q["counts"]):
        result[RecipientState(row["state"])] = int(row["count"])
    return result


async def depth(conn: Conn) -> QueueDepth:
    """counts() and the oldest pending arrival (run in one snapshot by the store)."""
    return QueueDepth(await counts(conn), await _fetchval(conn, Q["oldest_pending"]))
