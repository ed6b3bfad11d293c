-- relayd PostgreSQL schema (versioned migrations) and queries.
--
-- Each block starts with `-- name: <query_name>`; the comment lines right after it say
-- what it is for. relayd/store/postgres/sql.py loads the blocks at import and turns each
-- `:name` placeholder into a positional `$n` parameter (asyncpg's); nothing is ever
-- formatted into SQL. Recipient states are the values of relayd.types.RecipientState;
-- "pending" means queued or deferred, "final" means delivered, failed or bounced. Times
-- are epoch seconds in double precision, as the store contract passes them in, so a
-- value round-trips exactly (the contract tests compare with ==).
--
-- Migrations are the blocks named `migration_<N>`, applied in order by
-- postgres/migrate.py inside one transaction under an advisory lock; a migration is never
-- edited once released, a change is a new block.

-- name: schema_version_create
-- The one table every version has: which migrations were applied, and when.
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version_get
SELECT coalesce(max(version), 0) FROM schema_version;

-- name: schema_version_set
INSERT INTO schema_version (version) VALUES (:version);

-- name: migrate_lock
-- Serialises migrations of this schema between nodes starting at once; released at COMMIT.
SELECT pg_advisory_xact_lock(hashtextextended('relayd.migrate/' || current_schema(), 0));

-- name: migrate_untimed
-- A migration may rewrite a large table: statement_timeout (db.py) is for the queue's
-- own statements, not for this transaction's.
SET LOCAL statement_timeout = 0;

-- name: migration_1
-- One row per accepted message; it stays as history for the queue tool once every
-- recipient is final, until purge_finished() removes it (queue.retention).
-- `next_attempt_at` is the earliest due time among pending recipients (NULL when none is
-- pending), kept up to date by every write, so lease_due is one index range scan; the
-- lease columns are the claim of one worker on one node (lease_token fences its writes).
CREATE TABLE messages (
    id              text PRIMARY KEY,
    upstream        text NOT NULL,
    mail_from       text NOT NULL,
    message_id      text NOT NULL,
    received_at     double precision NOT NULL,
    size            bigint NOT NULL,
    mail_options    jsonb NOT NULL DEFAULT '[]',
    auth_user       text,
    client          text NOT NULL DEFAULT '',
    next_attempt_at double precision,
    leased_by       text,
    lease_token     text,
    lease_until     double precision
);
-- Partial: finished history (next_attempt_at NULL) never enters the index.
CREATE INDEX messages_due ON messages (upstream, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
-- Bounce matching (an asynchronous DSN names the Message-ID).
CREATE INDEX messages_message_id ON messages (message_id);

-- The raw bytes, apart from the row that every lease and attempt rewrites: PostgreSQL
-- writes a whole new row version on UPDATE, so a body inside `messages` would be copied
-- (TOAST pointers aside) and leave dead tuples behind on every lease. Deleted once every
-- recipient is final.
CREATE TABLE bodies (
    queue_id text PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    body     bytea NOT NULL
);

CREATE TABLE recipients (
    queue_id        text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx             integer NOT NULL,
    address         text NOT NULL,
    state           text NOT NULL CHECK (
        state IN ('queued', 'deferred', 'delivered', 'failed', 'held', 'bounced')
    ),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    last_reply      text,
    wait_reason     text,
    updated_at      double precision NOT NULL,
    PRIMARY KEY (queue_id, idx)
);
-- The queue tool's `list --state held` and counts().
CREATE INDEX recipients_state ON recipients (state, queue_id);

-- One row per upstream that has ever reserved a send; its version (migration_3) makes
-- the read-compute-insert of the ledger atomic per upstream across every node.
CREATE TABLE send_locks (
    upstream text PRIMARY KEY
);

-- The rate ledger: one row per send (or recipient batch, by weight), kept for
-- limits.ledger_horizon() seconds so ceilings hold across restarts and nodes.
-- sent_at is when the send was reserved, ended_at (migration_4) when its final reply came
-- back, NULL while it is under way: limits.occupying counts it from there.
CREATE TABLE send_ledger (
    id       bigserial PRIMARY KEY,
    upstream text NOT NULL,
    sent_at  double precision NOT NULL,
    weight   integer NOT NULL
);
CREATE INDEX send_ledger_upstream ON send_ledger (upstream, sent_at);

CREATE TABLE upstream_holds (
    upstream text PRIMARY KEY,
    until    double precision,
    reason   text NOT NULL,
    level    integer NOT NULL DEFAULT 0
);

-- Why an upstream sends nothing now, as its dispatcher lane last said (see sqlite.sql).
CREATE TABLE upstream_waits (
    upstream text PRIMARY KEY,
    reason   text NOT NULL,
    until    double precision
);

-- name: migration_2
-- Delivery reports: RFC 3461 NOTIFY/ORCPT per recipient, the delay-warning flag per
-- message, and the IMAP bounce poller's place per account and folder.
ALTER TABLE recipients ADD COLUMN notify text, ADD COLUMN orcpt text;
ALTER TABLE messages ADD COLUMN delay_warned boolean NOT NULL DEFAULT false;
CREATE TABLE imap_state (
    account     text PRIMARY KEY,
    uidvalidity bigint NOT NULL,
    last_uid    bigint NOT NULL
);

-- name: migration_3
-- The send ledger's reservation without a lock held across a round trip: each upstream's
-- row counts the reservations made, and one is granted only if none came in between
-- (insert_ledger_if_unchanged).
ALTER TABLE send_locks ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- name: migration_4
-- Exact ceilings: a send is counted from its final reply, stamped in ended_at (NULL while
-- it is under way; limits.occupying). A send of an older relayd is taken to have ended when
-- it was reserved, as it then counted.
ALTER TABLE send_ledger ADD COLUMN ended_at double precision;
UPDATE send_ledger SET ended_at = sent_at;

-- name: migration_5
-- The status page's history (store/postgres/history.py): one row per minute; every node adds
-- its counts to the minute's row and sets the depth it read.
CREATE TABLE history (
    minute    bigint PRIMARY KEY,
    accepted  bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,
    deferred  bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    pending   bigint NOT NULL DEFAULT 0,
    held      bigint NOT NULL DEFAULT 0
);

-- name: migration_6
-- Node liveness (issue 14): each node's heartbeat, in the server's time so that the nodes'
-- clocks need not agree; the node whose lease a message is under (a lease of a node whose
-- heartbeat lapsed is claimable at once, whatever its lease_until); leadership as rows that
-- lapse unless their holder renews them.
CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    heartbeat_at double precision NOT NULL
);
ALTER TABLE messages ADD COLUMN lease_node text;
CREATE INDEX messages_lease_node ON messages (lease_node) WHERE lease_node IS NOT NULL;
CREATE TABLE leaders (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    until  double precision NOT NULL
);

-- name: notify_work
-- Wakes every node's wait_for_work(); delivered at COMMIT, dropped on ROLLBACK.
SELECT pg_notify(:channel, :payload);

-- name: insert_batch_and_notify
-- enqueue: every message of one group commit (parallel arrays), its body and recipients,
-- and notify_work, in ONE statement: one round trip, and no BEGIN or COMMIT of its own (a
-- statement is its own transaction: all of it commits, or none). A new recipient is
-- queued and due when its message was received.
-- The recipients' foreign key is checked at the end of the statement, when the messages
-- rows of the same statement exist.
WITH new_messages AS (
    INSERT INTO messages (
        id, upstream, mail_from, message_id, received_at, size, mail_options,
        auth_user, client, next_attempt_at
    )
    SELECT id, upstream, mail_from, message_id, received_at, size, mail_options,
           auth_user, client, received_at
    FROM unnest(
        :ids::text[], :upstreams::text[], :mail_froms::text[], :message_ids::text[],
        :received::float8[], :sizes::int8[], :options::jsonb[], :auth_users::text[],
        :clients::text[]
    ) AS t (id, upstream, mail_from, message_id, received_at, size, mail_options,
            auth_user, client)
), new_bodies AS (
    INSERT INTO bodies (queue_id, body)
    SELECT queue_id, body FROM unnest(:ids::text[], :bodies::bytea[]) AS t (queue_id, body)
), new_recipients AS (
    INSERT INTO recipients (
        queue_id, idx, address, state, attempts, next_attempt_at, updated_at, notify, orcpt
    )
    SELECT queue_id, idx, address, 'queued', 0, due, due, notify, orcpt
    FROM unnest(
        :queue_ids::text[], :idxs::int4[], :addresses::text[], :dues::float8[],
        :notifies::text[], :orcpts::text[]
    ) AS t (queue_id, idx, address, due, notify, orcpt)
)
SELECT pg_notify(:channel, :payload);

-- name: lease_due_messages
-- Claim the oldest due messages not under an unexpired lease. SKIP LOCKED: a message another
-- node is claiming or finishing right now is passed over, never waited for, so N nodes lease
-- disjoint sets without blocking each other. Each lease gets a fresh random token.
-- A lease whose node's heartbeat is older than :node_timeout (in the server's time) is
-- passed on as if it had expired: that node is dead, frozen or cut off.
WITH due AS (
    SELECT id
    FROM messages
    WHERE upstream = :upstream
      AND next_attempt_at <= :now
      AND (
          lease_until IS NULL OR lease_until <= :now
          OR lease_node IN (
              SELECT node_id FROM nodes
              WHERE heartbeat_at < extract(epoch FROM clock_timestamp()) - :node_timeout
          )
      )
    ORDER BY next_attempt_at, received_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE messages AS m
SET leased_by = :worker, lease_node = :node, lease_token = gen_random_uuid()::text,
    lease_until = :lease_until
FROM due
WHERE m.id = due.id
RETURNING m.id, m.upstream, m.mail_from, m.message_id, m.received_at, m.size,
          m.mail_options::text, m.lease_token, m.next_attempt_at;

-- name: due_recipients
-- The recipients the new leases cover: pending and due (held ones are never leased), with
-- their RFC 3461 parameters to forward upstream.
SELECT queue_id, address, attempts, notify, orcpt
FROM recipients
WHERE queue_id = ANY(:ids::text[])
  AND state IN ('queued', 'deferred')
  AND next_attempt_at <= :now
ORDER BY queue_id, idx;

-- name: clear_leases
-- Safety net of lease_due: a claimed message without a due recipient is let go at once.
UPDATE messages SET leased_by = NULL, lease_node = NULL, lease_token = NULL, lease_until = NULL
WHERE id = ANY(:ids::text[]);

-- name: lock_lease
-- Fencing: the message's current lease token, row-locked until COMMIT so no other node
-- can lease the message between this check and the writes that follow it.
SELECT lease_token FROM messages WHERE id = :queue_id FOR UPDATE;

-- name: record_recipients
-- One attempt's result for each recipient; final recipients are never rewritten.
UPDATE recipients AS r
SET state = u.state,
    attempts = r.attempts + 1,
    last_reply = u.reply,
    next_attempt_at = u.next_attempt_at,
    wait_reason = u.wait_reason,
    updated_at = :now
FROM unnest(
    :addresses::text[], :states::text[], :replies::text[], :next::float8[], :reasons::text[]
) AS u (address, state, reply, next_attempt_at, wait_reason)
WHERE r.queue_id = :queue_id
  AND r.address = u.address
  AND r.state NOT IN ('delivered', 'failed', 'bounced');

-- name: lock_leases
-- Fencing for a batch of outcomes (postgres/outcomes.py): each message's current lease
-- token, row-locked until COMMIT, in id order so that two batches never wait for each
-- other in a cycle.
SELECT id, lease_token FROM messages WHERE id = ANY(:ids::text[]) ORDER BY id FOR UPDATE;

-- name: record_batch_recipients
-- record_recipients for the outcomes of several messages (one row per recipient).
UPDATE recipients AS r
SET state = u.state,
    attempts = r.attempts + 1,
    last_reply = u.reply,
    next_attempt_at = u.next_attempt_at,
    wait_reason = u.wait_reason,
    updated_at = u.now
FROM unnest(
    :queue_ids::text[], :addresses::text[], :states::text[], :replies::text[],
    :next::float8[], :reasons::text[], :nows::float8[]
) AS u (queue_id, address, state, reply, next_attempt_at, wait_reason, now)
WHERE r.queue_id = u.queue_id
  AND r.address = u.address
  AND r.state NOT IN ('delivered', 'failed', 'bounced');

-- name: end_leases_and_drop_finished_bodies
-- end_lease_and_drop_finished_body for several messages.
WITH ended AS (
    UPDATE messages
    SET leased_by = NULL, lease_node = NULL, lease_token = NULL, lease_until = NULL,
        next_attempt_at = (
            SELECT min(r.next_attempt_at) FROM recipients AS r
            WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
        )
    WHERE id = ANY(:ids::text[])
)
DELETE FROM bodies
WHERE queue_id = ANY(:ids::text[])
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = bodies.queue_id AND r.state NOT IN ('delivered', 'failed', 'bounced')
  );

-- name: delay_recipients
-- release(): wait until at least :not_before for :reason; attempts unchanged. A due time
-- later than :not_before is kept (release only ever delays).
UPDATE recipients
SET next_attempt_at = greatest(coalesce(next_attempt_at, :not_before), :not_before),
    wait_reason = :reason
WHERE queue_id = :queue_id
  AND address = ANY(:addresses::text[])
  AND state IN ('queued', 'deferred');

-- name: end_lease
-- Clear the lease and recompute the message's due time from its pending recipients.
UPDATE messages
SET leased_by = NULL, lease_node = NULL, lease_token = NULL, lease_until = NULL,
    next_attempt_at = (
        SELECT min(r.next_attempt_at) FROM recipients AS r
        WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
    )
WHERE id = :queue_id;

-- name: end_lease_and_drop_finished_body
-- record_outcome's last step in one statement: end_lease, and once every recipient is final
-- the bytes are no longer needed (the row stays as history). Both parts see the recipient
-- updates of the statements before this one in the transaction.
WITH ended AS (
    UPDATE messages
    SET leased_by = NULL, lease_node = NULL, lease_token = NULL, lease_until = NULL,
        next_attempt_at = (
            SELECT min(r.next_attempt_at) FROM recipients AS r
            WHERE r.queue_id = messages.id AND r.state IN ('queued', 'deferred')
        )
    WHERE id = :queue_id
)
DELETE FROM bodies
WHERE queue_id = :queue_id
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = :queue_id AND r.state NOT IN ('delivered', 'failed', 'bounced')
  );

-- name: refresh_message
-- Recompute one message's due time; run after any write that changes its recipients.
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

-- name: select_body
-- One row when the message exists; body NULL once it was dropped.
SELECT b.body FROM messages AS m LEFT JOIN bodies AS b ON b.queue_id = m.id
WHERE m.id = :queue_id;

-- name: work_signal
-- The listener's fallback poll (listen.py): the latest due time of mail due now, and the
-- number of holds. It changes when mail becomes due (an enqueue, a retry, a release) or a
-- hold ends, so a node that missed the NOTIFY saying so still learns it.
SELECT (SELECT max(next_attempt_at) FROM messages
        WHERE next_attempt_at <= extract(epoch FROM now())) AS due,
       (SELECT count(*) FROM upstream_holds) AS holds;

-- name: next_due
-- An unexpired lease counts from its expiry (the worker may still defer the message), or
-- from when its node's heartbeat lapses if that is sooner (in :now's time: the server's
-- clock only measures how long the heartbeat has left).
SELECT min(
    CASE WHEN lease_until > :now THEN greatest(next_attempt_at, least(
        lease_until,
        :now + (
            SELECT greatest(0, n.heartbeat_at + :node_timeout
                               - extract(epoch FROM clock_timestamp()))
            FROM nodes AS n WHERE n.node_id = messages.lease_node
        )
    ))
    ELSE next_attempt_at END
)
FROM messages
WHERE upstream = :upstream AND next_attempt_at IS NOT NULL;

-- name: renew_lease
-- A long send keeps its lease (delivery/renewal.py); no row: it is no longer this one.
UPDATE messages SET lease_until = greatest(lease_until, :lease_until)
WHERE id = :queue_id AND lease_token = :token
RETURNING id;

-- name: node_lock
-- One daemon per node id: a session-level advisory lock on the node's own connection,
-- released by the server when that session ends (the process killed, its host gone).
SELECT pg_try_advisory_lock(hashtextextended('relayd.node/' || current_schema() || '/' || :node, 0));

-- name: node_beat
-- The node is alive, in the server's time.
INSERT INTO nodes (node_id, heartbeat_at) VALUES (:node, extract(epoch FROM clock_timestamp()))
ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

-- name: release_node_leases
-- A node starting under its id ends the leases of the id's earlier run (killed, or its host
-- restarted): their recipients are due again at once, no attempt counted.
UPDATE messages
SET leased_by = NULL, lease_node = NULL, lease_token = NULL, lease_until = NULL
WHERE lease_node = :node AND lease_token IS NOT NULL;

-- name: create_upstream_ledger
INSERT INTO send_locks (upstream) VALUES (:upstream) ON CONFLICT DO NOTHING;

-- name: read_ledger
-- reserve_send, step 1, no lock: forget sends that can never count again, and read the
-- rest with the version they add up to (one snapshot, so the rows are those of that
-- version). No row when the upstream has never reserved.
-- A send under way for longer than open_for counts as ended then (limits.occupying).
WITH pruned AS (
    DELETE FROM send_ledger
    WHERE upstream = :upstream AND coalesce(ended_at, sent_at + :open_for) < :before
)
SELECT l.version, s.sent_at, s.ended_at, s.weight
FROM send_locks AS l
LEFT JOIN send_ledger AS s
    ON s.upstream = l.upstream AND coalesce(s.ended_at, s.sent_at + :open_for) >= :before
WHERE l.upstream = :upstream
ORDER BY s.sent_at;

-- name: insert_ledger_if_unchanged
-- reserve_send, step 2, one statement: take the upstream's row lock, bump its version
-- only if it is still the one step 1 read, and record the send only if it was. The lock
-- lasts this statement, never a client round trip: a node that freezes holds nothing.
-- A concurrent reservation waits for this one, then finds the version moved (READ
-- COMMITTED re-checks the row) and inserts nothing: it reads again.
WITH claimed AS (
    UPDATE send_locks SET version = version + 1
    WHERE upstream = :upstream AND version = :version
    RETURNING upstream
)
INSERT INTO send_ledger (upstream, sent_at, weight)
SELECT upstream, :sent_at, :weight FROM claimed
RETURNING id;

-- name: delete_ledger
DELETE FROM send_ledger WHERE id = :id;

-- name: stamp_ledger
-- A send's end (its final reply). It changes no version: while a send is under way every
-- reader counts it as ending "now", so a reader that missed the stamp only waited longer.
UPDATE send_ledger SET ended_at = :ended_at WHERE id = :id;

-- name: probe_lock
-- The readiness probe (check_writable), first: the locks an enqueue takes (the lock_timeout
-- applies), so a client that holds the queue's tables makes it fail as it makes intake fail.
LOCK TABLE messages, bodies, recipients IN ROW EXCLUSIVE MODE;

-- name: probe_write
-- Then a transaction id: COMMIT writes and flushes its record to the WAL, as an enqueue's
-- does; no table changes.
SELECT txid_current();

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
WHERE (:upstream::text IS NULL OR m.upstream = :upstream)
  AND (
      :state::text IS NULL
      OR EXISTS (SELECT 1 FROM recipients AS r WHERE r.queue_id = m.id AND r.state = :state)
  )
ORDER BY received_at, id
LIMIT :limit;

-- name: show_message
SELECT id, upstream, mail_from, message_id, received_at, size
FROM messages
WHERE id = :queue_id;

-- name: recipients_of
-- Recipients of the messages :ids. A pending recipient due before its upstream's wait ends
-- is held back by that wait, so it shows the upstream's reason; any other shows its own.
SELECT r.queue_id, r.address, r.state, r.attempts, r.next_attempt_at, r.last_reply,
       CASE
           WHEN r.state IN ('queued', 'deferred')
                AND w.reason IS NOT NULL
                AND (w.until IS NULL OR r.next_attempt_at < w.until)
           THEN w.reason
           ELSE r.wait_reason
       END AS wait_reason
FROM recipients AS r
JOIN messages AS m ON m.id = r.queue_id
LEFT JOIN upstream_waits AS w ON w.upstream = m.upstream
WHERE r.queue_id = ANY(:ids::text[])
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
SET next_attempt_at = least(coalesce(next_attempt_at, :now), :now), wait_reason = NULL
WHERE state IN ('queued', 'deferred')
  AND (:queue_id::text IS NULL OR queue_id = :queue_id);

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
-- :before. The freed rows are reclaimed by (auto)vacuum.
DELETE FROM messages
WHERE next_attempt_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = messages.id
        AND (r.state NOT IN ('delivered', 'failed', 'bounced') OR r.updated_at >= :before)
  );

-- name: take_lead
-- Leadership, compare-and-set: the holder renews its row; anyone takes a row that lapsed
-- (its holder renewed nothing for :ttl seconds of the server's time). A row back: we lead.
INSERT INTO leaders (name, holder, until)
VALUES (:name, :holder, extract(epoch FROM clock_timestamp()) + :ttl)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
WHERE leaders.holder = excluded.holder
   OR leaders.until < extract(epoch FROM clock_timestamp())
RETURNING holder;

-- name: leader_of
SELECT holder FROM leaders WHERE name = :name;

-- name: resign
DELETE FROM leaders WHERE name = :name AND holder = :holder;

-- name: current_schema
SELECT current_schema();

-- name: report_message
SELECT id, upstream, mail_from, message_id, received_at, mail_options, delay_warned
FROM messages WHERE id = :queue_id;

-- name: report_recipients
SELECT address, state, last_reply, notify, orcpt
FROM recipients WHERE queue_id = :queue_id ORDER BY idx;

-- name: mark_delay_warned
UPDATE messages SET delay_warned = true WHERE id = :queue_id AND NOT delay_warned;

-- name: message_by_id
SELECT id FROM messages WHERE id = :queue_id;

-- name: message_by_message_id
-- The newest message with this Message-ID (uses messages_message_id).
SELECT id FROM messages WHERE message_id = :message_id ORDER BY received_at DESC LIMIT 1;

-- name: lock_message
SELECT id FROM messages WHERE id = :queue_id FOR UPDATE;

-- name: bounce_recipient
-- A late bounce: the upstream had accepted the recipient; it is final now. Idempotent.
UPDATE recipients
SET state = 'bounced', last_reply = :reply, next_attempt_at = NULL, wait_reason = NULL,
    updated_at = :now
WHERE queue_id = :queue_id AND lower(address) = lower(:address) AND state <> 'bounced';

-- name: drop_finished_body
DELETE FROM bodies
WHERE queue_id = :queue_id
  AND NOT EXISTS (
      SELECT 1 FROM recipients AS r
      WHERE r.queue_id = :queue_id AND r.state NOT IN ('delivered', 'failed', 'bounced')
  );

-- name: select_imap_state
SELECT uidvalidity, last_uid FROM imap_state WHERE account = :account;

-- name: upsert_imap_state
INSERT INTO imap_state (account, uidvalidity, last_uid)
VALUES (:account, :uidvalidity, :last_uid)
ON CONFLICT (account) DO UPDATE
SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid;
