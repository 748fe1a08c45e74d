-- The sweeper's parts, each bounded to a batch of rows per statement.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: sweep_lock
SELECT pg_try_advisory_xact_lock(%(namespace)s, 0);

-- name: sweep_dead_workers
-- A worker is dead when its heartbeat is stale or when its session no longer holds its lock.
UPDATE {schema}.workers w SET stopped_at = now()
WHERE stopped_at IS NULL
  AND (heartbeat_at < now() - make_interval(secs => %(dead_after)s)
       OR NOT EXISTS (
           SELECT 1 FROM pg_locks l
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = %(namespace)s::oid AND l.objid = w.lock_id::oid))
RETURNING id;

-- name: sweep_orphans
-- Runs whose lease expired or whose worker is gone go back to the queue with a new attempt
-- (the claim bumps it), up to max_recoveries; recovery does not consume the retry budget.
-- A worker is gone when it is marked stopped and its session no longer holds its lock (killed,
-- disconnected). One marked stopped for a stale heartbeat but still holding its lock is alive
-- and connected, only slow (its event loop blocked by a task, the process paused): its runs are
-- recovered when their leases expire, never before, so no run executes twice while its lease is
-- valid. At most `limit` runs per statement: the sweeper repeats it while batches come back full.
WITH live_locks AS MATERIALIZED (
    SELECT l.objid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %(namespace)s::oid
), orphan AS (
    SELECT r.id FROM {schema}.runs r
    WHERE r.status = 'RUNNING'
      AND (r.lease_expires_at < now()
           OR NOT EXISTS (SELECT 1 FROM {schema}.workers w
                          WHERE w.id = r.worker_id
                            AND (w.stopped_at IS NULL
                                 OR w.lock_id::oid IN (SELECT objid FROM live_locks))))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), recovered AS (
    UPDATE {schema}.runs r
    SET status = CASE WHEN r.recoveries < r.max_recoveries THEN 'QUEUED' ELSE 'FAILED' END,
        recoveries = r.recoveries + 1,
        error = CASE WHEN r.recoveries < r.max_recoveries THEN r.error ELSE jsonb_build_object(
            'type', 'WorkerLost',
            'message', format('the run lost its worker %%s times (max_recoveries); it may be killing its worker', r.recoveries + 1),
            'traceback', NULL) END,
        finished_at = CASE WHEN r.recoveries < r.max_recoveries THEN NULL ELSE now() END,
        worker_id = NULL,
        lease_expires_at = NULL,
        run_at = now()
    FROM orphan o WHERE r.id = o.id
    RETURNING r.id, r.status, r.queue
)
SELECT id, status,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM recovered WHERE status = 'QUEUED') q),
       (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
          FROM (SELECT string_agg(f.id::text, ',') AS ids
                FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM recovered
                      WHERE status = 'FAILED') f
                GROUP BY f.n / 300) d)
FROM recovered;

-- name: sweep_rate_starts
-- Rate-limit starts whose window ended no longer count; `limit` rows at a time. Rows are never
-- updated, so their ctid is stable until deleted.
DELETE FROM {schema}.rate_starts
WHERE ctid = ANY(ARRAY(SELECT ctid FROM {schema}.rate_starts WHERE expires_at <= now()
                       LIMIT %(limit)s));

-- name: sweep_fair_turns
-- Fairness keys not served for a day are forgotten (one served again is simply served first
-- once); `limit` rows at a time.
DELETE FROM {schema}.fair_turns t
USING (SELECT task, key FROM {schema}.fair_turns
       WHERE served_at < now() - interval '1 day' LIMIT %(limit)s) old
WHERE t.task = old.task AND t.key = old.key AND t.served_at < now() - interval '1 day';

-- name: sweep_schedule_timeouts
-- Queued runs past their schedule deadline fail; at most `limit` per statement, and rows a
-- claim holds are skipped (the claim takes them or the next sweep fails them).
WITH due AS (
    SELECT id FROM {schema}.runs
    WHERE status = 'QUEUED' AND schedule_deadline < now()
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE {schema}.runs r
    SET status = 'FAILED', finished_at = now(),
        error = jsonb_build_object(
            'type', 'ScheduleTimeout',
            'message', 'no worker picked the run up before its schedule timeout',
            'traceback', NULL)
    FROM due WHERE r.id = due.id
    RETURNING r.id
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
              FROM (SELECT string_agg(e.id::text, ',') AS ids
                    FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM expired) e
                    GROUP BY e.n / 300) d)
FROM expired;

-- name: deadline_fail
-- Fails runs past their run deadline (docs/durable-tasks.md) for good, cancels their unfinished
-- descendants (as cancelling the run would), and wakes the parents waiting on them. The `due`
-- placeholder picks the runs: `deadline_due` for the sweeper (queued and suspended runs, read
-- from the runs_deadline index, so the cost follows the runs due, at most 1000 a sweep), or
-- `deadline_held` for the worker whose attempt reached the deadline (fenced). Ended runs are
-- notified in 'done:' lists of at most 200 ids, well under pg_notify's 8000-byte payload.
WITH RECURSIVE due AS (
    {due}
), failed AS (
    UPDATE {schema}.runs r
    SET status = 'FAILED', finished_at = now(), worker_id = NULL, lease_expires_at = NULL,
        wake_at = NULL, wait_children = NULL, wait_event = NULL,
        error = jsonb_build_object(
            'type', 'DeadlineExceeded',
            'message', format('the run did not finish within its execution deadline of %%s s from its first start (it was %%s); retry it for a fresh deadline, or give it a longer execution_deadline', r.execution_deadline, r.status),
            'traceback', NULL)
    FROM due WHERE r.id = due.id
    RETURNING r.id, r.parent_id
), tree AS (
    SELECT c.id, c.status FROM {schema}.runs c JOIN failed f ON c.parent_id = f.id
    UNION ALL
    SELECT c.id, c.status FROM {schema}.runs c JOIN tree t ON c.parent_id = t.id
), cancelled AS (
    UPDATE {schema}.runs c
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    FROM tree
    WHERE c.id = tree.id AND c.status IN ('QUEUED', 'RUNNING', 'WAITING')
      AND c.id NOT IN (SELECT id FROM due)
    RETURNING c.id, tree.status AS was
), parents AS (
    UPDATE {schema}.runs p
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM failed f
    WHERE p.id = f.parent_id AND p.status = 'WAITING' AND f.id = ANY(p.wait_children)
      AND p.id NOT IN (SELECT id FROM due) AND p.id NOT IN (SELECT id FROM tree)
      AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                      WHERE c.id = ANY(p.wait_children)
                        AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
                        AND c.id NOT IN (SELECT id FROM failed))
    RETURNING p.id, p.queue
), ended AS (
    SELECT id, (row_number() OVER (ORDER BY id) - 1) / 200 AS chunk
    FROM (SELECT id FROM failed UNION ALL SELECT id FROM cancelled) e
)
SELECT (SELECT count(*) FROM failed),
       (SELECT count(pg_notify(%(channel)s, 'cancel:' || id)) FROM cancelled
        WHERE was = 'RUNNING'),
       (SELECT count(pg_notify(%(channel)s, 'done:' || ids))
          FROM (SELECT string_agg(id::text, ',') AS ids FROM ended GROUP BY chunk) d),
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM parents) q);

-- name: deadline_due
-- The `due` part of `deadline_fail` for the sweeper. A RUNNING run is left to its worker, whose
-- attempt times out at the deadline; should the worker die, recovery queues the run, and the
-- same sweep then finds it here.
SELECT id FROM {schema}.runs
WHERE deadline_at < now() AND deadline_at IS NOT NULL AND status IN ('QUEUED', 'WAITING')
ORDER BY deadline_at
LIMIT 1000
FOR UPDATE SKIP LOCKED

-- name: deadline_held
-- The `due` part of `deadline_fail` for a worker whose attempt reached the run's deadline:
-- only the attempt it still holds.
SELECT id FROM {schema}.runs
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
FOR UPDATE

-- name: sweep_wake_ready
-- Backstop for wake-ups that raced with a suspension: WAITING runs whose children all ended
-- (as `finish` wakes them) or whose event arrived go back to the queue, at most `limit` per statement. (Timers are woken by the
-- claim itself.) Events are read from the run's creation on (events_key_created), so a key's
-- history costs nothing; the inner LIMIT keeps that ordered index scan (under a bare EXISTS the
-- planner may pick a sequential scan of all events, thinking the first row comes early).
WITH ready AS (
    SELECT r.id FROM {schema}.runs r
    WHERE r.status = 'WAITING'
      AND (r.wait_children IS NOT NULL OR r.wait_event IS NOT NULL)
      AND ((cardinality(r.wait_children) > 0
            AND NOT EXISTS (SELECT 1 FROM {schema}.runs c WHERE c.id = ANY(r.wait_children)
                            AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')))
           OR (r.wait_event IS NOT NULL AND EXISTS (SELECT 1 FROM (
               SELECT e.id FROM {schema}.events e
               WHERE e.key = r.wait_event AND e.created_at >= r.created_at
                 AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                                 WHERE l.run_id = r.id AND l.event_id = e.id)
               ORDER BY e.created_at, e.id
               LIMIT 1) first_event)))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), woken AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM ready WHERE r.id = ready.id
    RETURNING r.id, r.queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM woken) q)
FROM woken;
