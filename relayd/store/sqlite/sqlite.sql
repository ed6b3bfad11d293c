-- relayd SQLite schema and queries.
--
-- Each block starts with `-- name: <query_name>`; the comment lines right after it say
-- what the query is for. relayd/store/sqlfile.py loads the blocks at import; every
-- value is a bound parameter, nothing is formatted into SQL. Recipient states are the
-- values of relayd.types.RecipientState; "pending" means queued or deferred, "final"
-- means delivered, failed or bounced.

-- name: pragmas
-- Per-connection settings. WAL lets the queue tool read while the writer commits;
-- synchronous=FULL fsyncs the WAL on every commit, so a committed enqueue survives power
-- loss before intake answers 250; foreign keys make deleting a message delete its
-- recipients. (busy_timeout is set through sqlite3.connect(timeout=...).)
-- secure_delete: some builds (Debian's) default to ON, which zeroes every page a delivered
-- body freed: a second write of every body, inside the writer lock. FAST still zeroes
-- deleted content on pages that are written anyway; freed pages keep their bytes until
-- they are reused, as a file system keeps an unlinked Postfix queue file's blocks.
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
PRAGMA secure_delete = FAST;

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
-- limits.ledger_horizon() seconds so ceilings hold across restarts. sent_at is when the send
-- was reserved, ended_at (version 3) when its final reply came back, NULL while it is under
-- way: limits.occupying counts it from there.
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

-- Why an upstream sends nothing now (window closed, rate limit, throttled, paused) and until
-- when (NULL: until further notice), as its dispatcher lane last said. One row per upstream,
-- written when the reason changes, so a wait costs one write however long the backlog is;
-- recipients_of shows it on the upstream's pending recipients. Added within version 1: the
-- schema's CREATE ... IF NOT EXISTS statements run on every open, so older databases gain it.
CREATE TABLE IF NOT EXISTS upstream_waits (
    upstream TEXT PRIMARY KEY,
    reason   TEXT NOT NULL,
    until    REAL
);

-- The status page's history (store/sqlite/history.py): one row per minute, what happened in
-- it and the queue's depth at its end, kept a few days so the charts survive a restart.
-- Added within version 1, as upstream_waits was: CREATE ... IF NOT EXISTS runs on every open.
CREATE TABLE IF NOT EXISTS history (
    minute    INTEGER PRIMARY KEY,
    accepted  INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    deferred  INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    pending   INTEGER NOT NULL DEFAULT 0,
    held      INTEGER NOT NULL DEFAULT 0
);

-- name: migration_2
-- Version 2 (delivery reports): RFC 3461 NOTIFY/ORCPT per recipient, the delay-warning
-- flag per message, the IMAP poller's place per account, and an index for matching late
-- bounces by Message-ID. ALTERs, so an existing version 1 database keeps its queue.
ALTER TABLE recipients ADD COLUMN notify TEXT;
ALTER TABLE recipients ADD COLUMN orcpt TEXT;
ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS imap_state (
    account     TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id);

-- name: migration_3
-- Version 3 (exact ceilings): a send is counted from its final reply, stamped in ended_at.
-- A send of an older relayd is taken to have ended when it was reserved, as it then counted.
ALTER TABLE send_ledger ADD COLUMN ended_at REAL;
UPDATE send_ledger SET ended_at = sent_at;

-- name: journal_mode
PRAGMA journal_mode;

-- name: schema_version_get
-- The schema version this database was created with (NULL when new).
SELECT max(version) FROM schema_version;

-- name: schema_version_set
INSERT INTO schema_version (version) VALUES (:version);

-- name: probe_insert
-- The readiness probe (check_writable): a row written and deleted in one transaction, so
-- the commit appends a page to the WAL and fsyncs it as an enqueue does, and leaves nothing.
-- No schema is version 0, and schema_version_get's max() never sees the row anyway.
INSERT INTO schema_version (version) VALUES (0);

-- name: probe_delete
DELETE FROM schema_version WHERE version = 0;

-- name: insert_message
INSERT INTO messages (
    id, upstream, mail_from, message_id, received_at, size, mail_options,
    auth_user, client, next_attempt_at
) VALUES (
    :id, :upstream, :mail_from, :message_id, :received_at, :size, :mail_options,
    :auth_user, :client, :received_at
);

-- name: insert_body
INSERT INTO bodies (queue_id, body) VALUES (:queue_id, :body);

-- name: insert_recipient
-- A new recipient is queued and due when the message was received.
INSERT INTO recipients (
    queue_id, idx, address, state, attempts, next_attempt_at, updated_at, notify, orcpt
)
VALUES (:queue_id, :idx, :address, 'queued', 0, :due, :due, :notify, :orcpt);

-- name: select_due_messages
-- Oldest due first; a message under an unexpired lease is skipped. Uses messages_due.
SELECT id, upstream, mail_from, message_id, received_at, size, mail_options
FROM messages
WHERE upstream = :upstream
  AND next_attempt_at <= :now
  AND (lease_until IS NULL OR lease_until <= :now)
ORDER BY next_attempt_at, received_at
LIMIT :limit;

-- name: any_due
-- Whether select_due_messages would find a message, by a read: a worker that looks with
-- nothing to lease (after every batch, and one of each lane per new message) costs a read,
-- not a write transaction that holds the queue's write lock.
SELECT 1
FROM messages
WHERE upstream = :upstream
  AND next_attempt_at <= :now
  AND (lease_until IS NULL OR lease_until <= :now)
LIMIT 1;

-- name: select_due_recipients
-- The recipients a new lease covers: pending and due (held ones are never leased), with
-- their RFC 3461 parameters to forward upstream.
SELECT address, attempts, notify, orcpt
FROM recipients
WHERE queue_id = :queue_id
  AND state IN ('queued', 'deferred')
  AND next_attempt_at <= :now
ORDER BY idx;

-- name: take_lease
UPDATE messages
SET leased_by = :worker, lease_token = :token, lease_until = :lease_until
WHERE id = :queue_id;

-- name: lease_token
-- Fencing: the token of the lease currently on the message.
SELECT lease_token FROM messages WHERE id = :queue_id;

-- name: end_lease
-- Clear the lease and recompute the message's due time from its pending recipients, in
-- one write of the row (record_outcome and release: after their recipient writes).
UPDATE messages
SET leased_by = NULL, lease_token = NULL, lease_until = NULL,
    next_attempt_at = (
        SELECT min(r.next_attempt_at) FROM recipients AS r
        WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
    )
WHERE id = :queue_id;

-- name: renew_lease
-- A long send keeps its lease (delivery/renewal.py); no row changed: it is no longer this one.
UPDATE messages SET lease_until = max(lease_until, :lease_until)
WHERE id = :queue_id AND lease_token = :token;

-- name: release_all_leases
-- At the start of the daemon that holds the instance lock every lease is an earlier run's
-- (sqlite/instance.py): its recipients are due again at once, no attempt counted.
UPDATE messages
SET leased_by = NULL, lease_token = NULL, lease_until = NULL
WHERE lease_token IS NOT NULL;

-- name: record_recipient
-- One attempt's result for one recipient; final recipients are never rewritten.
UPDATE recipients
SET state = :state,
    attempts = attempts + 1,
    last_reply = :reply,
    next_attempt_at = :next_attempt_at,
    wait_reason = :wait_reason,
    updated_at = :now
WHERE queue_id = :queue_id
  AND address = :address
  AND state NOT IN ('delivered', 'failed', 'bounced');

-- name: delay_recipient
-- release(): wait until at least :not_before for :reason; attempts unchanged. A due time
-- later than :not_before is kept (release only ever delays).
UPDATE recipients
SET next_attempt_at = max(coalesce(next_attempt_at, :not_before), :not_before),
    wait_reason = :reason
WHERE queue_id = :queue_id
  AND address = :address
  AND state IN ('queued', 'deferred');

-- name: refresh_message
-- Recompute the message's due time from its pending recipients. Run after any write that
-- changes recipients.
UPDATE messages
SET next_attempt_at = (
    SELECT min(r.next_attempt_at) FROM recipients AS r
    WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
)
WHERE id = :queue_id;

-- name: refresh_pending_messages
-- refresh_message for every message with a pending recipient (retry_now over the queue).
UPDATE messages
SET next_attempt_at = (
    SELECT min(r.next_attempt_at) FROM recipients AS r
    WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
)
WHERE id IN (SELECT queue_id FROM recipients WHERE state IN ('queued', 'deferred'));

-- name: drop_finished_body
-- Once every recipient is final the bytes are no longer needed; the row stays as history.
DELETE FROM bodies
WHERE queue_id = :queue_id
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = :queue_id AND r.state NOT IN ('delivered', 'failed', 'bounced')
  );

-- name: select_body
-- One row when the message exists; body NULL once it was dropped.
SELECT b.body FROM messages AS m LEFT JOIN bodies AS b ON b.queue_id = m.id
WHERE m.id = :queue_id;

-- name: next_due
-- An unexpired lease counts from its expiry (the worker may still defer the message).
SELECT min(
    CASE WHEN lease_until > :now THEN max(next_attempt_at, lease_until) ELSE next_attempt_at END
)
FROM messages
WHERE upstream = :upstream AND next_attempt_at IS NOT NULL;

-- name: prune_ledger
-- A send under way for longer than open_for counts as ended then (limits.occupying).
DELETE FROM send_ledger
WHERE upstream = :upstream AND coalesce(ended_at, sent_at + :open_for) < :before;

-- name: select_ledger
SELECT sent_at, ended_at, weight FROM send_ledger WHERE upstream = :upstream ORDER BY sent_at;

-- name: stamp_ledger
UPDATE send_ledger SET ended_at = :ended_at WHERE id = :id;

-- name: insert_ledger
INSERT INTO send_ledger (upstream, sent_at, weight) VALUES (:upstream, :sent_at, :weight);

-- name: delete_ledger
DELETE FROM send_ledger WHERE id = :id;

-- name: upsert_hold
INSERT INTO upstream_holds (upstream, until, reason, level)
VALUES (:upstream, :until, :reason, :level)
ON CONFLICT (upstream) DO UPDATE
SET until = excluded.until, reason = excluded.reason, level = excluded.level;

-- name: delete_hold
DELETE FROM upstream_holds WHERE upstream = :upstream;

-- name: select_hold
SELECT upstream, until, reason, level FROM upstream_holds WHERE upstream = :upstream;

-- name: upsert_wait
INSERT INTO upstream_waits (upstream, reason, until)
VALUES (:upstream, :reason, :until)
ON CONFLICT (upstream) DO UPDATE
SET reason = excluded.reason, until = excluded.until;

-- name: delete_wait
DELETE FROM upstream_waits WHERE upstream = :upstream;

-- name: list_messages
-- The queue tool's list: optional filters by recipient state and upstream, oldest first.
SELECT id, upstream, mail_from, message_id, received_at, size
FROM messages AS m
WHERE (:upstream IS NULL OR m.upstream = :upstream)
  AND (
      :state IS NULL
      OR EXISTS (SELECT 1 FROM recipients AS r WHERE r.queue_id = m.id AND r.state = :state)
  )
ORDER BY received_at, id
LIMIT :limit;

-- name: show_message
SELECT id, upstream, mail_from, message_id, received_at, size
FROM messages
WHERE id = :queue_id;

-- name: recipients_of
-- Recipients of the messages whose ids are in the JSON array :ids. A pending recipient due
-- before its upstream's wait ends is held back by that wait, so it shows the upstream's
-- reason; any other shows its own (retry N at ..., held by operator).
SELECT r.queue_id, r.address, r.state, r.attempts, r.next_attempt_at, r.last_reply,
       CASE
           WHEN r.state IN ('queued', 'deferred')
                AND w.reason IS NOT NULL
                AND (w.until IS NULL OR r.next_attempt_at < w.until)
           THEN w.reason
           ELSE r.wait_reason
       END
FROM recipients AS r
JOIN messages AS m ON m.id = r.queue_id
LEFT JOIN upstream_waits AS w ON w.upstream = m.upstream
WHERE r.queue_id IN (SELECT value FROM json_each(:ids))
ORDER BY r.queue_id, r.idx;

-- name: counts
SELECT state, count(*) FROM recipients GROUP BY state;

-- name: oldest_pending
-- depth(): when the oldest message with a pending recipient arrived (NULL when none);
-- through recipients_state, so it reads the pending recipients, not the history.
SELECT min(m.received_at)
FROM recipients AS r
JOIN messages AS m ON m.id = r.queue_id
WHERE r.state IN ('queued', 'deferred');

-- name: retry_now
-- Pending recipients (of one message, or all when :queue_id is NULL) become due now.
UPDATE recipients
SET next_attempt_at = min(coalesce(next_attempt_at, :now), :now), wait_reason = NULL
WHERE state IN ('queued', 'deferred')
  AND (:queue_id IS NULL OR queue_id = :queue_id);

-- name: hold_recipients
UPDATE recipients
SET state = 'held', wait_reason = 'held by operator'
WHERE queue_id = :queue_id AND state IN ('queued', 'deferred');

-- name: release_recipients
UPDATE recipients
SET state = 'queued', next_attempt_at = :now, wait_reason = NULL, updated_at = :now
WHERE queue_id = :queue_id AND state = 'held';

-- name: delete_message
-- Its recipients and body go with it (ON DELETE CASCADE).
DELETE FROM messages WHERE id = :queue_id;

-- name: purge_finished
-- Remove history: messages whose recipients are all final and were last updated before
-- :before.
DELETE FROM messages
WHERE next_attempt_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = messages.id
        AND (r.state NOT IN ('delivered', 'failed', 'bounced') OR r.updated_at >= :before)
  );

-- name: report_message
SELECT id, upstream, mail_from, message_id, received_at, mail_options, delay_warned
FROM messages WHERE id = :queue_id;

-- name: report_recipients
SELECT address, state, last_reply, notify, orcpt
FROM recipients WHERE queue_id = :queue_id ORDER BY idx;

-- name: mark_delay_warned
UPDATE messages SET delay_warned = 1 WHERE id = :queue_id AND delay_warned = 0;

-- name: message_by_id
SELECT id FROM messages WHERE id = :queue_id;

-- name: message_by_message_id
-- The newest message with this Message-ID (a retried app may reuse one).
SELECT id FROM messages WHERE message_id = :message_id ORDER BY received_at DESC LIMIT 1;

-- name: bounce_recipient
-- A late bounce: the upstream had accepted the recipient; it is final now. Idempotent.
UPDATE recipients
SET state = 'bounced', last_reply = :reply, next_attempt_at = NULL, wait_reason = NULL,
    updated_at = :now
WHERE queue_id = :queue_id AND lower(address) = lower(:address) AND state <> 'bounced';

-- name: select_imap_state
SELECT uidvalidity, last_uid FROM imap_state WHERE account = :account;

-- name: upsert_imap_state
INSERT INTO imap_state (account, uidvalidity, last_uid)
VALUES (:account, :uidvalidity, :last_uid)
ON CONFLICT (account) DO UPDATE
SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid;
