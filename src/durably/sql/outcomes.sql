-- Recording attempts' outcomes, fenced by (attempt, worker).
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: finish
-- Outcomes: 'ok' completes, 'retry' re-queues after `delay` seconds, 'fail' fails for good,
-- 'release' hands back an attempt that lost the database mid-way: like a recovery, it counts
-- against max_recoveries (not the retry budget) and waits longer each time (0.25 s doubling,
-- up to 30 s), so a database that stays away does not spin the run.
-- Fenced: only the attempt this worker holds, still RUNNING, is written.
WITH outcome AS (
    SELECT o.*, o.outcome = 'retry'
                OR (o.outcome = 'release' AND r.recoveries < r.max_recoveries) AS again
    FROM ({outcomes}) o JOIN {schema}.runs r ON r.id = o.id
), written AS (
    UPDATE {schema}.runs r
    SET status = CASE WHEN o.outcome = 'ok' THEN 'COMPLETED' WHEN o.again THEN 'QUEUED'
                      ELSE 'FAILED' END,
        result = CASE WHEN o.outcome = 'ok' THEN o.result::jsonb END,
        error = o.error::jsonb,
        failures = r.failures + (o.outcome IN ('retry', 'fail'))::integer,
        recoveries = r.recoveries + (o.outcome = 'release')::integer,
        run_at = CASE WHEN o.outcome = 'retry' THEN now() + make_interval(secs => o.delay)
                      WHEN o.again THEN now() + make_interval(secs => least(30, 0.25 * 2 ^ r.recoveries))
                      ELSE r.run_at END,
        worker_id = NULL,
        lease_expires_at = NULL,
        finished_at = CASE WHEN o.again THEN NULL ELSE now() END
    FROM outcome o
    WHERE r.id = o.id AND r.attempt = o.attempt
      AND r.worker_id = %(worker_id)s AND r.status = 'RUNNING'
    RETURNING r.id, r.status, r.queue, r.parent_id
), parents AS (
    -- Parents suspended on these children wake once every child they wait for has ended.
    UPDATE {schema}.runs p
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM written w
    WHERE p.id = w.parent_id AND w.status <> 'QUEUED' AND p.status = 'WAITING'
      AND w.id = ANY(p.wait_children)
      AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                      WHERE c.id = ANY(p.wait_children)
                        AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
                        AND c.id NOT IN (SELECT id FROM written WHERE status <> 'QUEUED'))
    RETURNING p.id, p.queue
)
SELECT id, status,
       (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
          FROM (SELECT string_agg(e.id::text, ',') AS ids
                FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM written
                      WHERE status <> 'QUEUED') e
                GROUP BY e.n / 300) d) AS notified,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM parents) q) AS woken
FROM written;

-- name: finish_outcomes_many
-- The `outcome` part of `finish` for a batch: arrays, unnested.
SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::integer[], %(outcomes)s::text[], %(results)s::text[],
        %(errors)s::text[], %(delays)s::float8[]
    ) AS t(id, attempt, outcome, result, error, delay)

-- name: finish_outcomes_one
-- The `outcome` part of `finish` for one outcome, the common case when runs end one at a time:
-- scalar parameters, so its plan is cached and finds the run by primary key.
SELECT %(id)s::bigint AS id, %(attempt)s::integer AS attempt, %(outcome)s::text AS outcome,
           %(result)s::text AS result, %(error)s::text AS error, %(delay)s::float8 AS delay
