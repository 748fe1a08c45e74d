-- The event log of durable runs: appends, children, events, transactions, suspension.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: log_load
-- The whole event log of a run in one query, with the state of each child it spawned and, for
-- timers, the seconds left (database clock).
SELECT l.seq, l.kind, l.name, l.key, l.input, l.result, l.error, l.child_id, l.event_id,
       EXTRACT(EPOCH FROM l.wake_at - now())::float8, l.done, c.status, c.result, c.error
FROM {schema}.event_log l
LEFT JOIN {schema}.runs c ON c.id = l.child_id
WHERE l.run_id = %(run_id)s
ORDER BY l.seq;

-- name: log_append
-- Appends one entry, fenced: the run row is locked (FOR SHARE) only if this worker still holds
-- this attempt, so a recovery cannot slip in between the check and the insert.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
)
INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, result, error, wake_at, done,
                                attempt, completed_at)
SELECT id, %(seq)s, %(kind)s, %(name)s, %(key)s, %(input)s::jsonb,
       COALESCE(%(result)s::jsonb,
                CASE WHEN %(kind)s = 'now' THEN to_jsonb(EXTRACT(EPOCH FROM now())::float8) END),
       %(error)s::jsonb,
       now() + make_interval(secs => %(sleep)s),
       %(done)s, %(attempt)s, CASE WHEN %(done)s THEN now() END
FROM held
RETURNING result, EXTRACT(EPOCH FROM wake_at - now())::float8;

-- name: log_spawn
-- Records a child entry and creates the child run in the same statement, fenced. A child whose
-- idempotency key names a run that already exists is that run, as with enqueue: the entry
-- points at it (one run per entry, always), and it stays another run's child, or none's.
-- Returns (child id or NULL, run held?): held without a child is a key inserted concurrently,
-- not visible to this statement yet.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
), child AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable, parent_id,
                               parent_seq, trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline, retention)
    SELECT %(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(max_retries)s,
           %(max_recoveries)s, now() + make_interval(secs => %(delay)s::float8),
           now() + make_interval(secs => %(delay)s::float8 + %(schedule_timeout)s::float8),
           %(idempotency_key)s, %(durable)s, held.id, %(seq)s, %(trace_context)s::jsonb,
           %(concurrency_key)s, %(fairness_key)s, %(flow)s, %(execution_deadline)s::float8,
           %(retention)s::float8
    FROM held
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue
), chosen AS (
    SELECT id FROM child
    UNION ALL
    SELECT r.id FROM {schema}.runs r, held
    WHERE r.task = %(task)s AND r.idempotency_key = %(idempotency_key)s
      AND NOT EXISTS (SELECT 1 FROM child)
), entry AS (
    INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, child_id, done, attempt)
    SELECT %(run_id)s, %(seq)s, 'child', %(task)s, %(key)s, %(args)s::jsonb, chosen.id, false,
           %(attempt)s
    FROM chosen
)
SELECT (SELECT id FROM chosen), EXISTS (SELECT 1 FROM held),
       (SELECT count(pg_notify(%(channel)s, 'q:' || queue)) FROM child);

-- name: log_complete
-- Marks a pending entry (child, sleep, event wait) done with its outcome, fenced.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
)
UPDATE {schema}.event_log l
SET done = true, result = %(result)s::jsonb, error = %(error)s::jsonb, completed_at = now()
FROM held
WHERE l.run_id = held.id AND l.seq = %(seq)s AND NOT l.done
RETURNING l.seq;

-- name: log_take_event
-- The first event with this key pushed since the run was created and not taken by an earlier
-- wait of this run (in push order: transaction time, then id), recorded in the waiting entry in
-- the same statement, fenced.
WITH held AS (
    SELECT id, created_at FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
), ev AS (
    -- In push order (events_key_created): the scan starts at the run's creation, so the key's
    -- older history is never read, and stops at the first event not taken yet.
    -- The creation time is a scalar subquery, not a join, so it bounds the index scan itself.
    SELECT e.id, e.payload FROM {schema}.events e
    WHERE e.key = %(key)s AND e.created_at >= (SELECT created_at FROM held)
      AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                      WHERE l.run_id = %(run_id)s AND l.event_id = e.id)
    ORDER BY e.created_at, e.id
    LIMIT 1
)
UPDATE {schema}.event_log l
SET done = true, event_id = ev.id, result = ev.payload, completed_at = now()
FROM held, ev
WHERE l.run_id = held.id AND l.seq = %(seq)s AND NOT l.done
RETURNING ev.id, ev.payload;

-- name: log_hold
-- Inside ctx.transaction: lock the run row for the rest of the caller's transaction, fenced, so
-- no recovery, cancellation or outcome can slip in while user code runs. FOR SHARE, like the
-- fence of log_append: the run's own appends (of operations run beside the transaction, or
-- inside its function) do not wait for it. Two transactions of one run would each hold it and
-- wait for the other to upgrade it in log_hold_renew, so a run's transactions take turns
-- (DurableRun.transaction).
SELECT id FROM {schema}.runs
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
FOR SHARE;

-- name: log_hold_renew
-- The last statement of a ctx.transaction: the heartbeat skipped the run while user code held
-- its row, so its lease may have run out; renewed before the commit releases the row, so no
-- sweep can take the run before the next heartbeat. clock_timestamp(): now() is when the
-- transaction began, possibly long ago.
UPDATE {schema}.runs SET lease_expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
RETURNING id;

-- name: children_status
SELECT id, status, result, error FROM {schema}.runs WHERE id = ANY(%(ids)s::bigint[]);

-- name: suspend
-- Releases the run's slot: WAITING until a child ends, the timer fires or the event arrives.
-- If what it waits for already happened (committed before this statement), it is QUEUED at once.
UPDATE {schema}.runs r
SET status = CASE WHEN ready.yes THEN 'QUEUED' ELSE 'WAITING' END,
    worker_id = NULL, lease_expires_at = NULL, run_at = now(),
    wake_at = now() + make_interval(secs => %(wake_in)s),
    wait_children = %(children)s::bigint[],
    wait_event = %(event)s
FROM (SELECT
        COALESCE(%(wake_in)s <= 0, false)
        -- Every child waited for ended (as `finish` wakes a parent): one ended among many
        -- would only re-execute the parent to suspend it again.
        OR (COALESCE(cardinality(%(children)s::bigint[]) > 0, false)
            AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                            WHERE c.id = ANY(%(children)s::bigint[])
                              AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')))
        -- The first event not taken yet, read from the run's creation on (see log_take_event);
        -- in a subquery with its own LIMIT so EXISTS keeps the ordered index scan.
        OR EXISTS (SELECT 1 FROM (
                       SELECT e.id FROM {schema}.events e
                       WHERE e.key = %(event)s
                         AND e.created_at >= (SELECT created_at FROM {schema}.runs
                                              WHERE id = %(run_id)s)
                         AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                                         WHERE l.run_id = %(run_id)s AND l.event_id = e.id)
                       ORDER BY e.created_at, e.id
                       LIMIT 1) first_event) AS yes
     ) ready
WHERE r.id = %(run_id)s AND r.attempt = %(attempt)s AND r.worker_id = %(worker_id)s
  AND r.status = 'RUNNING'
RETURNING r.status;

-- name: push_event
WITH ev AS (
    INSERT INTO {schema}.events (key, payload) VALUES (%(key)s, %(payload)s::jsonb) RETURNING id
), woken AS (
    UPDATE {schema}.runs
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    WHERE status = 'WAITING' AND wait_event = %(key)s
    RETURNING id, queue
)
SELECT (SELECT id FROM ev),
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM woken) q),
       pg_notify(%(channel)s, 'ev:' || %(key)s);

-- name: log_list
SELECT seq, kind, name, key, input, result, error, child_id, event_id, wake_at, done, attempt,
       created_at, completed_at
FROM {schema}.event_log WHERE run_id = %(run_id)s ORDER BY seq;
