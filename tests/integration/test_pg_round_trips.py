"""Round trips and commits per message on PostgreSQL (issue 17): counts, not timings.

A statement is a round trip to the server and CPU on both ends; a commit is a WAL flush.
The store's pool connections get a query logger (asyncpg's), so each test counts what
one verb sent: an enqueue batch is one statement and its own transaction, releasing a
pool connection sends nothing, and concurrent outcomes share one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from relayd.errors import LeaseLost, StoreError
from relayd.store.postgres.store import PostgresStore
from relayd.types import NewMessage, Recipient, RecipientOutcome, RecipientState
from tests.support import postgres

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0
DELIVERED = "250 2.0.0 ok"


# asyncpg's own type introspection, once per connection the first time a statement uses
# a type it has not seen (jsonb[] here): not relayd's statements.
INTROSPECTION = ("typeinfo_tree", "set_config('jit'", "current_setting('jit')")


class Statements:
    """Every statement the store's pool connections ran, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def since(self, mark: int) -> list[str]:
        sent = [" ".join(sql.split())[:60] for sql in self.sent[mark:]]
        return [sql for sql in sent if not any(word in sql for word in INTROSPECTION)]


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Statements:
    seen = Statements()
    create_pool = asyncpg.create_pool

    async def init(conn: Any) -> None:
        conn.add_query_logger(lambda query: seen.sent.append(query.query))

    def logged_pool(*args: Any, **kwargs: Any) -> Any:
        return create_pool(*args, init=init, **kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", logged_pool)  # db.py calls it by module
    return seen


@pytest.fixture
async def store(dsn: str, statements: Statements) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(dsn, pool_size=4) as opened:
        yield opened


def new_message(index: int) -> NewMessage:
    return NewMessage(
        mail_from="app@example.org",
        recipients=(Recipient(f"a{index}@example.net"), Recipient(f"b{index}@example.net")),
        body=b"Subject: %d\r\n\r\nHello.\r\n" % index,
        upstream="up",
        message_id=f"<{index}@example.org>",
        received_at=T0 + index,
    )


async def test_an_enqueue_batch_is_one_statement_and_its_own_transaction(
    store: PostgresStore, statements: Statements
) -> None:
    mark, commits = len(statements.sent), store.commits
    await asyncio.gather(*(store.enqueue(new_message(i)) for i in range(10)))
    batches = store.commits - commits
    assert batches >= 1
    # Messages, bodies, recipients and the NOTIFY: no BEGIN, no COMMIT, no reset query.
    sent = statements.since(mark)
    assert len(sent) == batches, sent
    views = await store.list_messages()
    assert len(views) == 10
    assert all(len(view.recipients) == 2 for view in views)


async def test_a_released_pool_connection_sends_nothing(
    store: PostgresStore, statements: Statements
) -> None:
    queue_id = await store.enqueue(new_message(1))
    mark = len(statements.sent)
    assert await store.load_body(queue_id) == new_message(1).body
    sent = statements.since(mark)
    assert len(sent) == 1, sent  # asyncpg's default reset would add its RESET ALL


async def test_concurrent_outcomes_share_one_transaction(
    store: PostgresStore, statements: Statements
) -> None:
    for i in range(8):
        await store.enqueue(new_message(i))
    leases = await store.lease_due("up", T0 + 100, 32, 300.0, "w1")
    assert len(leases) == 8
    mark, commits = len(statements.sent), store.commits
    await asyncio.gather(
        *(
            store.record_outcome(
                lease,
                [RecipientOutcome(a, RecipientState.DELIVERED, DELIVERED) for a in lease.addresses],
                T0 + 101,
            )
            for lease in leases
        )
    )
    assert store.commits - commits == 1  # one WAL flush for the eight
    sent = statements.since(mark)
    assert len(sent) == 5, sent  # BEGIN, fence, recipients, leases and bodies, COMMIT
    counts = await store.counts()
    assert counts[RecipientState.DELIVERED] == 16
    for lease in leases:
        view = await store.show(lease.queue_id)
        assert view is not None
        assert all(r.attempts == 1 and r.last_reply == DELIVERED for r in view.recipients)
    assert await store.lease_due("up", T0 + 400, 32, 300.0, "w2") == []
    assert await store.next_due("up", T0 + 400) is None


async def test_a_lost_lease_fails_only_its_own_outcome_in_a_batch(
    store: PostgresStore, dsn: str
) -> None:
    for i in range(3):
        await store.enqueue(new_message(i))
    leases = await store.lease_due("up", T0 + 100, 32, 300.0, "w1")
    stolen = leases[1]
    sql = "UPDATE messages SET lease_token = 'other' WHERE id = $1 RETURNING id"
    assert postgres.fetchval(dsn, sql, stolen.queue_id) == stolen.queue_id
    results = await asyncio.gather(
        *(
            store.record_outcome(
                lease,
                [RecipientOutcome(a, RecipientState.DELIVERED, DELIVERED) for a in lease.addresses],
                T0 + 101,
            )
            for lease in leases
        ),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], LeaseLost)
    view = await store.show(stolen.queue_id)
    assert view is not None
    assert all(r.state is RecipientState.QUEUED and r.attempts == 0 for r in view.recipients)
    assert (await store.counts())[RecipientState.DELIVERED] == 4


async def test_a_deferred_outcome_in_a_batch_keeps_the_message_due(store: PostgresStore) -> None:
    for i in range(2):
        await store.enqueue(new_message(i))
    first, second = await store.lease_due("up", T0 + 100, 32, 300.0, "w1")
    later = T0 + 900
    await asyncio.gather(
        store.record_outcome(
            first,
            [
                RecipientOutcome(first.addresses[0], RecipientState.DELIVERED, DELIVERED),
                RecipientOutcome(
                    first.addresses[1], RecipientState.DEFERRED, "451 later", later, "retry 1"
                ),
            ],
            T0 + 101,
        ),
        store.record_outcome(
            second,
            [RecipientOutcome(a, RecipientState.FAILED, "550 no") for a in second.addresses],
            T0 + 101,
        ),
    )
    assert await store.next_due("up", T0 + 200) == later
    assert await store.load_body(first.queue_id) == new_message(0).body
    with pytest.raises(Exception, match="body was dropped"):
        await store.load_body(second.queue_id)
    (again,) = await store.lease_due("up", later, 32, 300.0, "w2")
    assert again.queue_id == first.queue_id and again.addresses == (first.addresses[1],)


async def test_an_outcome_the_server_refuses_fails_alone_in_a_batch(store: PostgresStore) -> None:
    """A NUL in a reply is text PostgreSQL refuses (SQLSTATE 22021): the batch is redone one
    outcome per transaction, so only that caller sees the error."""
    for i in range(3):
        await store.enqueue(new_message(i))
    leases = await store.lease_due("up", T0 + 100, 32, 300.0, "w1")
    replies = [DELIVERED, "250 ok\x00", DELIVERED]
    results = await asyncio.gather(
        *(
            store.record_outcome(
                lease,
                [RecipientOutcome(a, RecipientState.DELIVERED, reply) for a in lease.addresses],
                T0 + 101,
            )
            for lease, reply in zip(leases, replies, strict=True)
        ),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "0x00" in str(results[1])
    assert (await store.counts())[RecipientState.DELIVERED] == 4
    view = await store.show(leases[1].queue_id)
    assert view is not None
    assert all(r.state is RecipientState.QUEUED for r in view.recipients)


async def test_two_outcomes_for_one_lease_in_a_batch_record_one(store: PostgresStore) -> None:
    """The first ends the lease, so the second is fenced out, as in two transactions."""
    await store.enqueue(new_message(1))
    (lease,) = await store.lease_due("up", T0 + 100, 32, 300.0, "w1")
    deferred = [
        RecipientOutcome(a, RecipientState.DEFERRED, "451 later", T0 + 900, "retry 1")
        for a in lease.addresses
    ]
    results = await asyncio.gather(
        store.record_outcome(lease, deferred, T0 + 101),
        store.record_outcome(lease, deferred, T0 + 101),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], LeaseLost)
    view = await store.show(lease.queue_id)
    assert view is not None
    assert [r.attempts for r in view.recipients] == [1, 1]
