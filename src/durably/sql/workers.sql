-- Workers: registration, liveness lock, heartbeat, release on shutdown, LISTEN.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.
-- Notifications (channel durably_<schema>) carry identifiers only: 'q:<queue>' when runs became
-- claimable, 'done:<id>,<id>' when runs ended, 'cancel:<id>' when a run was cancelled, 'ev:<key>'
-- when an event was pushed. Postgres refuses a payload of 8000 bytes or more, so every payload is
-- bounded whatever the number of rows: 'done:' lists at most 300 ids (under 6100 bytes even with
-- 19-digit ids; more ended runs make more notifications), and queue names and event keys are at
-- most 1000 bytes.

-- name: worker_register
-- Also when the worker reconnects: its row then points at the lock it holds now, and it is
-- alive again even if a sweeper marked it dead meanwhile.
INSERT INTO {schema}.workers (id, lock_id, hostname, pid, queues, tasks, slots)
VALUES (%(worker_id)s, %(lock_id)s, %(hostname)s, %(pid)s, %(queues)s, %(tasks)s, %(slots)s)
ON CONFLICT (id) DO UPDATE
SET lock_id = EXCLUDED.lock_id, heartbeat_at = now(), stopped_at = NULL;

-- name: worker_next_lock_id
SELECT nextval('{schema}.worker_lock_ids')::integer;

-- name: worker_lock
SELECT pg_advisory_lock(%(namespace)s, %(lock_id)s);

-- name: worker_stopped
UPDATE {schema}.workers SET stopped_at = now() WHERE id = %(worker_id)s;

-- name: heartbeat
-- Marks the worker alive, extends the leases of the runs it is executing (or has yet to record)
-- and returns those it still holds; a run missing from the answer was taken away (recovered,
-- cancelled) and its execution must be abandoned. Runs it no longer works on are left to expire.
-- It never waits for a row lock, which user code may hold for as long as it likes (the run
-- of a ctx.transaction, see log_hold): a run whose row is locked keeps its lease as it is this
-- time, and is reported held all the same, from the plain read `mine`, which waits for nothing.
-- A ctx.transaction renews its run's lease itself before it commits (log_hold_renew); the
-- sweeper skips locked rows as well, so the run is not recovered meanwhile.
WITH beat AS (
    UPDATE {schema}.workers SET heartbeat_at = now(), stopped_at = NULL WHERE id = %(worker_id)s
), mine AS (
    SELECT id, attempt FROM {schema}.runs
    WHERE worker_id = %(worker_id)s AND status = 'RUNNING' AND id = ANY(%(ids)s::bigint[])
), free AS (
    SELECT r.id FROM {schema}.runs r JOIN mine USING (id)
    WHERE r.worker_id = %(worker_id)s AND r.status = 'RUNNING'
    FOR NO KEY UPDATE OF r SKIP LOCKED
), extended AS (
    UPDATE {schema}.runs r SET lease_expires_at = now() + make_interval(secs => %(lease)s)
    FROM free WHERE r.id = free.id
)
SELECT id, attempt FROM mine;

-- name: release
-- Graceful shutdown: hand unfinished runs back at once, without counting a failure or recovery.
WITH released AS (
    UPDATE {schema}.runs
    SET status = 'QUEUED', worker_id = NULL, lease_expires_at = NULL, run_at = now()
    WHERE worker_id = %(worker_id)s AND status = 'RUNNING' AND id = ANY(%(ids)s::bigint[])
    RETURNING id, queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM released) q) AS notified
FROM released;

-- name: listen
LISTEN {channel};
