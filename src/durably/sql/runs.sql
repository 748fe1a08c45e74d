-- Inserting runs, reading them, cancelling them: the client's statements.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: enqueue
WITH input AS (
    SELECT * FROM unnest(
        %(task)s::text[], %(queue)s::text[], %(priority)s::integer[], %(args)s::text[],
        %(max_retries)s::integer[], %(max_recoveries)s::integer[], %(delay)s::float8[],
        %(schedule_timeout)s::float8[], %(idempotency_key)s::text[], %(durable)s::boolean[],
        %(trace_context)s::text[], %(concurrency_key)s::text[], %(fairness_key)s::text[],
        %(flow)s::boolean[], %(execution_deadline)s::float8[], %(retention)s::float8[]
    ) WITH ORDINALITY AS t(task, queue, priority, args, max_retries, max_recoveries, delay,
                          schedule_timeout, idempotency_key, durable, trace_context,
                          concurrency_key, fairness_key, flow, execution_deadline, retention,
                          ord)
), inserted AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable,
                               trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline, retention)
    SELECT task, queue, priority, args::jsonb, max_retries, max_recoveries,
           now() + make_interval(secs => delay),
           now() + make_interval(secs => delay + schedule_timeout),
           idempotency_key, durable, trace_context::jsonb, concurrency_key, fairness_key, flow,
           execution_deadline, retention
    FROM input
    ORDER BY ord  -- identities are drawn in this order, so ids ascend in input order
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, task, queue, idempotency_key
)
SELECT id, idempotency_key,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM inserted) q) AS notified,
       task
FROM inserted;

-- name: enqueue_one
-- `enqueue` of a single run with scalar parameters: no arrays to build, send and unnest.
WITH inserted AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable,
                               trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline, retention)
    VALUES (%(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(max_retries)s,
            %(max_recoveries)s, now() + make_interval(secs => %(delay)s::float8),
            now() + make_interval(secs => %(delay)s::float8 + %(schedule_timeout)s::float8),
            %(idempotency_key)s, %(durable)s, %(trace_context)s::jsonb, %(concurrency_key)s,
            %(fairness_key)s, %(flow)s, %(execution_deadline)s::float8, %(retention)s::float8)
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, task, queue, idempotency_key
)
SELECT id, idempotency_key, pg_notify(%(channel)s, 'q:' || queue), task FROM inserted;

-- name: existing_by_key
SELECT idempotency_key, id FROM {schema}.runs
WHERE task = %(task)s AND idempotency_key = ANY(%(keys)s::text[]);

-- name: cancel
-- Cancels a run and every unfinished run below it (its children, theirs, ...).
WITH RECURSIVE tree AS (
    SELECT id FROM {schema}.runs WHERE id = %(id)s
    UNION ALL
    SELECT c.id FROM {schema}.runs c JOIN tree t ON c.parent_id = t.id
), cancelled AS (
    UPDATE {schema}.runs
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    WHERE id IN (SELECT id FROM tree) AND status IN ('QUEUED', 'RUNNING', 'WAITING')
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, 'cancel:' || id), pg_notify(%(channel)s, 'done:' || id)
FROM cancelled
ORDER BY id = %(id)s DESC;

-- name: run_get
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id::text AS worker_id, created_at, started_at,
       finished_at
FROM {schema}.runs WHERE id = %(id)s;

-- name: run_status
SELECT status, result, error, task FROM {schema}.runs WHERE id = %(id)s;

-- name: runs_list
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id::text AS worker_id, created_at, started_at,
       finished_at
FROM {schema}.runs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s;
