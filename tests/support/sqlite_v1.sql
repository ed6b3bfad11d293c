-- The SQLite queue schema at version 1, verbatim: the `-- name: schema` block of
-- relayd/store/sqlite.sql as first committed (git show ba4467f:relayd/store/sqlite.sql).
-- tests/integration/test_sqlite_upgrade.py builds a version-1 queue from it, as a relayd of
-- that commit left it (its create_schema ran this block, then recorded version 1), and opens
-- it with the current store. Do not edit the DDL below: it is the past the upgrade must read.

-- name: schema
-- Version 1. Idempotent; run inside one transaction by open().
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);

-- One row per accepted message; it stays as history for the queue tool once every
-- recipient is final, until purge_finished() removes it. `next_attempt_at` is the
-- earliest due time among pending recipients (NULL when none is pending), kept up to
-- date by every write so lease_due is one index range scan.
CREATE TABLE IF NOT EXISTS messages (
    id              TEXT PRIMARY KEY,
    upstream        TEXT NOT NULL,
    mail_from       TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    received_at     REAL NOT NULL,
    size            INTEGER NOT NULL,
    mail_options    TEXT NOT NULL DEFAULT '[]',
    auth_user       TEXT,
    client          TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL,
    leased_by       TEXT,
    lease_token     TEXT,
    lease_until     REAL
);

CREATE INDEX IF NOT EXISTS messages_due ON messages (upstream, next_attempt_at);

-- The raw bytes, apart from the row that changes on every lease and attempt: SQLite
-- rewrites a whole record, overflow pages included, whenever its size changes, so a
-- body inside `messages` would be copied into the WAL (and fsynced) by every lease,
-- outcome and release. Deleted once every recipient is final.
CREATE TABLE IF NOT EXISTS bodies (
    queue_id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    body     BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS recipients (
    queue_id        TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    address         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_reply      TEXT,
    wait_reason     TEXT,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (queue_id, idx)
) WITHOUT ROWID;

-- The queue tool's `list --state held` and counts().
CREATE INDEX IF NOT EXISTS recipients_state ON recipients (state, queue_id);

-- The rate ledger: one row per send (or recipient batch, by weight), kept for
-- limits.ledger_horizon() seconds so ceilings hold across restarts.
CREATE TABLE IF NOT EXISTS send_ledger (
    id       INTEGER PRIMARY KEY,
    upstream TEXT NOT NULL,
    sent_at  REAL NOT NULL,
    weight   INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS send_ledger_upstream ON send_ledger (upstream, sent_at);

CREATE TABLE IF NOT EXISTS upstream_holds (
    upstream TEXT PRIMARY KEY,
    until    REAL,
    reason   TEXT NOT NULL,
    level    INTEGER NOT NULL DEFAULT 0
);

-- name: schema_version_set
INSERT INTO schema_version (version) VALUES (:version);

-- name: upstream_waits
-- Added within version 1 by 8e05639 (git show 8e05639:relayd/store/sqlite.sql), verbatim: a
-- version-1 queue that a relayd of that commit had opened holds this table too.
CREATE TABLE IF NOT EXISTS upstream_waits (
    upstream TEXT PRIMARY KEY,
    reason   TEXT NOT NULL,
    until    REAL
);
