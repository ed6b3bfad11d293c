-- The status page's reads and its history (store/postgres/history.py), apart from the queue's
-- own queries in postgres.sql. Every value is a bound parameter.

-- name: add_minute
-- Counts add up (several writers may sample the same minute); the depth is the last one read.
INSERT INTO history (minute, accepted, delivered, deferred, failed, pending, held)
VALUES (:minute, :accepted, :delivered, :deferred, :failed, :pending, :held)
ON CONFLICT (minute) DO UPDATE SET
    accepted = history.accepted + excluded.accepted,
    delivered = history.delivered + excluded.delivered,
    deferred = history.deferred + excluded.deferred,
    failed = history.failed + excluded.failed,
    pending = excluded.pending,
    held = excluded.held;

-- name: prune_minutes
DELETE FROM history WHERE minute < :keep_since;

-- name: minutes
SELECT minute, accepted, delivered, deferred, failed, pending, held
FROM history WHERE minute >= :since ORDER BY minute;

-- name: ledger_sends
-- The reservations that may still count after :since: ended since, or still under way.
SELECT sent_at, ended_at, weight FROM send_ledger
WHERE upstream = :upstream AND (ended_at IS NULL OR ended_at > :since) ORDER BY sent_at;

-- name: recent_problems
-- The messages with failed or bounced recipients, by the latest such change, newest first.
SELECT queue_id, max(updated_at) AS at FROM recipients
WHERE state IN ('failed', 'bounced')
GROUP BY queue_id ORDER BY at DESC, queue_id LIMIT :limit;

-- name: counts_by_upstream
-- Recipients per upstream and state, for the status page's per-upstream queue counts.
SELECT m.upstream, r.state, count(*) AS n
FROM recipients AS r JOIN messages AS m ON m.id = r.queue_id
GROUP BY m.upstream, r.state;
