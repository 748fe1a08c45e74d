-- Every statement durably runs, by name. `{schema}` is replaced by the quoted schema name;
-- values are always bound parameters. Notifications carry identifiers only: 'q:<queue>' when
-- runs became claimable, 'done:<id>,<id>' when runs ended, 'cancel:<id>' when a run was cancelled.

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: migrations_record_literal
-- The same record with literal values, for `durably db sql` to print.
INSERT INTO {schema}.migrations (version, name) VALUES ({version}, '{name}');

-- name: migrations_bootstrap
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM {schema}.migrations ORDER BY version;

-- name: migrations_record
INSERT INTO {schema}.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: migrations_lock
SELECT pg_advisory_xact_lock(%(namespace)s, -1);

-- name: schema_exists
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: enqueue
WITH input AS (
    SELECT * FROM unnest(
        %(task)s::text[], %(queue)s::text[], %(priority)s::integer[], %(args)s::text[],
        %(max_retries)s::integer[], %(max_recoveries)s::integer[], %(delay)s::float8[],
        %(schedule_timeout)s::float8[], %(idempotency_key)s::text[]
    ) WITH ORDINALITY AS t(task, queue, priority, args, max_retries, max_recoveries, delay,
                          schedule_timeout, idempotency_key, ord)
), inserted AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key)
    SELECT task, queue, priority, args::jsonb, max_retries, max_recoveries,
           now() + make_interval(secs => delay),
           now() + make_interval(secs => delay + schedule_timeout),
           idempotency_key
    FROM input
    ORDER BY ord  -- identities are drawn in this order, so ids ascend in input order
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue, idempotency_key
)
SELECT id, idempotency_key,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM inserted) q) AS notified
FROM inserted;

-- name: existing_by_key
SELECT idempotency_key, id FROM {schema}.runs
WHERE task = %(task)s AND idempotency_key = ANY(%(keys)s::text[]);

-- name: claim
WITH picked AS (
    SELECT id FROM {schema}.runs
    WHERE status = 'QUEUED'
      AND queue = ANY(%(queues)s::text[])
      AND task = ANY(%(tasks)s::text[])
      AND run_at <= now()
      AND (schedule_deadline IS NULL OR schedule_deadline > now())
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.runs r
SET status = 'RUNNING',
    worker_id = %(worker_id)s,
    attempt = r.attempt + 1,
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    started_at = now()
FROM picked
WHERE r.id = picked.id
RETURNING r.id, r.task, r.args, r.attempt, r.failures, r.max_retries;

-- name: next_due
SELECT EXTRACT(EPOCH FROM min(run_at) - now())::float8 FROM {schema}.runs
WHERE status = 'QUEUED' AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[]);

-- name: finish
-- Outcomes: 'ok' completes, 'retry' re-queues after `delay` seconds, 'fail' fails for good.
-- Fenced: only the attempt this worker holds, still RUNNING, is written.
WITH outcome AS (
    SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::integer[], %(outcomes)s::text[], %(results)s::text[],
        %(errors)s::text[], %(delays)s::float8[]
    ) AS t(id, attempt, outcome, result, error, delay)
), written AS (
    UPDATE {schema}.runs r
    SET status = CASE o.outcome WHEN 'ok' THEN 'COMPLETED' WHEN 'retry' THEN 'QUEUED' ELSE 'FAILED' END,
        result = CASE WHEN o.outcome = 'ok' THEN o.result::jsonb END,
        error = o.error::jsonb,
        failures = r.failures + (o.outcome <> 'ok')::integer,
        run_at = CASE WHEN o.outcome = 'retry' THEN now() + make_interval(secs => o.delay) ELSE r.run_at END,
        worker_id = NULL,
        lease_expires_at = NULL,
        finished_at = CASE WHEN o.outcome = 'retry' THEN NULL ELSE now() END
    FROM outcome o
    WHERE r.id = o.id AND r.attempt = o.attempt
      AND r.worker_id = %(worker_id)s AND r.status = 'RUNNING'
    RETURNING r.id, r.status, r.queue
)
SELECT id, status,
       (SELECT count(pg_notify(%(channel)s, 'done:' || ids))
          FROM (SELECT string_agg(id::text, ',') AS ids FROM written
                WHERE status <> 'QUEUED' HAVING count(*) > 0) d) AS notified
FROM written;

-- name: worker_register
INSERT INTO {schema}.workers (id, lock_id, hostname, pid, queues, tasks, slots)
VALUES (%(worker_id)s, %(lock_id)s, %(hostname)s, %(pid)s, %(queues)s, %(tasks)s, %(slots)s);

-- name: worker_next_lock_id
SELECT nextval('{schema}.worker_lock_ids')::integer;

-- name: worker_lock
SELECT pg_advisory_lock(%(namespace)s, %(lock_id)s);

-- name: worker_stopped
UPDATE {schema}.workers SET stopped_at = now() WHERE id = %(worker_id)s;

-- name: heartbeat
-- Extends the leases of the runs this worker is executing (or has yet to record) and returns
-- those it still holds; a run missing from the answer was taken away (recovered, cancelled) and
-- its execution must be abandoned. Runs it no longer works on are left to expire.
WITH beat AS (
    UPDATE {schema}.workers SET heartbeat_at = now(), stopped_at = NULL WHERE id = %(worker_id)s
)
UPDATE {schema}.runs SET lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE worker_id = %(worker_id)s AND status = 'RUNNING' AND id = ANY(%(ids)s::bigint[])
RETURNING id, attempt;

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
-- Runs whose lease expired or whose worker died go back to the queue with a new attempt
-- (the claim bumps it), up to max_recoveries; recovery does not consume the retry budget.
WITH orphan AS (
    SELECT r.id FROM {schema}.runs r
    WHERE r.status = 'RUNNING'
      AND (r.lease_expires_at < now()
           OR NOT EXISTS (SELECT 1 FROM {schema}.workers w
                          WHERE w.id = r.worker_id AND w.stopped_at IS NULL))
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
       (SELECT count(pg_notify(%(channel)s, 'done:' || ids))
          FROM (SELECT string_agg(id::text, ',') AS ids FROM recovered
                WHERE status = 'FAILED' HAVING count(*) > 0) d)
FROM recovered;

-- name: sweep_schedule_timeouts
WITH expired AS (
    UPDATE {schema}.runs
    SET status = 'FAILED', finished_at = now(),
        error = jsonb_build_object(
            'type', 'ScheduleTimeout',
            'message', 'no worker picked the run up before its schedule timeout',
            'traceback', NULL)
    WHERE status = 'QUEUED' AND schedule_deadline < now()
    RETURNING id
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'done:' || ids))
              FROM (SELECT string_agg(id::text, ',') AS ids FROM expired HAVING count(*) > 0) d)
FROM expired;

-- name: cancel
WITH cancelled AS (
    UPDATE {schema}.runs
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    WHERE id = %(id)s AND status IN ('QUEUED', 'RUNNING', 'WAITING')
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, 'cancel:' || id), pg_notify(%(channel)s, 'done:' || id)
FROM cancelled;

-- name: run_get
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id, created_at, started_at, finished_at
FROM {schema}.runs WHERE id = %(id)s;

-- name: run_status
SELECT status, result, error, task FROM {schema}.runs WHERE id = %(id)s;

-- name: runs_list
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id, created_at, started_at, finished_at
FROM {schema}.runs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: workers_list
SELECT w.id, w.hostname, w.pid, w.queues, w.tasks, w.slots, w.started_at, w.heartbeat_at,
       w.stopped_at,
       (SELECT count(*) FROM {schema}.runs r WHERE r.worker_id = w.id AND r.status = 'RUNNING')
FROM {schema}.workers w
ORDER BY w.started_at DESC
LIMIT %(limit)s;

-- name: queues_list
-- Depth by status per queue, the age of the oldest due queued run, and queued runs whose task
-- no live worker knows (they wait for a worker that does).
SELECT r.queue,
       count(*) FILTER (WHERE r.status = 'QUEUED'),
       count(*) FILTER (WHERE r.status = 'RUNNING'),
       count(*) FILTER (WHERE r.status = 'WAITING'),
       EXTRACT(EPOCH FROM now() - min(r.run_at) FILTER (WHERE r.status = 'QUEUED' AND r.run_at <= now()))::float8,
       count(*) FILTER (WHERE r.status = 'QUEUED' AND NOT EXISTS (
           SELECT 1 FROM {schema}.workers w
           WHERE w.stopped_at IS NULL AND r.task = ANY(w.tasks) AND r.queue = ANY(w.queues)))
FROM {schema}.runs r
WHERE r.status IN ('QUEUED', 'RUNNING', 'WAITING')
GROUP BY r.queue
ORDER BY r.queue;

-- name: listen
LISTEN {channel};
