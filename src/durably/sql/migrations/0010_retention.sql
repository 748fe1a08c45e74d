-- Retention (docs/retention.md): finished workflows are removed once they are older than the
-- retention they were enqueued with; events once no run can still take them; stopped workers
-- after the sweeping worker's retention.
ALTER TABLE {schema}.runs
    -- Seconds a finished run is kept after it ends, set at enqueue from the task's (or the
    -- App's) retention; NULL: kept until purged by hand. Runs from before this migration have
    -- NULL, so upgrading removes nothing.
    ADD COLUMN retention float8;

-- When a finished run may go. Immutable (so it can be indexed): adding seconds to a timestamptz
-- does not depend on the time zone, only adding days or months does.
CREATE FUNCTION {schema}.purge_due(finished timestamptz, retention float8)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT finished + retention * interval '1 second' $$;

-- Finished roots with a retention, by when they may go: the sweeper reads the due ones and
-- nothing else. A run enters at its end (one entry per workflow, children never enter), and
-- leaves when retried or replayed.
CREATE INDEX runs_purge ON {schema}.runs ({schema}.purge_due(finished_at, retention))
    WHERE parent_id IS NULL AND retention IS NOT NULL AND finished_at IS NOT NULL;

-- Durable runs that have not ended, oldest first: an event may go once no such run is older
-- than it (a run takes only events pushed after it was created). Task runs never enter. Its
-- predicate is "not ended" by finished_at, not by status, so that no claim (which asks for
-- status = 'QUEUED') can ever choose it over runs_claim_pool.
CREATE INDEX runs_live_durable ON {schema}.runs (created_at)
    WHERE durable AND finished_at IS NULL;

-- Runs by end, then id: `app.purge` walks old workflows in this order a batch at a time, each
-- batch starting where the last ended (an exact cursor). Serves every range read by end time
-- that runs_finished served (throughput, the per-minute chart), so it replaces it.
CREATE INDEX IF NOT EXISTS runs_finished_id ON {schema}.runs (finished_at, id)
    WHERE finished_at IS NOT NULL;
DROP INDEX IF EXISTS {schema}.runs_finished;

-- Stopped workers, by when they stopped.
CREATE INDEX workers_stopped ON {schema}.workers (stopped_at) WHERE stopped_at IS NOT NULL;
