"""Upgrading a version-1 SQLite queue that holds mail: nothing is lost, everything works.

A relayd of the first release (ba4467f) left its queue in the version-1 schema; the current
store upgrades it in place on open (sqlite_ops.create_schema, migration_2). The database is
built here from that schema verbatim (tests/support/sqlite_v1.sql) and filled as that relayd
wrote it: its queue ids, its recipient states, a body dropped once every recipient was final,
the lease of a worker that died, rate-ledger rows, an upstream hold and, in a queue a later
version-1 relayd had opened (8e05639), an upstream wait. After the upgrade every row must
read back the same, the due mail must be leasable with its exact bytes and deliverable, the
version-2 features must work on the old rows, and a second open must change nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayd.dsn.parse import ParsedDsn, ParsedRecipient
from relayd.errors import LeaseLost, StoreError
from relayd.store import sqlfile
from relayd.store.base import ReportRecipient
from relayd.store.sqlite.ops import SCHEMA_VERSION
from relayd.store.sqlite.store import SqliteStore
from relayd.types import (
    Ceiling,
    Lease,
    MessageView,
    QueueId,
    RcptDsn,
    Recipient,
    RecipientOutcome,
    RecipientState,
    RecipientView,
    UpstreamHold,
)

V1 = sqlfile.parse((Path(__file__).parent.parent / "support" / "sqlite_v1.sql").read_text())
NOW = 1_704_200_000.0  # 2024-01-02 12:53:20 UTC, the store's `now` after the upgrade
# Version-1 queue ids: 18 characters of lower-case Crockford base32 (the current ones differ).
QUEUED = QueueId("01hk53mza0agyx8jfd")  # two recipients, never tried
PARTLY = QueueId("01hk4zyj80jsp37dcv")  # one delivered, one deferred (greylisted) and due
DONE = QueueId("01hk4wwx80w57q3sw3")  # delivered: history, its body already dropped
HELD = QueueId("01hk50x2t0xwbzcct9")  # one failed, one held by the operator
ORPHANED = QueueId("01hk536aj0ye2s7n3k")  # leased by a worker that died: lease expired
PAUSED = QueueId("01hk539c70phh1w67r")  # on upstream "office", deferred, due later
DEAD_TOKEN = "9f1c2b7e4d3a5f60718293a4b5c6d7e8"


def body(subject: str, size: int = 0) -> bytes:
    """A message as intake stored it: CRLF, 8-bit text, optionally a large attachment."""
    head = (
        f"Received: from billing-app (localhost [127.0.0.1]) by relay.test (relayd)\r\n"
        f"From: Praxis Müller <billing@practice.example>\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    text = "Grüße aus der Praxis. Ihre Rechnung: 42,00 €\r\n.leading dot\r\n".encode()
    return head + text + (b"QUJD" * 19 + b"\r\n") * (size // 78)


BODIES = {
    QUEUED: body("Rechnung 1042", 300_000),  # overflow pages, like a PDF invoice
    PARTLY: body("Termin morgen"),
    HELD: body("Mahnung"),
    ORPHANED: body("Befund"),
    PAUSED: body("Newsletter"),
}


@dataclass(frozen=True)
class Row:
    """One v1 `messages` row and its recipients (address, state, attempts, due, reply, why)."""

    id: QueueId
    upstream: str
    received_at: float
    recipients: tuple[tuple[str, str, int, float | None, str | None, str | None], ...]
    next_attempt_at: float | None
    mail_options: str = "[]"
    auth_user: str | None = None
    lease: tuple[str, str, float] | None = None  # leased_by, lease_token, lease_until

    @property
    def message_id(self) -> str:
        return f"<relayd.{self.id}@relay.test>"


ROWS = [
    Row(
        QUEUED,
        "main",
        NOW - 120,
        (
            ("anna@example.com", "queued", 0, NOW - 120, None, None),
            ("ben@example.org", "queued", 0, NOW - 120, None, None),
        ),
        NOW - 120,
        mail_options='["BODY=8BITMIME"]',
        auth_user="billing-app",
    ),
    Row(
        PARTLY,
        "main",
        NOW - 4000,
        (
            ("carol@example.com", "delivered", 1, None, "250 2.0.0 OK 1704196001", None),
            (
                "dave@example.net",
                "deferred",
                3,
                NOW - 60,
                "451 4.7.1 Greylisted, try again later",
                "retry 4 at 12:52",
            ),
        ),
        NOW - 60,
    ),
    Row(
        DONE,
        "main",
        NOW - 7200,
        (("erin@example.com", "delivered", 1, None, "250 2.0.0 Ok: queued as 4T3kQ", None),),
        None,
    ),
    Row(
        HELD,
        "main",
        NOW - 3000,
        (
            ("frank@example.net", "failed", 1, None, "550 5.1.1 User unknown", None),
            ("grace@example.com", "held", 0, NOW - 3000, None, "held by operator"),
        ),
        None,
    ),
    Row(
        ORPHANED,
        "main",
        NOW - 600,
        (("henry@example.com", "queued", 0, NOW - 600, None, None),),
        NOW - 600,
        lease=("relayd-4711:main", DEAD_TOKEN, NOW - 300),
    ),
    Row(
        PAUSED,
        "office",
        NOW - 500,
        (
            (
                "ivy@example.org",
                "deferred",
                2,
                NOW + 900,
                "421 4.7.0 Try again later, closing connection",
                "retry 3 at 13:08",
            ),
        ),
        NOW + 900,
    ),
]
LEDGER = [("main", NOW - 3000, 1), ("main", NOW - 1800, 1), ("main", NOW - 600, 2)]
LEDGER += [("office", NOW - 100, 1)]
HOLD = UpstreamHold("office", NOW + 1800, "throttled: 421 4.7.0 Try again later", 2)
WAIT = ("office", "rate limit 500/hour", NOW + 1200)  # a late version-1 queue only

# Every column of every version-1 table, to compare before and after the upgrade.
V1_TABLES = {
    "schema_version": "version",
    "messages": "id, upstream, mail_from, message_id, received_at, size, mail_options, "
    "auth_user, client, next_attempt_at, leased_by, lease_token, lease_until",
    "bodies": "queue_id, body",
    "recipients": "queue_id, idx, address, state, attempts, next_attempt_at, last_reply, "
    "wait_reason, updated_at",
    "send_ledger": "id, upstream, sent_at, weight",
    "upstream_holds": "upstream, until, reason, level",
}


def build_v1(path: Path, *, with_waits: bool) -> None:
    """The queue a version-1 relayd left: its schema and pragmas, then its rows."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in V1["schema"].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(V1["schema_version_set"], {"version": 1})
        if with_waits:
            conn.execute(V1["upstream_waits"])
            conn.execute("INSERT INTO upstream_waits VALUES (?, ?, ?)", WAIT)
        for row in ROWS:
            _insert(conn, row)
        conn.executemany(
            "INSERT INTO send_ledger (upstream, sent_at, weight) VALUES (?, ?, ?)", LEDGER
        )
        conn.execute(
            "INSERT INTO upstream_holds VALUES (?, ?, ?, ?)",
            (HOLD.upstream, HOLD.until, HOLD.reason, HOLD.level),
        )
        conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, row: Row) -> None:
    leased_by, token, until = row.lease or (None, None, None)
    stored = BODIES.get(row.id, body("dropped"))
    conn.execute(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.id,
            row.upstream,
            "billing@practice.example",
            row.message_id,
            row.received_at,
            len(stored),
            row.mail_options,
            row.auth_user,
            "127.0.0.1",
            row.next_attempt_at,
            leased_by,
            token,
            until,
        ),
    )
    if row.id in BODIES:  # v1 dropped a body once every recipient was final
        conn.execute("INSERT INTO bodies VALUES (?, ?)", (row.id, BODIES[row.id]))
    for idx, (address, state, attempts, due, reply, why) in enumerate(row.recipients):
        updated = row.received_at + 60 * attempts
        conn.execute(
            "INSERT INTO recipients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, idx, address, state, attempts, due, reply, why, updated),
        )


def dump(path: Path, tables: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of `tables` ({table: columns}), in a stable order."""
    with closing(sqlite3.connect(path)) as conn:
        return {
            table: sorted(conn.execute(f"SELECT {columns} FROM {table}").fetchall())  # noqa: S608 (constants)
            for table, columns in tables.items()
        }


def all_tables(path: Path) -> dict[str, str]:
    """{table: "*"} for every table now in the database (to compare two opens)."""
    with closing(sqlite3.connect(path)) as conn:
        names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name: "*" for (name,) in names}


def expected_views(with_waits: bool) -> list[MessageView]:
    """The queue tool's view of every message, as the version-1 rows say (oldest first)."""
    views = []
    for row in sorted(ROWS, key=lambda r: r.received_at):
        recipients = []
        for address, state, attempts, due, reply, why in row.recipients:
            if with_waits and row.upstream == WAIT[0] and state == "deferred":
                why = WAIT[1]  # due before the upstream's wait ends: the wait is the reason
            recipients.append(
                RecipientView(address, RecipientState(state), attempts, due, reply, why)
            )
        views.append(
            MessageView(
                queue_id=row.id,
                upstream=row.upstream,
                mail_from="billing@practice.example",
                message_id=row.message_id,
                received_at=row.received_at,
                size=len(BODIES.get(row.id, body("dropped"))),
                recipients=tuple(recipients),
            )
        )
    return views


@pytest.fixture(params=[False, True], ids=["v1-first-release", "v1-with-upstream-waits"])
def with_waits(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def v1_queue(tmp_path: Path, with_waits: bool) -> Path:
    path = tmp_path / "queue.db"
    build_v1(path, with_waits=with_waits)
    return path


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(path) as store:
        yield store


async def test_every_row_survives_the_upgrade(v1_queue: Path, with_waits: bool) -> None:
    before = dump(v1_queue, V1_TABLES)

    async with opened(v1_queue) as store:
        assert await store.list_messages() == expected_views(with_waits)
        counts = await store.counts()

    after = dump(v1_queue, V1_TABLES)
    assert after["schema_version"] == [(1,), (SCHEMA_VERSION,)]
    assert {t: rows for t, rows in after.items() if t != "schema_version"} == {
        t: rows for t, rows in before.items() if t != "schema_version"
    }
    # the version-2 columns of the old rows hold their "not given" values
    added = dump(v1_queue, {"recipients": "notify, orcpt", "messages": "delay_warned"})
    assert set(added["recipients"]) == {(None, None)}
    assert set(added["messages"]) == {(0,)}
    assert counts == {
        RecipientState.QUEUED: 3,
        RecipientState.DEFERRED: 2,
        RecipientState.DELIVERED: 2,
        RecipientState.FAILED: 1,
        RecipientState.HELD: 1,
        RecipientState.BOUNCED: 0,
    }


async def test_opening_twice_changes_nothing(v1_queue: Path) -> None:
    async with opened(v1_queue):
        pass
    tables = all_tables(v1_queue)
    assert {"imap_state", "upstream_waits"} <= set(tables)
    once = dump(v1_queue, tables)

    async with opened(v1_queue) as store:
        views = await store.list_messages()
    async with opened(v1_queue) as store:
        assert await store.list_messages() == views

    assert all_tables(v1_queue) == tables
    assert dump(v1_queue, tables) == once  # no second version row, no second ALTER


async def test_due_mail_is_leased_with_its_exact_bytes_and_delivered(v1_queue: Path) -> None:
    async with opened(v1_queue) as store:
        leases = await store.lease_due("main", NOW, 10, 300, "relayd-9000:main")

        # Oldest due first; the dead worker's expired lease does not hold its message back;
        # only due, pending recipients are leased (not the delivered, failed or held ones).
        got = [(lease.queue_id, lease.addresses, lease.attempts) for lease in leases]
        assert got == [
            (ORPHANED, ("henry@example.com",), 0),
            (QUEUED, ("anna@example.com", "ben@example.org"), 0),
            (PARTLY, ("dave@example.net",), 3),
        ]
        first = leases[1]
        assert first.mail_options == ("BODY=8BITMIME",)
        assert (first.mail_from, first.message_id) == (
            "billing@practice.example",
            f"<relayd.{QUEUED}@relay.test>",
        )
        assert (first.received_at, first.size) == (NOW - 120, len(BODIES[QUEUED]))
        for lease in leases:
            assert await store.load_body(lease.queue_id) == BODIES[lease.queue_id]

        stale = Lease(
            ORPHANED, "main", "billing@practice.example", (Recipient("henry@example.com"),), 0,
            f"<relayd.{ORPHANED}@relay.test>", NOW - 600, 1, DEAD_TOKEN, NOW - 300,
        )  # fmt: skip
        with pytest.raises(LeaseLost):  # the dead worker's token is fenced out
            await store.record_outcome(stale, [_delivered("henry@example.com")], NOW)

        for lease in leases:
            await store.record_outcome(lease, [_delivered(r) for r in lease.addresses], NOW)
        for queue_id in (ORPHANED, QUEUED, PARTLY):
            view = await store.show(queue_id)
            assert view is not None
            assert {r.state for r in view.recipients} == {RecipientState.DELIVERED}
            with pytest.raises(StoreError, match="finished"):
                await store.load_body(queue_id)
        assert await store.lease_due("main", NOW + 86400, 10, 300, "w") == []
        assert await store.next_due("main", NOW) is None


async def test_held_paused_and_finished_mail_behave_as_before(v1_queue: Path) -> None:
    async with opened(v1_queue) as store:
        with pytest.raises(StoreError, match="finished"):  # v1 dropped it
            await store.load_body(DONE)

        assert await store.release_message(HELD, NOW) == 1  # the operator releases it
        leases = await store.lease_due("main", NOW, 10, 300, "w")
        assert [x.queue_id for x in leases] == [ORPHANED, QUEUED, PARTLY, HELD]
        assert leases[-1].addresses == ("grace@example.com",)  # not the failed one
        assert await store.load_body(HELD) == BODIES[HELD]

        assert await store.upstream_hold("office") == HOLD
        assert await store.lease_due("office", NOW, 10, 300, "w") == []  # due at NOW + 900
        assert await store.next_due("office", NOW) == NOW + 900
        (later,) = await store.lease_due("office", NOW + 900, 10, 300, "w")
        assert (later.queue_id, later.addresses, later.attempts) == (
            PAUSED,
            ("ivy@example.org",),
            2,
        )
        assert await store.load_body(PAUSED) == BODIES[PAUSED]


async def test_the_rate_ledger_still_counts_the_old_sends(v1_queue: Path) -> None:
    """4 sends of the last hour are in the v1 ledger: a 5/hour ceiling allows one more."""
    ceiling = [Ceiling(5, 3600)]
    async with opened(v1_queue) as store:
        slot = await store.reserve_send("main", NOW, ceiling, 0.0, 1, 60.0)
        assert slot.reservation is not None
        refused = await store.reserve_send("main", NOW, ceiling, 0.0, 1, 60.0)
        assert refused.reservation is None
        assert refused.at == NOW - 3000 + 3600  # when the oldest v1 send leaves the window
        office = await store.reserve_send("office", NOW, [Ceiling(1, 3600)], 0.0, 1, 60.0)
        assert (office.reservation, office.at) == (None, NOW - 100 + 3600)


async def test_version_2_features_work_on_version_1_rows(v1_queue: Path) -> None:
    async with opened(v1_queue) as store:
        info = await store.report_info(HELD)
        assert info is not None
        assert (info.mail_options, info.delay_warned) == ((), False)
        assert info.recipients == (
            ReportRecipient(
                "frank@example.net",
                RecipientState.FAILED,
                "550 5.1.1 User unknown",
                RcptDsn(),
            ),
            ReportRecipient("grace@example.com", RecipientState.HELD, None, RcptDsn()),
        )
        assert await store.mark_delay_warned(PARTLY) is True
        assert await store.mark_delay_warned(PARTLY) is False

        # A late bounce about a v1 message: its lower-case id is not a current queue id,
        # so it is found by its Message-ID (the index migration_2 added).
        report = ParsedDsn(
            recipients=(
                ParsedRecipient("erin@example.com", "failed", "5.2.1", "550 5.2.1 disabled"),
            ),
            original_message_id=f"<relayd.{DONE}@relay.test>",
        )
        assert report.queue_id is None
        assert await store.match_bounce(report, NOW) == DONE
        view = await store.show(DONE)
        assert view is not None
        ((erin),) = view.recipients
        assert (erin.state, erin.last_reply) == (RecipientState.BOUNCED, "550 5.2.1 disabled")

        await store.save_imap_state("office@practice.example@imap:993/INBOX", 7, 42)
        assert await store.imap_state("office@practice.example@imap:993/INBOX") == (7, 42)

        await store.set_upstream_wait("main", "window closed", NOW + 600)
        queued = await store.show(QUEUED)
        assert queued is not None
        assert {r.wait_reason for r in queued.recipients} == {"window closed"}


def _delivered(address: str) -> RecipientOutcome:
    return RecipientOutcome(address, RecipientState.DELIVERED, "250 2.0.0 OK")


def shape(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Tables with their columns (name, type, not null, default, key) and indexes."""
    with closing(sqlite3.connect(path)) as conn:
        found: dict[str, list[tuple[Any, ...]]] = {}
        for name, kind in conn.execute("SELECT name, type FROM sqlite_master ORDER BY name"):
            if kind == "table":
                info = conn.execute("SELECT * FROM pragma_table_info(?)", (name,)).fetchall()
                found[name] = [tuple(column[1:]) for column in info]
            elif kind == "index" and not name.startswith("sqlite_autoindex"):
                found[f"index {name}"] = conn.execute(
                    "SELECT name FROM pragma_index_info(?)", (name,)
                ).fetchall()
        return found


async def test_the_upgraded_schema_is_the_one_a_new_queue_gets(
    v1_queue: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh" / "queue.db"
    async with opened(fresh), opened(v1_queue):
        pass
    assert shape(v1_queue) == shape(fresh)
    assert dump(v1_queue, {"schema_version": "max(version)"}) == {
        "schema_version": [(SCHEMA_VERSION,)]
    }
