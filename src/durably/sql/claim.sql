-- The claim: due runs handed to a worker's free slots (FOR UPDATE SKIP LOCKED).
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: claim
-- Also wakes WAITING runs of these tasks whose timer is due, the 1000 most overdue per claim
-- (20,000 timers due at once are woken over 20 claims, each short), skipping rows another
-- statement holds (a cancel, the sweeper) instead of waiting for them; they come back as marker
-- rows (task NULL) and are claimed by the next claim. The record placeholder after `claimed` is
-- empty, or under flow control `claim_record_flow`. Times are the statement's: under flow control
-- the claim runs in a transaction that first waits for its turn, so `now()` (when that
-- transaction began) could date a start before an earlier claim's; rate windows need them in order.
WITH due_timers AS (
    SELECT id FROM {schema}.runs
    WHERE status = 'WAITING' AND wake_at <= statement_timestamp()
      AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])
    ORDER BY wake_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), woken AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = statement_timestamp(), wake_at = NULL, wait_children = NULL,
        wait_event = NULL
    FROM due_timers d WHERE r.id = d.id
    RETURNING r.id
), picked AS (
    {pick}
), claimed AS (
    UPDATE {schema}.runs r
    SET status = 'RUNNING',
        worker_id = %(worker_id)s,
        attempt = r.attempt + 1,
        lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s),
        started_at = statement_timestamp(),
        -- The run deadline starts at the first start and is kept by every later one (NULL
        -- stays NULL: make_interval of NULL is NULL).
        deadline_at = coalesce(r.deadline_at,
                               statement_timestamp() + make_interval(secs => r.execution_deadline))
    FROM picked
    WHERE r.id = picked.id
    RETURNING r.id, r.task, r.args, r.attempt, r.failures, r.max_retries, r.durable,
              r.trace_context, r.queue, r.concurrency_key, r.fairness_key,
              EXTRACT(EPOCH FROM r.deadline_at - statement_timestamp())::float8 AS deadline_in
){record}
SELECT c.id, c.task, c.args, c.attempt, c.failures, c.max_retries,
       c.durable AND EXISTS (SELECT 1 FROM {schema}.event_log l WHERE l.run_id = c.id),
       c.trace_context, c.deadline_in
FROM claimed c
UNION ALL
SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM woken;

-- name: claim_pick_one_queue
-- The `picked` part of `claim` for a worker serving one queue: one ordered index scan.
SELECT id FROM {schema}.runs
    WHERE status = 'QUEUED'
      AND queue = (%(queues)s::text[])[1]
      AND durable = %(durable)s
      AND task = ANY(%(tasks)s::text[])
      AND run_at <= now()
      AND (schedule_deadline IS NULL OR schedule_deadline > now())
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED

-- name: claim_pick_queues
-- The `picked` part of `claim` for several queues: one ordered, limited index scan per queue
-- (with `queue = ANY(...)` Postgres would read and sort every due queued run on every claim).
-- Also the free half of `claim_pick_controlled`.
SELECT c.id, c.priority FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority FROM {schema}.runs
        WHERE status = 'QUEUED'
          AND queue = q.name
          AND durable = %(durable)s
          AND task = ANY(%(tasks)s::text[])
          AND run_at <= now()
          AND (schedule_deadline IS NULL OR schedule_deadline > now())
        ORDER BY priority DESC, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.priority DESC, c.id
    LIMIT %(limit)s

-- name: next_due
-- Seconds until the next delayed run, durable timer or rate-limit window end of these queues
-- and tasks (runs already due but held back by a limit wait for a run to end, or for this).
SELECT EXTRACT(EPOCH FROM LEAST(
    (SELECT min(run_at) FROM {schema}.runs
     WHERE status = 'QUEUED' AND run_at > now()
       AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])),
    (SELECT min(wake_at) FROM {schema}.runs
     WHERE status = 'WAITING' AND wake_at IS NOT NULL
       AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])),
    (SELECT min(expires_at) FROM {schema}.rate_starts WHERE expires_at > now())
) - now())::float8;
