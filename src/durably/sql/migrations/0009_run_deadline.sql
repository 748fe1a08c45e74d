-- Run deadlines (docs/durable-tasks.md): a bound on a run's whole life, across its retries,
-- recoveries and suspensions, where `timeout` bounds one attempt.
ALTER TABLE {schema}.runs
    -- Seconds from the run's first start; NULL: no deadline.
    ADD COLUMN execution_deadline float8,
    -- Set once, by the first claim (first start + execution_deadline); cleared by app.retry
    -- and replay, so a run started again by hand gets a fresh deadline.
    ADD COLUMN deadline_at        timestamptz;

-- Runs with a deadline that are queued or suspended, by deadline: the sweeper reads only the
-- runs due, in order. Runs without a deadline (most) never enter it; a RUNNING run leaves it,
-- its worker enforcing the deadline as the attempt's timeout.
CREATE INDEX runs_deadline ON {schema}.runs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('QUEUED', 'WAITING');
