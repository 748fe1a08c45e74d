-- Operator views (dashboard and CLI): named statements, like every other file of sql/
-- Read-only statements for people watching runs, workers and queues. Lists are paged by keyset
-- (an id or a sequence number, never OFFSET) and read an index in order, so a page costs about
-- the same with a thousand runs or ten million (migration 0004 adds the indexes they use).
-- A NULL filter means "any". Store runs them unprepared, so each is planned with its actual
-- values: a NULL filter folds away and the planner picks the index of the filters given.
-- Payloads are cut to `preview` characters here, so a page never ships megabytes of JSON.

-- name: ops_limits
-- Run first, in the same transaction, by every operator view: no JIT (these plans are small by
-- design, but the planner can overestimate a capped count enough to spend 400 ms compiling),
-- and a time limit, so that a dashboard can never keep the database busy for long.
SELECT set_config('jit', 'off', true), set_config('statement_timeout', %(timeout)s, true);

-- name: ops_runs_filter
-- The WHERE clause shared by ops_runs_older, ops_runs_newer and ops_runs_count. `statuses` (any
-- of several, for the CLI) is planned like `status`: the planner still picks runs_failed_id for
-- FAILED and CANCELLED. `older_than` is `within` the other way round (database clock).
-- `delayed` is the status filters' DELAYED: QUEUED runs not due yet (run_at after now: delay=,
-- run_at=, a retry's backoff). 'all' when DELAYED is asked for alone (the status filter is then
-- QUEUED): it folds to `run_at > now()`, so the planner estimates it from run_at's statistics
-- and reads a few delayed runs from runs_queued_due (4 ms, not 60 ms, for 200 in 1,000,000).
-- 'queued' when other statuses come with it (the CLI's `--status delayed,failed`): only the
-- QUEUED runs among them must be delayed.
    (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(task)s::text IS NULL OR task = %(task)s)
    AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
    AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
    AND (%(within)s::float8 IS NULL
         OR created_at >= now() - make_interval(secs => %(within)s::float8))
    AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
    AND (%(older_than)s::float8 IS NULL
         OR created_at < now() - make_interval(secs => %(older_than)s::float8))
    AND (%(delayed)s::text IS NULL OR run_at > now()
         OR (%(delayed)s::text = 'queued' AND status <> 'QUEUED'))

-- name: ops_runs_columns
-- The columns of a run in a list. `due_in_s` is set only for a delayed run (QUEUED, not due
-- yet): the seconds until it is due, on the database clock, so no client's clock is trusted.
id, task, queue, status, priority, durable, parent_id, attempt, failures, max_retries,
    recoveries, left(args::text, %(preview)s) AS args_preview, error->>'type' AS error_type,
    left(error->>'message', %(preview)s) AS error_message, created_at, run_at, started_at,
    finished_at,
    EXTRACT(EPOCH FROM COALESCE(finished_at, now())
                       - COALESCE(started_at, created_at))::float8 AS duration_s,
    CASE WHEN status = 'QUEUED' AND run_at > now()
         THEN EXTRACT(EPOCH FROM run_at - now())::float8 END AS due_in_s,
    concurrency_key, fairness_key

-- name: ops_runs_older
-- A page of runs, newest first, older than `before_id` when given (the "next page" keyset).
SELECT {columns} FROM {schema}.runs
WHERE {filter} AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: ops_runs_newer
-- The page just newer than `after_id` (the "previous page" keyset), oldest first: the caller
-- reverses it.
SELECT {columns} FROM {schema}.runs
WHERE {filter} AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s;

-- name: ops_runs_count
-- How many runs match the filters, and the oldest and newest of them: a bulk action (the CLI's
-- `runs cancel` and `runs retry` by filter) says how many it will change, then acts on them oldest
-- first (a parent before its children) from the first id up to the last one only, so runs created
-- after it was confirmed are left alone.
SELECT count(*) AS runs, min(id) AS min_id, max(id) AS max_id FROM {schema}.runs WHERE {filter};

-- name: ops_run
-- One run in full, with the size of its event log, its children and its archived logs, and the
-- database's clock (for ages and the timeline). `due_in_s` as in ops_runs_columns.
SELECT r.id, r.task, r.queue, r.status, r.priority, r.args, r.result, r.error, r.attempt,
       r.failures, r.max_retries, r.recoveries, r.max_recoveries, r.idempotency_key, r.durable,
       r.parent_id, r.parent_seq, r.worker_id::text AS worker_id, r.created_at, r.run_at,
       r.started_at, r.finished_at, r.lease_expires_at, r.schedule_deadline, r.wake_at,
       r.wait_children, r.wait_event, r.log_epoch, r.concurrency_key, r.fairness_key,
       CASE WHEN r.status = 'QUEUED' AND r.run_at > now()
            THEN EXTRACT(EPOCH FROM r.run_at - now())::float8 END AS due_in_s,
       (SELECT count(*) FROM {schema}.event_log l WHERE l.run_id = r.id) AS events,
       (SELECT count(*) FROM {schema}.runs c WHERE c.parent_id = r.id) AS children,
       (SELECT count(*) FROM {schema}.event_log_archive a WHERE a.run_id = r.id) AS archived_events,
       now() AS db_now
FROM {schema}.runs r
WHERE r.id = %(id)s;

-- name: ops_events
-- A page of a run's event log from sequence number `from_seq`, each child entry with the
-- child's current status.
SELECT l.seq, l.kind, l.name, l.key,
       left(l.input::text, %(preview)s) AS input_preview, length(l.input::text) AS input_size,
       left(l.result::text, %(preview)s) AS result_preview, length(l.result::text) AS result_size,
       l.error->>'type' AS error_type, left(l.error->>'message', %(preview)s) AS error_message,
       l.child_id, c.status AS child_status, l.event_id, l.wake_at, l.done, l.attempt,
       l.created_at, l.completed_at
FROM {schema}.event_log l
LEFT JOIN {schema}.runs c ON c.id = l.child_id
WHERE l.run_id = %(run_id)s AND l.seq >= %(from_seq)s
ORDER BY l.seq
LIMIT %(limit)s;

-- name: ops_event
-- One entry of a run's event log in full.
SELECT seq, kind, name, key, input, result, error, child_id, event_id, wake_at, done, attempt,
       created_at, completed_at
FROM {schema}.event_log
WHERE run_id = %(run_id)s AND seq = %(seq)s;

-- name: ops_children
-- A page of a run's children, oldest first, after `after_id`.
SELECT id, task, queue, status, parent_seq, attempt, created_at, finished_at,
       error->>'type' AS error_type
FROM {schema}.runs
WHERE parent_id = %(id)s AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s;

-- name: ops_task_names
-- Distinct task names, read as a loose index scan (one index probe per name) rather than a
-- scan of every run.
WITH RECURSIVE t(task) AS (
    (SELECT task FROM {schema}.runs ORDER BY task LIMIT 1)
    UNION ALL
    SELECT (SELECT r.task FROM {schema}.runs r WHERE r.task > t.task ORDER BY r.task LIMIT 1)
    FROM t WHERE t.task IS NOT NULL
)
SELECT task FROM t WHERE task IS NOT NULL LIMIT %(limit)s;

-- name: ops_workers
-- Workers, live ones first, with their heartbeat's age (database clock) and the runs they hold.
SELECT w.id::text AS id, w.hostname, w.pid, w.queues, w.tasks, w.slots, w.started_at,
       w.heartbeat_at, w.stopped_at, w.stopped_at IS NULL AS alive,
       EXTRACT(EPOCH FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_s,
       (SELECT count(*) FROM {schema}.runs r
        WHERE r.worker_id = w.id AND r.status = 'RUNNING' AND NOT r.durable) AS running,
       (SELECT count(*) FROM {schema}.runs r
        WHERE r.worker_id = w.id AND r.status = 'RUNNING' AND r.durable) AS running_durable
FROM {schema}.workers w
ORDER BY w.stopped_at IS NULL DESC, w.heartbeat_at DESC
LIMIT %(limit)s;

-- name: ops_queues
-- Per queue with work (queued runs, found by a loose scan of the queued-runs index, or running
-- ones), served by a worker (alive or not: workers rows are few), or with runs ended in the
-- last `window` seconds. No full index on queue is kept for this page: it would cost every
-- run three index entries. For each: unfinished runs by status,
-- the age of the oldest due queued run, queued runs whose task no live worker serves, and the
-- runs that ended in the window. Each count stops at `cap` (shown as "cap+"), so a backlog of
-- millions costs the same as one of `cap`; the oldest age is exact (an index lookup).
WITH RECURSIVE queued(queue) AS (
    (SELECT queue FROM {schema}.runs WHERE status = 'QUEUED' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT r.queue FROM {schema}.runs r
            WHERE r.status = 'QUEUED' AND r.queue > q.queue ORDER BY r.queue LIMIT 1)
    FROM queued q WHERE q.queue IS NOT NULL
), recent AS (
    SELECT queue,
           count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE status = 'FAILED') AS failed
    FROM {schema}.runs
    WHERE finished_at >= now() - make_interval(secs => %(window)s::float8)
    GROUP BY queue
), queues(queue) AS (
    SELECT queue FROM queued
    UNION SELECT queue FROM {schema}.runs WHERE status = 'RUNNING'
    UNION SELECT unnest(queues) FROM {schema}.workers
    UNION SELECT queue FROM recent
)
SELECT q.queue,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.runs r
                              WHERE r.status = 'QUEUED' AND r.queue = q.queue AND r.run_at <= now()
                              LIMIT %(cap)s) s) AS queued,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.runs r
                              WHERE r.status = 'QUEUED' AND r.queue = q.queue AND r.run_at > now()
                              LIMIT %(cap)s) s) AS delayed,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.runs r
                              WHERE r.status = 'RUNNING' AND r.queue = q.queue
                              LIMIT %(cap)s) s) AS running,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.runs r
                              WHERE r.status = 'WAITING' AND r.queue = q.queue
                              LIMIT %(cap)s) s) AS waiting,
       (SELECT EXTRACT(EPOCH FROM now() - min(r.run_at))::float8 FROM {schema}.runs r
        WHERE r.status = 'QUEUED' AND r.queue = q.queue AND r.run_at <= now()) AS oldest_queued_s,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.runs r
                              WHERE r.status = 'QUEUED' AND r.queue = q.queue
                                AND NOT EXISTS (SELECT 1 FROM {schema}.workers w
                                                WHERE w.stopped_at IS NULL
                                                  AND r.task = ANY(w.tasks)
                                                  AND r.queue = ANY(w.queues))
                              LIMIT %(cap)s) s) AS no_worker,
       COALESCE(recent.completed, 0) AS completed,
       COALESCE(recent.failed, 0) AS failed
FROM queues q
LEFT JOIN recent ON recent.queue = q.queue
WHERE q.queue IS NOT NULL
ORDER BY q.queue
LIMIT %(limit)s;

-- name: ops_throughput
-- Runs that ended COMPLETED or FAILED in each of the last `minutes` minutes (the current one
-- last), by the minute they finished; minutes without any are there with zeros.
WITH bounds AS (
    SELECT date_trunc('minute', now()) AS last,
           date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1) AS first
), counts AS (
    SELECT date_trunc('minute', r.finished_at) AS minute,
           count(*) FILTER (WHERE r.status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE r.status = 'FAILED') AS failed
    FROM {schema}.runs r, bounds b
    WHERE r.finished_at >= b.first
      AND (%(queue)s::text IS NULL OR r.queue = %(queue)s)
    GROUP BY 1
)
SELECT m.minute, COALESCE(c.completed, 0) AS completed, COALESCE(c.failed, 0) AS failed
FROM bounds b
CROSS JOIN LATERAL generate_series(b.first, b.last, interval '1 minute') AS m(minute)
LEFT JOIN counts c ON c.minute = m.minute
ORDER BY m.minute;
