-- Running a finished run again: retry, replay, fork.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

-- name: retry
-- A failed or cancelled run back to the queue, its log kept: it resumes after its last
-- checkpoint. So does every run below it that a cancel or failure took down while it was still
-- awaited: the children whose log entry is not done and that failed or were cancelled, and,
-- recursively, theirs (a cancel takes a whole tree down; a retry brings the whole tree back).
-- UNION, not UNION ALL: a run reached twice is kept once, so the walk ends on any log shape.
-- What the runs were waiting for, their worker and lease and their schedule deadline (they were
-- picked up once already) are cleared: a re-queued run starts clean.
WITH RECURSIVE tree AS (
    SELECT id FROM {schema}.runs WHERE id = %(id)s AND status IN ('FAILED', 'CANCELLED')
    UNION
    SELECT c.id
    FROM tree t
    -- One index probe of each run's log. The fence (OFFSET 0) keeps the planner from joining
    -- the whole log against a work table it guesses is tiny: a tree of 10,000 runs would then
    -- cost 10,000 scans of the log.
    CROSS JOIN LATERAL (
        SELECT l.child_id FROM {schema}.event_log l
        WHERE l.run_id = t.id AND l.kind = 'child' AND NOT l.done
        OFFSET 0
    ) l
    JOIN {schema}.runs c ON c.id = l.child_id AND c.status IN ('FAILED', 'CANCELLED')
), requeued AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), failures = 0, recoveries = 0, error = NULL,
        result = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
        wake_at = NULL, wait_children = NULL, wait_event = NULL, schedule_deadline = NULL,
        deadline_at = NULL  -- started again by hand: a fresh deadline from the next start
    FROM tree
    WHERE r.id = tree.id AND r.status IN ('FAILED', 'CANCELLED')
    RETURNING r.id, r.queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM requeued) q)
FROM requeued
WHERE id = %(id)s;

-- name: replay
-- Sets the log aside (archived under the run's current epoch) and runs the run from scratch.
WITH target AS (
    SELECT id, log_epoch FROM {schema}.runs
    WHERE id = %(id)s AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')
    FOR UPDATE
), archived AS (
    INSERT INTO {schema}.event_log_archive
    SELECT l.*, target.log_epoch, now() FROM {schema}.event_log l, target
    WHERE l.run_id = target.id
), cleared AS (
    DELETE FROM {schema}.event_log WHERE run_id IN (SELECT id FROM target)
), queued AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), log_epoch = r.log_epoch + 1, failures = 0,
        recoveries = 0, error = NULL, result = NULL, finished_at = NULL, worker_id = NULL,
        deadline_at = NULL
    FROM target WHERE r.id = target.id
    RETURNING r.id, r.queue
)
SELECT id, pg_notify(%(channel)s, 'q:' || queue) FROM queued;

-- name: fork
-- A new run of the same task and input whose log starts with the first N entries of the source.
-- The fork owns its pending work: a child the source spawned but had not seen end is not shared
-- (cancelling or retrying the source would reach into the fork), so its entry is left out and
-- the fork spawns a child of its own at that sequence number when it gets there. A child that
-- has already completed is final: its result is copied, recorded as done, and not run again.
-- Pending sleeps and event waits are copied as they are (same deadline as the source's).
WITH src AS (
    SELECT * FROM {schema}.runs WHERE id = %(id)s AND durable
), created AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries, durable,
                               concurrency_key, fairness_key, flow, execution_deadline,
                               retention)
    SELECT task, queue, priority, args, max_retries, max_recoveries, durable, concurrency_key,
           fairness_key, flow, execution_deadline, retention
    FROM src
    RETURNING id, queue
), copied AS (
    INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, result, error, child_id,
                                    event_id, wake_at, done, attempt, created_at, completed_at)
    SELECT created.id, l.seq, l.kind, l.name, l.key, l.input,
           CASE WHEN c.id IS NULL THEN l.result ELSE c.result END, l.error, l.child_id,
           l.event_id, l.wake_at, l.done OR c.id IS NOT NULL, 0, l.created_at,
           COALESCE(l.completed_at, c.finished_at)
    FROM {schema}.event_log l
    LEFT JOIN {schema}.runs c ON c.id = l.child_id AND l.kind = 'child' AND NOT l.done
    CROSS JOIN created
    WHERE l.run_id = %(id)s AND l.seq < %(at_event)s
      AND (l.kind <> 'child' OR l.done OR c.status = 'COMPLETED')
)
SELECT id, pg_notify(%(channel)s, 'q:' || queue) FROM created;
